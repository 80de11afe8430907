"""RouteMQ's side of the MQTT ingest scenario (bench/mqtt_ingest.py), run with its venv:
`python -m bench.peers.routemq_mqtt PORT N QOS`. Its Application (what `routemq run` starts) with one
route, `bench/ingest/{n}`, whose handler dispatches its NoopJob onto its Redis queue (db 12); prints
READY at its first message on bench/ready, then one JSON line as bench/mqtt_subscribers.py does, when the N-th dispatch
returned (or failed: each message's dispatch is counted, a failed one as lost). RouteMQ acknowledges
on receipt (paho's default) and has no setting to do otherwise; it hands every message to its event
loop at once, unbounded, so its Redis pool (REDIS_MAX_CONNECTIONS) bounds how many dispatches succeed.
"""
from __future__ import annotations

import os
import site
import sys
import time


def main() -> None:
    port, n, qos = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    packages = set(site.getsitepackages())      # RouteMQ's `bootstrap` package, not this project's
    sys.path[:] = [p for p in sys.path if p in packages] + [p for p in sys.path if p not in packages]
    sys.modules.pop("bootstrap", None)
    from bench.peers.routemq import settings
    from bench.mqtt_subscribers import READY, ready, report

    # REDIS_MAX_CONNECTIONS: at its default, 10, a flood fails most dispatches ("Too many connections")
    os.environ.update({**settings("redis"), "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(port),
                       "LOG_LEVEL": "CRITICAL", "METRICS_ENABLED": "false", "REDIS_MAX_CONNECTIONS": "1000"})
    from bootstrap.app import Application
    from routemq.queue.queue_manager import dispatch
    from routemq.router import Router

    from bench.peers.routemq_jobs.jobs import NoopJob

    state = {"done": 0, "stored": 0, "first": 0.0}

    async def ingest(n_: str, payload, client) -> None:
        if not state["first"]:
            state["first"] = time.time()
        try:
            await dispatch(NoopJob())
            state["stored"] += 1
        except Exception as exc:   # its pool's "Too many connections" under a flood: the message is lost
            if not state.get("why"):
                state["why"] = f"{type(exc).__name__}: {exc}"
        state["done"] += 1
        if state["done"] == n:
            report(state["first"], time.time(), state["stored"], lost=n - state["stored"], why=state.get("why"))
            os._exit(0)

    announced = []

    async def on_ready(payload, client) -> None:
        if not announced:
            announced.append(ready())

    router = Router()
    router.on("bench/ingest/{n_}", ingest, qos=qos)
    router.on(READY, on_ready)
    app = Application(router=router, show_banner=False, log_to_console=False)
    app.connect()
    app.run()


if __name__ == "__main__":
    main()
