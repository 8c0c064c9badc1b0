"""Resource usage of the calling thread alone (Linux ``getrusage(RUSAGE_THREAD)``), sampled around a job.

The agent's training thread reports, besides its CPU seconds (``train_cpu``), the page faults and context
switches it took during the job: ``bench/live_overhead.py`` prints them beside the contention control's, to say
whether the agents' training does more CPU work than the control's because it faults more pages (a fresh malloc
arena per training thread) or is switched out more often (cache refills), not only that it does.

    before = read_thread_usage()
    ...                                  # the job, in this thread
    used = read_thread_usage() - before  # ThreadUsage of the job alone

Where the platform has no per-thread usage (not Linux), every reading is zeros except ``cpu_s``
(``time.thread_time``), so a difference is still the job's CPU seconds.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)


@dataclass(frozen=True)
class ThreadUsage:
    """One thread's counters: ``cpu_s`` user + system CPU seconds, ``minor_faults`` page faults served without
    I/O (``ru_minflt``), ``major_faults`` with I/O, ``voluntary_switches`` (the thread blocked: ``ru_nvcsw``) and
    ``involuntary_switches`` (the scheduler preempted it: ``ru_nivcsw``). Subtracting two readings of the same
    thread gives what happened between them."""

    cpu_s: float = 0.0
    minor_faults: int = 0
    major_faults: int = 0
    voluntary_switches: int = 0
    involuntary_switches: int = 0

    def __sub__(self, other: ThreadUsage) -> ThreadUsage:
        return ThreadUsage(self.cpu_s - other.cpu_s, self.minor_faults - other.minor_faults,
                           self.major_faults - other.major_faults,
                           self.voluntary_switches - other.voluntary_switches,
                           self.involuntary_switches - other.involuntary_switches)


def read_thread_usage() -> ThreadUsage:
    """The calling thread's counters since it started (only this thread's, never the process's)."""
    if _RUSAGE_THREAD is None:
        return ThreadUsage(cpu_s=time.thread_time())
    usage = resource.getrusage(_RUSAGE_THREAD)
    return ThreadUsage(usage.ru_utime + usage.ru_stime, usage.ru_minflt, usage.ru_majflt, usage.ru_nvcsw,
                       usage.ru_nivcsw)
