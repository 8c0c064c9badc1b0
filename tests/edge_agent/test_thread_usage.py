"""``edge_agent.thread_usage``: the calling thread's own page faults, context switches and CPU seconds.

Oracles: the number of fresh pages a thread writes (each first write to an anonymous page is a minor fault), the
number of times it sleeps (each sleep blocks it: a voluntary switch), and ``time.thread_time``; two threads run at
once, so a reading that counted the process instead of the thread would show the other thread's faults."""

from __future__ import annotations

import mmap
import sys
import threading
import time

import pytest

from edge_agent.thread_usage import ThreadUsage, read_thread_usage

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RUSAGE_THREAD is Linux's")

PAGES = 4000


def _measured(job) -> ThreadUsage:  # type: ignore[no-untyped-def]
    before = read_thread_usage()
    job()
    return read_thread_usage() - before


def _fault_pages() -> None:
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, PAGES * page)  # anonymous, not yet backed: each page's first write faults it in
    for offset in range(0, PAGES * page, page):
        area[offset] = 1
    area.close()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _run_together(jobs: dict[str, object]) -> dict[str, ThreadUsage]:
    got: dict[str, ThreadUsage] = {}
    start = threading.Barrier(len(jobs))

    def run(name: str, job) -> None:  # type: ignore[no-untyped-def]
        start.wait()
        got[name] = _measured(job)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_a_thread_that_writes_fresh_pages_shows_its_faults_and_the_other_thread_does_not() -> None:
    got = _run_together({"faulting": lambda: [_fault_pages() for _ in range(3)], "spinning": lambda: _spin(0.3)})
    assert got["faulting"].minor_faults >= 3 * PAGES * 0.9  # (transparent huge pages may merge a few)
    assert got["spinning"].minor_faults < PAGES / 4  # the other thread's faults are not counted here


def test_sleeps_are_voluntary_switches_of_the_sleeping_thread_only() -> None:
    got = _run_together({"sleeping": lambda: [time.sleep(0.002) for _ in range(50)],
                         "waiting": lambda: time.sleep(0.3)})
    assert got["sleeping"].voluntary_switches >= 50
    assert got["waiting"].voluntary_switches < 10  # one sleep (and the GIL now and then), not the other's 50


def test_cpu_seconds_are_the_threads_own() -> None:
    def spin_cpu() -> None:  # until this thread has run 0.1 CPU s, however loaded the machine
        end = time.thread_time() + 0.1
        while time.thread_time() < end:
            pass

    got = _run_together({"spinning": spin_cpu, "sleeping": lambda: time.sleep(0.3)})
    assert got["spinning"].cpu_s == pytest.approx(0.1, abs=0.02)
    assert got["sleeping"].cpu_s < 0.02  # the spinning thread's CPU is not counted here


def test_subtracting_readings_is_field_by_field() -> None:
    later, earlier = ThreadUsage(2.5, 10, 1, 7, 3), ThreadUsage(1.0, 4, 1, 2, 1)
    assert later - earlier == ThreadUsage(1.5, 6, 0, 5, 2)
