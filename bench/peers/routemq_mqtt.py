"""RouteMQ's side of the MQTT ingest scenario (bench/mqtt_ingest.py), run with its venv:
`python -m bench.peers.routemq_mqtt PORT N QOS`. Its Application (what `routemq run` starts) with one
route, `bench/ingest/{n}`, whose handler dispatches its NoopJob onto its Redis queue (db 12); prints
READY once subscribed, then one JSON line as bench/mqtt_subscribers.py does, when the N-th dispatch
returned. RouteMQ acknowledges on receipt (paho's default) and has no setting to do otherwise.
"""
from __future__ import annotations

import os
import site
import sys
import threading
import time


def main() -> None:
    port, n, qos = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    packages = set(site.getsitepackages())      # RouteMQ's `bootstrap` package, not this project's
    sys.path[:] = [p for p in sys.path if p in packages] + [p for p in sys.path if p not in packages]
    sys.modules.pop("bootstrap", None)
    from bench.peers.routemq import settings
    from bench.mqtt_subscribers import report

    os.environ.update({**settings("redis"), "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(port),
                       "LOG_LEVEL": "WARNING", "METRICS_ENABLED": "false"})
    from bootstrap.app import Application
    from routemq.queue.queue_manager import dispatch
    from routemq.router import Router

    from bench.peers.routemq_jobs.jobs import NoopJob

    state = {"count": 0, "first": 0.0}

    async def ingest(n_: str, payload, client) -> None:
        if not state["first"]:
            state["first"] = time.time()
        await dispatch(NoopJob())
        state["count"] += 1
        if state["count"] == n:
            report(state["first"], time.time(), n)
            os._exit(0)

    router = Router()
    router.on("bench/ingest/{n_}", ingest, qos=qos)
    app = Application(router=router, show_banner=False, log_to_console=False)
    app.connect()

    def ready() -> None:
        while not (app.client.is_connected() and app.loop.is_running()):
            time.sleep(0.01)
        time.sleep(0.3)                     # its subscribe is sent from on_connect, unawaited
        print("READY", flush=True)

    threading.Thread(target=ready, daemon=True).start()
    app.run()


if __name__ == "__main__":
    main()
