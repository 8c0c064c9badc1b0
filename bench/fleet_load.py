"""Load bench (issue 12): a fleet of protocol-level fake devices on a real ``feddst cloud serve`` for minutes.

``--devices`` fake devices (default 1000; real paho MQTT 3.1.1 connections, the real codec; no training:
each update returns the global model it was sent, so the coordinator really decodes, checks and
aggregates it) spread over ``--procs`` processes connect to a private mosquitto (loopback), register,
heartbeat every ``--heartbeat-s`` (each device at its own phase) and answer every Task that selects
them ``--train-s`` after the Task (default 5 s), for ``--minutes`` (default 10) of one long digits run
(``--clients-per-round`` devices a round, quorum = all of them). The coordinator is a real ``feddst cloud serve``
process on the same broker.

Printed, every ``--sample-s`` seconds and summed up at the end:

* ``rss_mb``: the coordinator process's resident set (``VmRSS`` of ``/proc/<pid>/status``, MB = 2^20 bytes);
  ``rss_growth_after_warmup_mb``: the last sample minus the first sample after ``--warmup-s``
  (target: flat, i.e. about 0; peak <= 500 MB);
* heartbeat processing latency: a probe device (in this process) publishes a ``Status`` and polls
  ``GET /api/devices/<probe>`` every 5 ms until its ``bytes_up`` (bumped when the coordinator's main
  loop records the Status in its registry) grows: send -> registry update, an upper bound that includes
  one API round trip (``api_get_ms``, measured beside it, is that round trip alone);
* dropped messages: ``feddst_mqtt_dropped_packets_total`` (full receive queue) and
  ``feddst_updates_total{verdict="invalid"}`` from ``/metrics``, the run's ``replayed_seq``,
  ``auth_failed`` and ``invalid`` counters, the coordinator log's "dropped undecodable" and "dropped a
  replayed" lines, and on the devices' side updates sent vs answered (acked ok / rejected);
  ``devices_online_min``: the fewest devices ``/metrics`` counted online after warm-up (every heartbeat
  handled in time keeps it at ``--devices``).

    python bench/fleet_load.py                        # 1000 devices, 10 minutes
    python bench/fleet_load.py --minutes 3 --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "cloud"))

MODEL = "digits_cnn"
PROBE_ARCH = "probe"
"""The probe registers with this arch; the run selects only ``x86_64`` devices (the fakes), never the probe."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    """Resident set of process ``pid`` in MB (2^20 bytes), from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of the Prometheus exposition ``text`` (0 if absent)."""
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


class Probe:
    """One extra fake device in this process whose heartbeats are timed through the coordinator's API."""

    def __init__(self, port: int, coordinator: Any) -> None:
        import itertools

        import paho.mqtt.client as mqtt

        from protocol import Capabilities, Register, encode_message, topics

        self.device_id, self.coordinator = "probe-0000", coordinator
        self._seqs = itertools.count(time.time_ns() // 1000)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id,
                                  protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        self.client.publish(topics.register(self.device_id), encode_message(
            Register(self.device_id, Capabilities(PROBE_ARCH, 1, 1024, {}), 0, next(self._seqs)),
            seq=next(self._seqs)), qos=1)

    def bytes_up(self) -> int | None:
        response = self.coordinator.api("GET", f"/api/devices/{self.device_id}?history=0")
        return response.json()["bytes_up"] if response.status_code == 200 else None

    def heartbeat_ms(self, timeout_s: float = 10.0) -> tuple[float | None, float]:
        """(ms from publishing a Status to the registry showing it, or None on timeout; one API GET's ms)."""
        from protocol import Status, encode_message, topics

        t = time.perf_counter()
        before = self.bytes_up()
        api_ms = (time.perf_counter() - t) * 1000
        sent = time.perf_counter()
        self.client.publish(topics.status(self.device_id), encode_message(Status(self.device_id, "online"),
                                                                          seq=next(self._seqs)), qos=1, retain=True)
        while time.perf_counter() - sent < timeout_s:
            now = self.bytes_up()
            if before is not None and now is not None and now > before:
                return (time.perf_counter() - sent) * 1000, api_ms
            if before is None:
                before = now
            time.sleep(0.005)
        return None, api_ms

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_fakes(port: int, devices: int, procs: int, heartbeat_s: float, train_s: float) -> list[subprocess.Popen]:
    from device_processes import start_device_processes

    return start_device_processes(ROOT / "bench" / "fleet_load_devices.py", devices, procs,
                                  lambda k, first, count: [str(port), str(first), str(count), str(heartbeat_s),
                                                           str(train_s)])


def stop_fakes(children: list[subprocess.Popen]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for child in children:
        try:
            out, _ = child.communicate(input="\n", timeout=60)
            for key, value in json.loads(out.strip().splitlines()[-1]).items():
                totals[key] = totals.get(key, 0) + int(value)
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            child.kill()
    return totals


def wait_online(coordinator: Any, count: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if metric(coordinator.api("GET", "/metrics").text, "feddst_devices_online") >= count:
            return time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(f"fewer than {count} devices came online in {timeout_s:.0f} s")


def sample(coordinator: Any, probe: Probe, elapsed_s: float) -> dict[str, Any]:
    """One row: RSS, online devices, rounds so far, drops, and three timed heartbeats."""
    assert coordinator.process is not None
    text = coordinator.api("GET", "/metrics").text
    beats = [probe.heartbeat_ms() for _ in range(3)]
    return {"t_s": round(elapsed_s, 1), "rss_mb": round(rss_mb(coordinator.process.pid), 1),
            "devices_online": int(metric(text, "feddst_devices_online")),
            "rounds": int(metric(text, "feddst_rounds_completed_total")),
            "dropped_packets": int(metric(text, "feddst_mqtt_dropped_packets_total")),
            "invalid_updates": int(metric(text, "feddst_updates_total", '{verdict="invalid"}')),
            "heartbeat_ms": [None if ms is None else round(ms, 1) for ms, _ in beats],
            "api_get_ms": [round(api, 1) for _, api in beats]}


def summarize(rows: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    after = [r for r in rows if r["t_s"] >= warmup_s] or rows[-1:]
    beats = [ms for r in rows for ms in r["heartbeat_ms"] if ms is not None]
    timeouts = sum(ms is None for r in rows for ms in r["heartbeat_ms"])
    api = [ms for r in rows for ms in r["api_get_ms"]]
    q = statistics.quantiles(beats, n=20, method="inclusive") if len(beats) >= 2 else [float("nan")] * 19
    return {"rss_peak_mb": max(r["rss_mb"] for r in rows), "rss_after_warmup_first_mb": after[0]["rss_mb"],
            "rss_last_mb": rows[-1]["rss_mb"], "rss_growth_after_warmup_mb": round(rows[-1]["rss_mb"]
                                                                                  - after[0]["rss_mb"], 1),
            "heartbeat_ms_median": round(statistics.median(beats), 1) if beats else None,
            "heartbeat_ms_p95": round(q[18], 1) if beats else None,
            "heartbeat_ms_max": max(beats) if beats else None, "heartbeat_timeouts": timeouts,
            "api_get_ms_median": round(statistics.median(api), 1) if api else None,
            "devices_online_min": min(r["devices_online"] for r in after),
            "dropped_packets": rows[-1]["dropped_packets"], "invalid_updates": rows[-1]["invalid_updates"],
            "rounds_completed": rows[-1]["rounds"]}


def log_drops(log_text: str) -> dict[str, int]:
    return {"log_undecodable": log_text.count("dropped undecodable message"),
            "log_replayed": log_text.count("dropped a replayed")}


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from brokers import MosquittoBroker
    from coordinator_process import CoordinatorProcess

    broker = MosquittoBroker(workdir / "mosquitto", extra_config=["max_queued_messages 0",
                                                                  "max_inflight_messages 0"]).start()
    coordinator = CoordinatorProcess(workdir / "coordinator", broker.url, heartbeat_s=args.heartbeat_s)
    children: list[subprocess.Popen] = []
    probe = None
    try:
        coordinator.start()
        log(f"starting {args.devices} fake devices in {args.procs} processes ...")
        children = start_fakes(broker.port, args.devices, args.procs, args.heartbeat_s, args.train_s)
        probe = Probe(broker.port, coordinator)
        online_s = wait_online(coordinator, args.devices + 1, 600)
        log(f"all {args.devices} devices (+ the probe) online after {online_s:.1f} s; starting the run")
        config = dict(model=MODEL, algorithm="fedavg", rounds=100_000, clients_per_round=args.clients_per_round,
                      quorum=args.clients_per_round, local_epochs=1, seed=0, round_timeout_s=60.0,
                      select={"arch": "x86_64"})
        created = coordinator.api("POST", "/api/runs", json=config)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert coordinator.api("POST", f"/api/runs/{run_id}/start").status_code == 200
        rows = sample_for(coordinator, probe, args)
        stopped = coordinator.api("POST", f"/api/runs/{run_id}/stop")
        run = coordinator.run(run_id)
        time.sleep(3)  # the acks of the last updates
        devices = stop_fakes(children)
        children = []
        counters = run.get("counters", {})
        return {"devices": args.devices, "minutes": args.minutes, "heartbeat_s": args.heartbeat_s,
                "train_s": args.train_s,
                "clients_per_round": args.clients_per_round, "online_after_s": round(online_s, 1),
                "samples": rows, **summarize(rows, args.warmup_s), "run_status": run["status"],
                "stop_status_code": stopped.status_code,
                "run_counters": {k: counters.get(k, 0) for k in ("replayed_seq", "auth_failed", "invalid")},
                **log_drops(coordinator.log_text()), "device_side": devices}
    finally:
        if probe is not None:
            probe.close()
        stop_fakes(children)
        coordinator.stop()
        broker.stop()


def sample_for(coordinator: Any, probe: Probe, args: argparse.Namespace) -> list[dict[str, Any]]:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    while time.monotonic() - started < args.minutes * 60:
        row = sample(coordinator, probe, time.monotonic() - started)
        rows.append(row)
        log(f"  t={row['t_s']:6.1f} s  rss {row['rss_mb']:6.1f} MB  online {row['devices_online']}  rounds "
            f"{row['rounds']}  heartbeat {row['heartbeat_ms']} ms (api get {row['api_get_ms']} ms)  "
            f"dropped {row['dropped_packets']}")
        time.sleep(max(0.0, args.sample_s - (time.monotonic() - started - row["t_s"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=4, help="processes the fake devices are spread over")
    parser.add_argument("--heartbeat-s", type=float, default=5.0, help="device heartbeat period (and the "
                        "coordinator's --heartbeat-s: online = seen within 3x)")
    parser.add_argument("--clients-per-round", type=int, default=50)
    parser.add_argument("--train-s", type=float, default=5.0, help="seconds a selected device waits before "
                        "answering (its stand-in for local training)")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="feddst-load-") as tmp:
        result = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return
    device_side = result["device_side"]
    print(f"{result['devices']} devices for {result['minutes']} min (heartbeat {result['heartbeat_s']} s, "
          f"{result['clients_per_round']} per round): {result['rounds_completed']} rounds")
    print(f"coordinator RSS: peak {result['rss_peak_mb']:.1f} MB (target <= 500), after warm-up "
          f"{result['rss_after_warmup_first_mb']:.1f} -> {result['rss_last_mb']:.1f} MB "
          f"(growth {result['rss_growth_after_warmup_mb']:+.1f} MB; target flat)")
    print(f"heartbeat send -> registry: median {result['heartbeat_ms_median']} ms, p95 {result['heartbeat_ms_p95']} "
          f"ms, max {result['heartbeat_ms_max']} ms, {result['heartbeat_timeouts']} timeouts (one API GET: median "
          f"{result['api_get_ms_median']} ms)")
    print(f"dropped: {result['dropped_packets']} packets (full queue), {result['invalid_updates']} invalid updates, "
          f"run counters {result['run_counters']}, log {result['log_undecodable']} undecodable / "
          f"{result['log_replayed']} replayed; devices online min {result['devices_online_min']}")
    print(f"device side: {device_side}")


if __name__ == "__main__":
    main()
