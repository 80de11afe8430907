"""`make bench-mqtt`: MQTT ingest, messages per second from Mosquitto through a route to a stored job.

One private mosquitto (a free port; `max_queued_messages 0` so it holds whatever a subscriber has not
taken yet, `queue_qos0_messages true` so a persistent session's backlog holds QoS 0 messages too)
serves every target in the same run. Per target and round: the subscriber process starts
and subscribes (bench/mqtt_subscribers.py, bench/peers/routemq_mqtt.py), then this process publishes
BENCH_MQTT_N messages of ~100 bytes (default 20,000) to bench/ingest/<n> as fast as paho takes them;
rate = messages / (the N-th job stored - the first message received), both taken by the subscriber.

Targets: ours (`MqttApp`, what `python main.py run` serves; a route dispatching a job to Redis db 11)
at QoS 0 and QoS 1 (QoS 1 acknowledged after the handler, SPEC 18; over MQTT 3.1.1, where the broker's
max_inflight_messages, 20 on mosquitto, caps the messages unacknowledged, and over MQTT 5, where the
app's Receive Maximum does; and from a backlog: see run_once), and at QoS 0 with a handler that
only counts (the MQTT side's own cost, no dispatch); RouteMQ 0.25 (its Application;
route dispatching its job to Redis db 12; acks on receipt) at QoS 0 and 1; a bare aiomqtt subscriber
that only counts messages: the limit. Rounds interleave the targets (BENCH_MQTT_ROUNDS, default 3)
and the report gives each one's median; the VM's CPU steal swings single runs by 2x.
Output: stdout, bench/results/mqtt.md and bench/results/mqtt.json.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

N = int(os.environ.get("BENCH_MQTT_N") or 20_000)
ROUNDS = int(os.environ.get("BENCH_MQTT_ROUNDS") or 3)
PAYLOAD = json.dumps({"device": "sensor-0042", "temperature": 21.5, "humidity": 40.1, "seq": 0,
                      "fw": "1.4.2"}).encode().ljust(100)
ROUTEMQ_PYTHON = BENCH / ".venv" / "routemq" / "bin" / "python"

TARGETS: list[tuple[str, list[str], int]] = [
    ("bare aiomqtt (qos 0)", [sys.executable, "-m", "bench.mqtt_subscribers", "bare"], 0),
    ("ours, route only (qos 0)", [sys.executable, "-m", "bench.mqtt_subscribers", "route"], 0),
    ("ours (qos 0)", [sys.executable, "-m", "bench.mqtt_subscribers", "ours"], 0),
    ("ours (qos 1)", [sys.executable, "-m", "bench.mqtt_subscribers", "ours"], 1),
    ("ours (qos 1, MQTT 5)", [sys.executable, "-m", "bench.mqtt_subscribers", "ours5"], 1),
    ("ours (qos 0, backlog)", [sys.executable, "-m", "bench.mqtt_subscribers", "ours"], 0),
    ("ours (qos 1, backlog)", [sys.executable, "-m", "bench.mqtt_subscribers", "ours"], 1),
    ("routemq (qos 0)", [str(ROUTEMQ_PYTHON), "-m", "bench.peers.routemq_mqtt"], 0),
    ("routemq (qos 1)", [str(ROUTEMQ_PYTHON), "-m", "bench.peers.routemq_mqtt"], 1),
]


class Broker:
    def __init__(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 0\nqueue_qos0_messages true\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def publish(port: int, n: int, qos: int) -> float:
    """Publish n messages with paho (its network thread), return the publisher's own rate."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    infos = [client.publish(f"bench/ingest/{i}", PAYLOAD, qos=qos) for i in range(n)]
    for info in infos[-1:] if qos == 0 else infos:
        info.wait_for_publish(60)
    rate = n / (time.perf_counter() - started)
    client.disconnect()
    client.loop_stop()
    return rate


def run_once(name: str, argv: list[str], qos: int, port: int) -> dict[str, Any]:
    """One round of one target. A backlog target subscribes with a persistent session, is killed,
    finds N messages queued for it by the broker when it starts again, and is timed taking them: at
    QoS 1 one paho publisher is slower than the app (about 4,000-5,000 msg/s on the 2-core machine,
    waiting for each PUBACK), so the live QoS 1 rows measure the publisher, the backlog the app."""
    for db in (harness.OUR_DB, harness.PEER_DB):
        _flush(db)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    backlog = "backlog" in name
    if backlog:
        env.update(MQTT_CLEAN_SESSION="false", MQTT_CLIENT_ID=f"bench-backlog-{os.getpid()}-{time.time_ns()}")
    command = [*argv, str(port), str(N), str(qos)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if not _until_ready(proc, port):
            return {"name": name, "error": f"did not start: {_tail(proc)}"}
        if backlog:          # the session stays with the broker, which queues what comes meanwhile
            proc.kill()
            proc.wait()
        publisher = publish(port, N, qos)
        if backlog:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env)
        line = _wait_line(proc, "{", 180)
        if not line:
            return {"name": name, "error": f"did not take {N:,} messages within 180 s: {_tail(proc)}"}
        result = json.loads(line)
        rate = result["count"] / max(result["last"] - result["first"], 1e-9)
        return {"name": name, "rate": rate, "rss_mb": result["rss_mb"], "publisher_rate": publisher,
                "lost": result.get("lost", 0)}
    finally:
        proc.kill()
        proc.wait()


