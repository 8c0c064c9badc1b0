"""How the agent asks the OS to schedule it: training is CPU-bound background work.

``batch`` puts the process under Linux's ``SCHED_BATCH`` policy: the scheduler treats it as CPU-bound,
so it does not preempt the device's interactive tasks on wake-up and is itself preempted less often
(fewer cache-cold context switches when several agents share a CPU, as in ``bench/live_overhead.py``).
It needs no privileges (it only lowers the claim on the CPU). ``normal`` leaves the default policy.
"""

from __future__ import annotations

import os


def apply_cpu_policy(policy: str) -> str:
    """Apply ``policy`` ("batch" | "normal") to the calling thread, which threads it starts later inherit.

    Returns what is in force, for the log; never raises for an OS without ``SCHED_BATCH`` (it says so).
    """
    if policy not in ("batch", "normal"):
        raise ValueError(f"unknown CPU policy {policy!r}; choose batch or normal")
    if policy == "normal":
        return "normal (the OS default)"
    setter = getattr(os, "sched_setscheduler", None)
    batch = getattr(os, "SCHED_BATCH", None)
    if setter is None or batch is None:
        return "normal (SCHED_BATCH is not available on this OS)"
    try:
        setter(0, batch, os.sched_param(0))
    except OSError as exc:
        return f"normal (SCHED_BATCH refused: {exc})"
    return "batch (SCHED_BATCH)"
