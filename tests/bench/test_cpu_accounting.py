"""``bench/cpu_accounting.py``: the live bench's per-party CPU seconds, read from ``/proc``.

Oracle: a child process that burns CPU in its main thread, in a thread alive throughout, and in a thread that
starts and ends inside the window, and measures each burn itself with ``time.thread_time`` (the kernel's
per-thread clock, read from inside the thread rather than from ``/proc``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from cpu_accounting import CpuWindow, cpu_attribution, read_process_cpu, split_agent_cpu  # noqa: E402

TICK_SLACK_S = 0.05  # /proc counts in clock ticks (10 ms) per thread, plus the child's own I/O between readings

CHILD = textwrap.dedent("""
    import json, sys, threading, time

    def burn(seconds, out, key):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            pass
        out[key] = time.thread_time() - start

    out = {}
    go = threading.Event()
    def persistent():
        go.wait()
        burn(0.3, out, "persistent")
        go.clear()
        while True:
            time.sleep(3600)
    threading.Thread(target=persistent, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    short = threading.Thread(target=burn, args=(0.4, out, "short_lived"))
    short.start()
    burn(0.2, out, "main")
    short.join()
    while "persistent" not in out:
        time.sleep(0.01)
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
""")


@pytest.fixture
def burner():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    yield child
    child.kill()
    child.wait()


def release_and_read(child: subprocess.Popen) -> dict[str, float]:
    """Tell the child to burn; its own thread_time of each burn."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def test_agent_split_matches_each_threads_own_clock(burner: subprocess.Popen) -> None:
    before = read_process_cpu(burner.pid)
    burned = release_and_read(burner)
    after = read_process_cpu(burner.pid)  # the short-lived thread has exited: only the process total keeps it
    got = split_agent_cpu(before, after)
    for part in ("main", "persistent", "short_lived"):
        assert got[part] == pytest.approx(burned[part], abs=TICK_SLACK_S), part
    assert got["total"] == pytest.approx(got["main"] + got["persistent"] + got["short_lived"])


def test_window_sums_agents_and_names_other_processes(burner: subprocess.Popen) -> None:
    window = CpuWindow(agents=[burner.pid], others={"burner": burner.pid})
    window.start()
    burned = release_and_read(burner)
    window.stop()
    got = window.seconds()
    expected_total = burned["main"] + burned["persistent"] + burned["short_lived"]
    assert got["agents"]["total"] == pytest.approx(expected_total, abs=TICK_SLACK_S)
    assert got["agents"]["short_lived"] == pytest.approx(burned["short_lived"], abs=TICK_SLACK_S)
    assert got["per_agent"] == [got["agents"]["total"]]
    assert got["burner"] == pytest.approx(expected_total, abs=TICK_SLACK_S)
    # the machine was busy at least as long as the child burned (other processes may add to it, never take away)
    assert got["machine_busy"] >= expected_total - TICK_SLACK_S


def test_a_process_gone_reads_as_zero() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    reading = read_process_cpu(child.pid)
    assert reading.total == 0.0 and reading.threads == {}


def test_attribution_by_hand() -> None:
    # live round 2.0 s vs control 1.5 s; live parties spent 3.6 CPU s, control workers 3.0: the 0.6 extra CPU s over
    # 2 cores is 0.3 s of the 0.5 s excess, so 0.2 s is inflation; 20 devices trained 3.2 CPU s: 0.16 each
    live = {"live_total": 3.6, "agents_train": 3.2}
    got = cpu_attribution(2.0, live, 1.5, {"workers_total": 3.0}, cores=2, agents=20)
    assert got["extra_cpu_s"] == pytest.approx(0.6)
    assert got["product_cpu_s"] == pytest.approx(0.3)
    assert got["round_excess_s"] == pytest.approx(0.5)
    assert got["inflation_s"] == pytest.approx(0.2)
    assert got["train_cpu_per_device_s"] == pytest.approx(0.16)
    assert got["control_cpu_per_worker_s"] == pytest.approx(0.15)
    # of the 0.6 extra CPU s, 3.6 - 3.2 = 0.4 are outside training (0.2 s on 2 cores), 3.2 - 3.0 = 0.2 the training
    # threads beyond the control's (0.1 s); the two add up to product_cpu_s
    assert got["outside_training_wall_s"] == pytest.approx(0.2)
    assert got["train_cpu_excess_wall_s"] == pytest.approx(0.1)
