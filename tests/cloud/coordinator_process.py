"""``feddst cloud serve`` as a separate process on a real broker, which a test may ``kill -9`` and start again.

Unlike ``served_coordinator`` (embedded broker, which would die with the process), the broker here is the
test's own mosquitto, so devices and their sessions outlive the coordinator.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from brokers import free_port
from coordinator_harness import provision_signing_key
from served_coordinator import create_token, feddst_env


@dataclass
class CoordinatorProcess:
    """One ``feddst cloud serve`` process: its log file, API URL and an operator token on its state dir."""

    state: Path
    broker_url: str
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    url: str = ""
    headers: dict[str, str] | None = None
    starts: int = 0
    heartbeat_s: float = 1.0  # --heartbeat-s: a device is online when seen within 3x

    def start(self, timeout_s: float = 60.0) -> CoordinatorProcess:
        provision_signing_key(self.state)
        if self.headers is None:
            created = create_token(self.state, "operator")
            assert created.returncode == 0, created.stderr
            self.headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.starts += 1
        log = open(self.state.parent / f"{self.state.name}-serve-{self.starts}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--broker", self.broker_url,
             "--api-port", str(port), "--state-dir", str(self.state), "--heartbeat-s", str(self.heartbeat_s),
             *self.extra_args],
            env=feddst_env(), stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout_s
        while True:
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=1)
                if health.status_code == 200 and health.json()["broker_connected"]:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, f"coordinator exited: {self.log_text()}"
            assert time.monotonic() < end, "coordinator did not come up"
            time.sleep(0.2)

    def log_text(self) -> str:
        return (self.state.parent / f"{self.state.name}-serve-{self.starts}.log").read_text()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=30, **kwargs)

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_run(self, run_id: str, predicate: Any, timeout_s: float, what: str) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while True:
            run = self.run(run_id)
            if predicate(run):
                return run
            assert time.monotonic() < end, f"timed out waiting for {what}: {run['status']} {run.get('error')}"
            time.sleep(0.1)
