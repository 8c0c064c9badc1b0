"""CPU seconds of the live-overhead bench's parties, read from ``/proc`` (psutil) at a window's start and end.

``bench/live_overhead.py`` prints wall-time stages; on a machine whose cores are shared by 20 agent processes,
a coordinator and mosquitto, wall time alone cannot say whether a stage is slow because of its own work or because
it waited for a core. This module reads what each party spent on the CPU over a window:

* an agent process: its whole CPU time (``/proc/<pid>/stat``, which keeps the time of threads that have
  exited), its main thread (the thread whose id is the process id: the agent's main loop), the other threads
  alive at both ends of the window (paho's network thread), and the rest: threads started or ended inside the
  window, i.e. the training threads (the agent starts one per round and it ends with the round);
* any other process (mosquitto, a contention-control worker): its whole CPU time;
* this process's named threads (the coordinator runs in the bench's process): ``fleet_scale._thread_cpu``;
* the machine: busy and idle CPU seconds over all cores (``/proc/stat``).

Resolution: the kernel counts in clock ticks (``getconf CLK_TCK``, usually 100 per second), so each thread's
figure is within 10 ms per reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProcessCpu:
    """One reading of a process: ``total`` CPU seconds so far (exited threads included) and each live thread's."""

    pid: int
    total: float
    threads: dict[int, float] = field(default_factory=dict)


def read_process_cpu(pid: int) -> ProcessCpu:
    """User + system CPU seconds of process ``pid`` and of each of its live threads (an empty reading once gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        threads = {t.id: t.user_time + t.system_time for t in process.threads()}
    except psutil.Error:
        return ProcessCpu(pid, 0.0)
    return ProcessCpu(pid, times.user + times.system, threads)


def split_agent_cpu(before: ProcessCpu, after: ProcessCpu) -> dict[str, float]:
    """An agent's CPU seconds between two readings: ``main`` (the thread whose id is the pid), ``persistent``
    (the other threads alive at both readings), ``short_lived`` (threads started or ended between them: the
    training threads) and ``total``. ``short_lived`` = total - main - persistent, so the parts add up."""
    total = after.total - before.total
    both = set(before.threads) & set(after.threads)
    main = after.threads.get(after.pid, 0.0) - before.threads.get(before.pid, 0.0) if after.pid in both else 0.0
    persistent = sum(after.threads[t] - before.threads[t] for t in both if t != after.pid)
    return {"total": total, "main": main, "persistent": persistent, "short_lived": total - main - persistent}


def read_machine_cpu() -> dict[str, float]:
    """Busy, idle and stolen CPU seconds of all cores since boot (``/proc/stat``; idle includes iowait; steal:
    time the hypervisor ran something else, in neither of the other two)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    steal = fields[7] if len(fields) > 7 else 0
    busy = sum(fields[:7]) - idle  # user nice system idle iowait irq softirq; guest is inside user
    return {"busy": busy / tick, "idle": idle / tick, "steal": steal / tick}


class CpuWindow:
    """Readings of the given processes (and this process's threads, and the machine) at :meth:`start` and
    :meth:`stop`; :meth:`seconds` gives what each spent between them."""

    def __init__(self, agents: list[int] | None = None, others: dict[str, int] | None = None,
                 own_threads: bool = False):
        self.agents = list(agents or [])
        self.others = dict(others or {})
        self.own_threads = own_threads
        self._before: dict = {}
        self._after: dict = {}

    def _read(self) -> dict:
        from fleet_scale import _thread_cpu

        return {"agents": [read_process_cpu(p) for p in self.agents],
                "others": {name: read_process_cpu(pid).total for name, pid in self.others.items()},
                "own": _thread_cpu() if self.own_threads else {}, "machine": read_machine_cpu()}

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> None:
        self._after = self._read()

    def seconds(self) -> dict:
        """``agents``: the sums over agents of :func:`split_agent_cpu`'s parts, and ``per_agent`` (each total);
        each other process by name; ``coordinator_<thread>`` for this process's threads; ``machine_busy``,
        ``machine_idle`` and ``machine_steal``."""
        before, after = self._before, self._after
        parts = [split_agent_cpu(b, a) for b, a in zip(before["agents"], after["agents"], strict=True)]
        out: dict = {"agents": {k: sum(p[k] for p in parts) for k in ("total", "main", "persistent", "short_lived")}
                     if parts else {}, "per_agent": [p["total"] for p in parts]}
        out.update({name: after["others"][name] - before["others"][name] for name in self.others})
        out.update({f"coordinator_{k}": v - before["own"].get(k, 0.0) for k, v in after["own"].items()})
        out.update({f"machine_{k}": after["machine"][k] - before["machine"][k] for k in ("busy", "idle", "steal")})
        return out


# --- the live-overhead bench's figures -------------------------------------------------------------


