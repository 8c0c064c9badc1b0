"""``feddst cloud serve`` as deployed: a subprocess (uvicorn and the embedded broker) on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from brokers import free_port

ROOT = Path(__file__).resolve().parents[1]


def feddst_env() -> dict[str, str]:
    """The environment of a ``feddst`` subprocess: this tree first on PYTHONPATH, one torch thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def create_token(state: Path, role: str) -> subprocess.CompletedProcess[str]:
    """``feddst cloud token create --role ROLE --state-dir STATE`` (the token is its stdout)."""
    return subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "token", "create", "--role", role,
                           "--state-dir", str(state)], env=feddst_env(), capture_output=True, text=True, timeout=60)


@dataclass
class ServedCoordinator:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    broker_port: int  # the embedded broker's (plain MQTT on 127.0.0.1)
    output: str = field(default="")  # everything it printed (stdout, and stderr unless logged), once stopped


@contextmanager
def served_coordinator(state: Path, *extra_args: str, timeout_s: float = 60.0,
                       stderr_path: Path | None = None) -> Iterator[ServedCoordinator]:
    """Run ``feddst cloud serve --embedded-broker`` on ``state`` until ``/healthz`` answers; stop it on exit
    (``output`` then holds what it printed). With ``stderr_path`` its stderr (the log) goes to that file
    instead of ``output``."""
    api_port, broker_port = free_port(), free_port()
    with open(stderr_path, "w") if stderr_path else nullcontext() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--embedded-broker", "--broker-port",
             str(broker_port), "--api-port", str(api_port), "--state-dir", str(state), *extra_args],
            env=feddst_env(), stdout=subprocess.PIPE, stderr=log or subprocess.STDOUT, text=True)
    served = ServedCoordinator(process, f"http://127.0.0.1:{api_port}", broker_port)
    try:
        end = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < end, "coordinator did not come up"
            time.sleep(0.2)
        yield served
    finally:
        process.terminate()
        served.output, _ = process.communicate(timeout=30)
