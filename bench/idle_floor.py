"""The live-overhead bench's idle floor: CPU per second of each party while the agents are online and no round runs.

``bench/live_overhead.py`` attributes the live round's CPU to parties (``bench/cpu_accounting.py``); the part
outside the agents' training threads is the product's own work, but not all of it is the round's: an online
agent's main loop wakes at least once a second and publishes a Status every ``--heartbeat-s`` (the bench's agents:
2 s), paho's network thread wakes for keep-alives, and each Status costs mosquitto and the coordinator (paho
thread, decoder, main loop) too. This module measures that floor directly, over a window before the run starts,
so that the bench can say how much of the outside-training CPU per round is the floor (x the round's length) and
how much the round's own messages (model, Task, Update, Ack, busy / online statuses).

Readings come from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on the CPU; the tick-based ``stat`` counts
in 10 ms steps, too coarse for an agent's ~1 ms per second), with ``stat`` (psutil) where schedstat is absent.
"""

from __future__ import annotations

import os
import threading
import time

COORDINATOR_THREADS = {"coordinator": "main_loop", "mqtt-decoder": "decoder"}


def task_seconds(pid: int) -> dict[int, float]:
    """On-CPU seconds of each live thread of process ``pid`` (empty once the process is gone)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    out: dict[int, float] = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            out.update(_stat_seconds(pid, tid))
    return out


def _stat_seconds(pid: int, tid: int) -> dict[int, float]:
    import psutil

    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads() if t.id == tid}
    except psutil.Error:
        return {}


def _own_thread_kind(tid: int, names: dict[int, str]) -> str:
    name = names.get(tid, "other")
    if name.startswith("paho-mqtt-client"):
        return "paho_network"
    return COORDINATOR_THREADS.get(name, "bench_main" if name == "MainThread" else "other")


def _reading(agents: list[int], others: dict[str, int]) -> dict:
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    own: dict[str, float] = {}
    for tid, seconds in task_seconds(os.getpid()).items():
        kind = _own_thread_kind(tid, names)
        own[kind] = own.get(kind, 0.0) + seconds
    return {"agents": [task_seconds(pid) for pid in agents],
            "others": {name: sum(task_seconds(pid).values()) for name, pid in others.items()}, "own": own}


def idle_floor(agents: list[int], others: dict[str, int], window_s: float) -> dict:
    """CPU seconds per second, over ``window_s`` of waiting, of: the agents' main threads (``agents_main_loop``:
    the thread whose id is the pid) and their other threads (``agents_other``: paho's network thread, and any
    thread alive at both readings), each other process by name (``others``: mosquitto), and this process's
    coordinator threads (``coordinator_main_loop`` / ``_decoder`` / ``_paho_network``, and ``coordinator`` their
    sum with the rest of its threads but the caller's ``MainThread``); ``total`` is all of them, ``window_s``
    the measured window. A thread that starts or ends inside the window is not counted (none should: idle)."""
    before = _reading(agents, others)
    started = time.perf_counter()
    time.sleep(window_s)
    after = _reading(agents, others)
    window = time.perf_counter() - started
    main = other = 0.0
    for pid, b, a in zip(agents, before["agents"], after["agents"], strict=True):
        for tid in set(a) & set(b):
            if tid == pid:
                main += a[tid] - b[tid]
            else:
                other += a[tid] - b[tid]
    own = {k: v - before["own"].get(k, 0.0) for k, v in after["own"].items() if k != "bench_main"}
    out = {"agents_main_loop": main, "agents_other": other,
           **{name: after["others"][name] - before["others"][name] for name in others},
           **{f"coordinator_{k}": own.get(k, 0.0) for k in ("main_loop", "decoder", "paho_network")},
           "coordinator": sum(own.values())}
    out["total"] = main + other + out["coordinator"] + sum(out[name] for name in others)
    per_second = {k: v / window for k, v in out.items()}
    per_second["window_s"] = window
    return per_second


def floor_share(floor: dict, live_cpu: dict, round_s: float) -> dict:
    """The idle floor over one live round (``floor_per_round_cpu_s`` = floor total x ``round_s``) against the live
    round's CPU outside the agents' training threads (``outside_training_cpu_s``, :func:`cpu_accounting.
    live_cpu_per_round`'s ``live_total - agents_train``); ``round_messages_cpu_s`` is the rest: the round's own
    messages and work (decode, encode, statuses, aggregation)."""
    outside = live_cpu["live_total"] - live_cpu["agents_train"]
    on_floor = floor["total"] * round_s
    return {"floor_per_round_cpu_s": on_floor, "outside_training_cpu_s": outside,
            "round_messages_cpu_s": outside - on_floor}