def live_cpu_per_round(seconds: dict, rounds: int, window_s: float) -> dict:
    """CPU seconds per round of the live run's parties (:meth:`cpu_accounting.CpuWindow.seconds` over the
    run): the agents' training threads, main loops and paho threads, the coordinator (its process, and its
    main loop / decoder / paho threads), mosquitto, their sum ``live_total``, and the machine's busy / idle /
    steal; ``machine_outside`` = busy - live_total is CPU spent outside the bench's parties (another job on the
    machine disturbs the figure)."""
    agents = seconds["agents"]
    out = {"agents_train": agents["short_lived"], "agents_main_loop": agents["main"],
           "agents_paho": agents["persistent"], "agents_total": agents["total"],
           "coordinator": seconds.get("coordinator_process", 0.0),
           **{f"coordinator_{k}": seconds.get(f"coordinator_{k}", 0.0) for k in ("main_loop", "decoder",
                                                                                 "paho_network")},
           "mosquitto": seconds["mosquitto"], "machine_busy": seconds["machine_busy"],
           "machine_idle": seconds["machine_idle"], "machine_steal": seconds["machine_steal"]}
    out["live_total"] = out["agents_total"] + out["coordinator"] + out["mosquitto"]
    out["machine_outside"] = out["machine_busy"] - out["live_total"]
    per_round = {k: v / rounds for k, v in out.items()}
    per_round["window_s"] = window_s / rounds
    return per_round


def cpu_attribution(live_round_s: float, live_cpu: dict, control_round_s: float, control_cpu: dict,
                    cores: int, agents: int) -> dict:
    """Splits live round - control round into the product's own cost and the contention inflation.

    With ``cores`` cores fully shared, the CPU seconds the live parties spend beyond the control's workers,
    over ``cores``, is wall time the product's own work takes (``product_cpu_s``); what is left of the live
    round's excess over the control is contention inflation (``inflation_s``: waiting, cache, context switches).
    ``train_cpu_per_device_s`` beside the control's ``control_cpu_per_worker_s`` says whether the agents' training
    does more work than the control's or only waits longer for a core. ``product_cpu_s`` is the sum of
    ``outside_training_wall_s`` (every CPU second but the agents' training threads', over the cores: decode,
    encode, MQTT, coordinator, mosquitto) and ``train_cpu_excess_wall_s`` (the agents' training threads' CPU
    beyond the control workers', over the cores)."""
    extra_cpu = live_cpu["live_total"] - control_cpu["workers_total"]
    product = extra_cpu / cores
    excess = live_round_s - control_round_s
    outside_training = live_cpu["live_total"] - live_cpu["agents_train"]
    return {"live_cpu_s": live_cpu["live_total"], "control_cpu_s": control_cpu["workers_total"],
            "extra_cpu_s": extra_cpu, "product_cpu_s": product, "round_excess_s": excess,
            "inflation_s": excess - product, "train_cpu_per_device_s": live_cpu["agents_train"] / agents,
            "control_cpu_per_worker_s": control_cpu["workers_total"] / agents,
            "outside_training_cpu_s": outside_training, "outside_training_wall_s": outside_training / cores,
            "train_cpu_excess_wall_s": (live_cpu["agents_train"] - control_cpu["workers_total"]) / cores}


def print_cpu(stages: dict, agents: int) -> None:
    """CPU seconds per round of each party, live and in the control, and what they make of live - control."""
    live, control = stages["cpu"], stages.get("control", {}).get("cpu")
    cores = os.cpu_count() or 1
    print(f"live CPU s per round (window {live['window_s']:.2f} s x {cores} cores = {live['window_s'] * cores:.2f}): "
          f"agents {live['agents_total']:.2f} (training threads {live['agents_train']:.2f}, main loops "
          f"{live['agents_main_loop']:.3f}, paho {live['agents_paho']:.3f}); coordinator {live['coordinator']:.3f} "
          f"(main loop {live['coordinator_main_loop']:.3f}, decoder {live['coordinator_decoder']:.3f}, paho "
          f"{live['coordinator_paho_network']:.3f}); mosquitto {live['mosquitto']:.3f}; sum "
          f"{live['live_total']:.2f}; machine busy {live['machine_busy']:.2f} (outside the bench "
          f"{live['machine_outside']:.2f}), idle {live['machine_idle']:.2f}, steal {live['machine_steal']:.2f}")
    if not control:
        return
    print(f"control CPU s per round (window {control['window_s']:.2f} s): workers {control['workers_total']:.2f}; "
          f"machine busy {control['machine_busy']:.2f} (outside the workers {control['machine_outside']:.2f}), idle "
          f"{control['machine_idle']:.2f}, steal "
          f"{control['machine_steal']:.2f}")
    a = stages.get("cpu_attribution")
    if a:
        print(f"  training CPU per device: live {a['train_cpu_per_device_s']:.3f} s vs control "
              f"{a['control_cpu_per_worker_s']:.3f} s per worker")
        print(f"  live - control round = {a['round_excess_s']:.3f} s: the product's own CPU ({a['live_cpu_s']:.2f} - "
              f"{a['control_cpu_s']:.2f}) / {cores} cores = {a['product_cpu_s']:.3f} s (outside training "
              f"{a['outside_training_wall_s']:.3f} s + training threads beyond the control's "
              f"{a['train_cpu_excess_wall_s']:.3f} s), contention inflation {a['inflation_s']:.3f} s")
