"""``bench/idle_floor.py``: each party's CPU per second over a window, from the threads' schedstat clocks.

Oracles: a thread's own ``time.thread_time`` (the thread in this process), and for another process the kernel's
tick-counted ``/proc/<pid>/task/<tid>/stat`` (psutil), a different counter of the same CPU time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from idle_floor import floor_share, idle_floor, task_seconds  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# main thread burns CPU until stdin closes; a second thread only sleeps
CHILD = """
import sys, threading, time
threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
print("ready", flush=True)
stop = []
threading.Thread(target=lambda: (sys.stdin.read(), stop.append(1)), daemon=True).start()
while not stop:
    pass
"""


def test_a_threads_seconds_are_its_own_cpu_clock() -> None:
    got: dict[str, float] = {}

    def burn() -> None:
        end = time.thread_time() + 0.15
        while time.thread_time() < end:
            pass
        got["clock"] = time.thread_time()
        got["schedstat"] = task_seconds(os.getpid())[threading.get_native_id()]

    t = threading.Thread(target=burn)
    t.start()
    t.join()
    assert got["schedstat"] == pytest.approx(got["clock"], abs=0.005)


def test_idle_floor_counts_a_busy_main_thread_and_not_a_sleeping_one() -> None:
    import psutil

    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        main_before = psutil.Process(child.pid).threads()
        floor = idle_floor([child.pid], {}, 0.5)
        main_after = psutil.Process(child.pid).threads()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)

    def main_cpu(threads) -> float:  # type: ignore[no-untyped-def]
        return next(t.user_time + t.system_time for t in threads if t.id == child.pid)

    by_ticks = main_cpu(main_after) - main_cpu(main_before)  # a slightly wider window than idle_floor's
    measured = floor["agents_main_loop"] * floor["window_s"]
    # the tick-counted window encloses idle_floor's (so it may hold a little more), each reading within 10 ms
    assert by_ticks - 0.06 <= measured <= by_ticks + 0.02
    assert measured > 0  # it did burn (however loaded the machine)
    assert floor["agents_other"] * floor["window_s"] < 0.02  # the sleeping thread, the stdin reader
    assert floor["total"] >= floor["agents_main_loop"]


def test_floor_share_splits_the_outside_training_cpu() -> None:
    floor = {"total": 0.05}  # CPU s per second
    live = {"live_total": 3.0, "agents_train": 2.7}  # per round
    got = floor_share(floor, live, round_s=1.5)
    assert got["floor_per_round_cpu_s"] == pytest.approx(0.075)
    assert got["outside_training_cpu_s"] == pytest.approx(0.3)
    assert got["round_messages_cpu_s"] == pytest.approx(0.225)