def _until_ready(proc: subprocess.Popen, port: int, timeout: float = 60) -> bool:
    """Knock on bench/ready until the subscriber says READY: then its subscriptions are in place."""
    import paho.mqtt.client as mqtt

    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(_wait_line(proc, "READY", timeout) or ""), daemon=True)
    reader.start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not found and time.monotonic() < deadline and proc.poll() is None:
        client.publish("bench/ready", b"1")
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    reader.join(1)
    return bool(found and found[0])


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str | None:
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:       # type: ignore[union-attr]
            if line.startswith(prefix):
                found.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else None


def _tail(proc: subprocess.Popen) -> str:
    proc.kill()
    _, err = proc.communicate(timeout=10)
    return " | ".join((err or "").strip().splitlines()[-3:])


def _flush(db: int) -> None:
    import redis

    redis.Redis.from_url(harness.redis_url(db)).flushdb()


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, _, qos in TARGETS:
        mine = [r for r in runs if r["name"] == name]
        rates = [r["rate"] for r in mine if r.get("rate")]
        errors = [r["error"] for r in mine if r.get("error")]
        rows.append({"name": name, "qos": qos, "rate": statistics.median(rates) if rates else None,
                     "rates": [round(r) for r in rates], "rss_mb": max((r["rss_mb"] for r in mine if r.get("rss_mb")),
                                                                   default=None),
                     "publisher_rate": statistics.median([r["publisher_rate"] for r in mine if r.get("rate")])
                     if rates else None, "lost": sum(r.get("lost", 0) for r in mine),
                     "error": errors[0] if errors and not rates else None})
    return rows


def checks(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    rate = {r["name"]: r["rate"] for r in rows}

    def ratio(label: str, a: str, b: str, need: float) -> tuple[str, bool | None, str]:
        if not rate.get(a) or not rate.get(b):
            return label, None, "not measured (a side is missing)"
        r = rate[a] / rate[b]
        return label, r >= need, f"{a} {rate[a]:,.0f} vs {b} {rate[b]:,.0f} msg/s: {r:.2f}x (needs {need:g}x)"

    return [ratio("ingest >= 5x RouteMQ (QoS 0)", "ours (qos 0)", "routemq (qos 0)", 5),
            ratio("ingest >= 5x RouteMQ (QoS 1)", "ours (qos 1)", "routemq (qos 1)", 5),
            ratio("ingest >= half the bare subscriber's rate", "ours (qos 0)", "bare aiomqtt (qos 0)", 0.5),
            ratio("QoS 1, acked after the handler, >= 80% of QoS 0", "ours (qos 1)", "ours (qos 0)", 0.8),
            ratio("QoS 1 over MQTT 5 (Receive Maximum), acked after the handler, >= 80% of QoS 0",
                  "ours (qos 1, MQTT 5)", "ours (qos 0)", 0.8),
            ratio("QoS 1 from a backlog (the publisher out of the way), acked after the handler, >= 80% of QoS 0 "
                  "from a backlog", "ours (qos 1, backlog)", "ours (qos 0, backlog)", 0.8)]


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [f"## MQTT ingest: Mosquitto -> route -> job stored (N={N:,}, ~100-byte messages, {ROUNDS} rounds)", "",
             f"{info['date']}, {info['cores']} cores, load {info['load']}; mosquitto {info['mosquitto']}", "",
             "| target | msg/s (median) | rounds | peak RSS MB | lost | publisher msg/s |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["rate"] is None:
            lines.append(f"| {r['name']} | - | {r['error'] or 'not run'} | - | - | - |")
            continue
        lines.append(f"| {r['name']} | {r['rate']:,.0f} | {', '.join(f'{x:,}' for x in r['rates'])} | "
                     f"{r['rss_mb'] or '-'} | {r['lost']:,} | {r['publisher_rate']:,.0f} |")
    lines += ["", "Targets:"]
    mark = {True: "met", False: "NOT MET", None: "not measured"}
    lines += [f"- **{mark[met]}**: {label}: {detail}" for label, met, detail in checks(rows)]
    return "\n".join(lines) + "\n"


def main() -> None:
    only = [w.strip() for w in (os.environ.get("BENCH_ONLY") or "").split(",") if w.strip()]
    targets = [t for t in TARGETS if not only or any(w in t[0] for w in only)]
    missing = {name for name, argv, _ in targets if not Path(argv[0]).exists()}
    broker = Broker()
    runs: list[dict[str, Any]] = []
    try:
        for round_ in range(ROUNDS):
            for name, argv, qos in targets:
                if name in missing:
                    runs.append({"name": name, "error": "not installed: make bench/.venv/routemq/.installed"})
                    continue
                result = run_once(name, argv, qos, broker.port)
                print(f"  round {round_ + 1} {name}: " + (f"{result['rate']:,.0f} msg/s" if result.get("rate")
                                                           else result["error"]), file=sys.stderr, flush=True)
                runs.append(result)
    finally:
        broker.stop()
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cores": os.cpu_count(),
            "load": [round(x, 2) for x in os.getloadavg()], "mosquitto": version.replace("mosquitto version ", "")}
    rows = summarize(runs)
    text = render(rows, info)
    print(text)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / "mqtt.md").write_text(text)
    (results / "mqtt.json").write_text(json.dumps({"info": info, "n": N, "rows": rows, "runs": runs,
                                                   "checks": checks(rows)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
