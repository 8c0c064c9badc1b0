"""Fixtures for end-to-end tests: real agent processes (``feddst agent run``) and brokers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cloud"))

from coordinator_harness import TEST_COORDINATOR_PUBLIC_KEY  # noqa: E402

ROOT = HERE.parent.parent


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """``start(broker_url, device_id, partition="I/N", *extra_flags)`` -> the agent process.

    Agents are given the public key of :func:`coordinator_harness.make_coordinator`'s coordinators unless
    ``extra_flags`` name a key or insecure mode."""
    procs: list[subprocess.Popen] = []

    def start(url: str, device_id: str, partition: str, *extra: str) -> subprocess.Popen:
        log = open(tmp_path / f"{device_id}.log", "wb")  # noqa: SIM115 - owned by the child
        cmd = [sys.executable, "-m", "feddst_cli.main", "agent", "run", "--broker", url, "--device-id", device_id,
               "--dataset", "digits", "--partition", partition, "--threads", "1", "--heartbeat-s", "1", *extra]
        if not any(flag.startswith(("--coordinator-public-key", "--insecure")) for flag in extra):
            cmd += ["--coordinator-public-key", TEST_COORDINATOR_PUBLIC_KEY]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
