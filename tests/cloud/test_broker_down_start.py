"""``feddst cloud serve`` started with no broker on its port (a real subprocess, real mosquitto started
later on that port): it serves degraded, connects when the broker comes up, runs a round, and logs
the broker's loss and return."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from brokers import MosquittoBroker, free_port
from coordinator_harness import TEST_COORDINATOR_PUBLIC_KEY, provision_signing_key, wait_until
from fake_devices import FakeDevice
from served_coordinator import create_token, feddst_env

from protocol.ed25519 import Ed25519Verifier

RUN = {"model": "digits_cnn", "rounds": 2, "clients_per_round": 2, "local_epochs": 0, "round_timeout_s": 20,
       "eval": {"dataset": "digits", "clients": 2, "samples_per_class": 10}}


def _health(base: str) -> dict | None:
    try:
        response = httpx.get(f"{base}/healthz", timeout=2)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def test_serve_starts_degraded_without_a_broker_and_connects_when_it_comes_up(tmp_path: Path) -> None:
    state, broker_port, api_port = tmp_path / "state", free_port(), free_port()
    provision_signing_key(state)
    token = create_token(state, "operator")
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    base = f"http://127.0.0.1:{api_port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--broker", f"mqtt://127.0.0.1:{broker_port}",
             "--api-port", str(api_port), "--state-dir", str(state), "--heartbeat-s", "1"],
            env=feddst_env(), stdout=log_file, stderr=subprocess.STDOUT, text=True)
    broker = MosquittoBroker(tmp_path / "mosquitto", port=broker_port)
    devices: list[FakeDevice] = []
    try:
        wait_until(lambda: _health(base) is not None or process.poll() is not None, 60, "the REST API")
        assert process.poll() is None, log_path.read_text()
        assert _health(base) == {"status": "degraded", "broker_connected": False, "active_run": None}
        run_id = httpx.post(f"{base}/api/runs", json=RUN, headers=headers).json()["id"]  # the store works
        refused = httpx.post(f"{base}/api/runs/{run_id}/start", headers=headers)
        assert refused.status_code == 503 and "not connected to the MQTT broker" in refused.text
        time.sleep(2.0)
        assert process.poll() is None, "serve exited while the broker was down"  # it keeps retrying
        assert _health(base)["status"] == "degraded"  # type: ignore[index]

        broker.start()
        wait_until(lambda: (_health(base) or {}).get("status") == "ok", 40, "/healthz ok after the broker came up")
        assert _health(base)["broker_connected"] is True  # type: ignore[index]
        verifier = Ed25519Verifier(bytes.fromhex(TEST_COORDINATOR_PUBLIC_KEY))
        devices = [FakeDevice(f"dev-{i:03d}", broker_port, index=i, coordinator_key=verifier).start()
                   for i in range(2)]
        wait_until(lambda: sum(d["status"] == "online" for d in httpx.get(
            f"{base}/api/devices", headers=headers).json()) == 2, 30, "2 devices online")
        assert httpx.post(f"{base}/api/runs/{run_id}/start", headers=headers).json()["status"] == "running"
        wait_until(lambda: httpx.get(f"{base}/api/runs/{run_id}", headers=headers).json()["status"] == "completed",
                   60, "the run to complete")
        detail = httpx.get(f"{base}/api/runs/{run_id}", headers=headers).json()
        assert [r["round"] for r in detail["rounds"]] == [1, 2]
        assert all(d.acks and all(a.ok for a in d.acks) for d in devices)  # signed tasks verified, updates acked

        broker.stop()  # loss ...
        wait_until(lambda: (_health(base) or {}).get("status") == "degraded", 30, "/healthz degraded")
        broker.start()  # ... and return
        wait_until(lambda: (_health(base) or {}).get("status") == "ok", 40, "/healthz ok again")
        assert process.poll() is None
    finally:
        for device in devices:
            device.crash()
        process.terminate()
        process.wait(timeout=30)
        broker.stop()
    log = log_path.read_text()
    assert "is not reachable" in log and "serving degraded" in log  # the start, without a traceback
    assert "Traceback" not in log, log
    lost = log.index("lost the MQTT broker")
    connects = [m.start() for m in re.finditer(r"(?<!not )connected to the MQTT broker", log)]
    assert len(connects) >= 2  # first connect, then the return
    assert connects[-1] > lost  # the return is logged after the loss
