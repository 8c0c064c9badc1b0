"""Start the fake-device child processes of a fleet bench (``bench/fleet_scale.py``, ``bench/fleet_load.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_device_processes(script: Path, devices: int, procs: int,
                           arguments: Callable[[int, int, int], list[str]]) -> list[subprocess.Popen]:
    """Split ``devices`` fake devices over at most ``procs`` processes running ``script`` (one torch thread each,
    this tree on ``PYTHONPATH``), process k with ``arguments(k, first, count)``; return once every one printed
    ``ready`` on its stdout (stdin and stdout stay piped). Raises ``RuntimeError`` naming what a process printed
    and its exit code if one did not start."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    per = -(-devices // procs)
    children: list[subprocess.Popen] = []
    for k in range(procs):
        first, count = k * per, min(per, devices - k * per)
        if count <= 0:
            break
        children.append(subprocess.Popen([sys.executable, str(script), *arguments(k, first, count)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True))
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a fake-device process ({script.name}) did not start (exit {child.poll()}; it "
                               f"printed {line!r})")
    return children
