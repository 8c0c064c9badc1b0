"""The live-overhead bench's printed breakdown (``bench/live_overhead.py`` without ``--json``): the stage table,
the contention control beside the live rounds, and the training thread's usage (CPU, page faults, context
switches) per device per round, live against control."""

from __future__ import annotations

import os

from live_overhead import STAGES, usage_key


def print_control(result: dict) -> None:
    """The contention control's lines (when it ran): its rounds beside the live and simulated ones."""
    control = result["stages"].get("control")
    if not control:
        return
    spans = ", ".join(f"{s:.2f}" for s in control["round_spans_s"])
    print(f"contention control: {control['agents']} processes training the same clients at once with no coordinator, "
          f"broker or MQTT: {control['round_s']:.2f} s/round ({spans}; train {control['train_s']:.3f} s per "
          f"process) -> the machine's sharing alone x{control['round_s'] / result['simulated_round_s']:.3f} the "
          f"simulated round")
    live = result["stages"]
    print(f"  per round: live {', '.join(f'{s:.2f}' for s in live['round_spans_s'])}; mean train per device: live "
          f"{', '.join(f'{s:.3f}' for s in live['train_by_round_s'])}, control "
          f"{', '.join(f'{s:.3f}' for s in control['train_by_round_s'])}")
    print(f"  mean training CPU per device per round: live "
          f"{', '.join(f'{s:.3f}' for s in live['train_cpu_by_round_s'])}; control "
          f"{', '.join(f'{s:.3f}' for s in control['train_cpu_by_round_s'])}")
    print_thread_usage(live, control)
    print(f"  live / control = {result['live_round_s']:.2f} / {control['round_s']:.2f} -> "
          f"{result['overhead_vs_control_ratio']:.3f} (what the product adds beyond the contention; target <= 1.05)")


def print_thread_usage(live: dict, control: dict) -> None:
    """The training thread's minor page faults and voluntary / involuntary context switches per device per
    round, live against control, and the involuntary ones per CPU second (preemptions at the same rate mean the
    same scheduling pressure; absent fields, from an older agent or worker, print as 0)."""
    def by_round(stages: dict, name: str) -> str:
        return ", ".join(f"{v:.0f}" for v in stages.get(usage_key(name), []))

    for name, what in (("train_faults", "minor page faults"), ("train_vcsw", "voluntary switches"),
                       ("train_ivcsw", "involuntary switches")):
        print(f"  training thread {what} per device per round: live {by_round(live, name)}; control "
              f"{by_round(control, name)}")
    rates = []
    for stages in (live, control):
        cpu, switches = sum(stages.get("train_cpu_by_round_s", [])), sum(stages.get("train_ivcsw_by_round", []))
        rates.append(f"{switches / cpu:.0f}" if cpu > 0 else "n/a")
    print(f"  involuntary switches per training CPU second: live {rates[0]}, control {rates[1]}")


def print_stages(stages: dict, agents: int) -> None:
    """The stage table: mean seconds per device per round, each stage's share of the mean round, and (when
    measured) the same stage of one agent alone on the machine: the difference is the other agents' contention."""
    round_s, alone = stages["round_s"], stages.get("alone")
    print(f"live stages (mean s per device per round over {stages['samples']} updates; round {round_s:.2f} s)"
          + ("; 'alone': one preloaded agent, one client, one round, nothing else running:" if alone else ":"))
    for name in STAGES:
        value = stages[f"{name}_s"]
        share = f"{100 * value / round_s:5.1f} %" if value is not None and round_s else "   n/a"
        solo = f"   alone {alone[f'{name}_s']:8.3f} s" if alone and alone.get(f"{name}_s") is not None else ""
        print(f"  {name:<12} {value if value is not None else float('nan'):8.3f} s  {share}{solo}")
    solo = f"   alone {alone['close_s']:8.3f} s" if alone else ""
    print(f"  {'close':<12} {stages['close_s']:8.3f} s  (last update's arrival to the round's close){solo}")
    print(f"  {'critical path':<12} {stages['critical_path_s']:8.3f} s  (broadcast + slowest device + close); "
          f"other {stages['other_s']:.3f} s" + (f"; alone {alone['critical_path_s']:.3f} s" if alone else ""))
    sim = stages["simulated_train_per_client_s"]
    print(f"  train per client: live {stages['train_s']:.3f} s vs simulated {sim:.3f} s "
          f"(x{stages['train_s'] / sim:.2f}: {agents} one-thread agents on {os.cpu_count()} cores)")
    if alone:
        protocol = stages["critical_path_s"] - stages["train_s"]
        solo_protocol = alone["critical_path_s"] - alone["train_s"]
        print(f"  critical path outside training: {protocol:.3f} s live vs {solo_protocol:.3f} s alone "
              f"(the rest, {protocol - solo_protocol:.3f} s, is {agents} agents sharing {os.cpu_count()} cores)")
    contention = stages.get("contention")
    if alone and contention:
        print(f"  train if {agents} agents took turns on {os.cpu_count()} cores at no cost: {agents} x "
              f"{alone['train_s']:.3f} / {os.cpu_count()} = {contention['time_sliced_train_s']:.3f} s; measured "
              f"{stages['train_s']:.3f} s, so {contention['train_contention_s']:.3f} s is the sharing itself")
        print(f"  live round without the sharing (training {contention['train_contention_s']:.3f} s + outside "
              f"{contention['outside_contention_s']:.3f} s): {contention['round_without_contention_s']:.2f} s "
              f"-> ratio {contention['ratio_without_contention']:.3f} (an estimate of the product's own overhead)")


def print_idle_floor(stages: dict, agents: int, round_s: float) -> None:
    """The parties' CPU with every agent online and no round (``stages["idle_floor"]``, when measured), and what
    it makes of the live round's CPU outside the training threads: the floor over the round's length, and the
    rest, the round's own work, per party and per agent."""
    from idle_floor import floor_share
    from live_overhead import HEARTBEAT_S

    floor, live = stages.get("idle_floor"), stages["cpu"]
    if not floor:
        return
    cores = os.cpu_count() or 1
    print(f"idle floor (all {agents} agents online, no round, a Status every {HEARTBEAT_S:g} s each; "
          f"{floor['window_s']:.1f} s window), CPU ms per second: agents' main loops "
          f"{1000 * floor['agents_main_loop']:.2f} ({1000 * floor['agents_main_loop'] / agents:.3f} per agent), "
          f"their other threads (paho) {1000 * floor['agents_other']:.2f}; coordinator "
          f"{1000 * floor['coordinator']:.2f} (main loop {1000 * floor['coordinator_main_loop']:.2f}, decoder "
          f"{1000 * floor['coordinator_decoder']:.2f}, paho {1000 * floor['coordinator_paho_network']:.2f}); "
          f"mosquitto {1000 * floor['mosquitto']:.2f}; total {1000 * floor['total']:.2f}")
    share = floor_share(floor, live, round_s)
    print(f"  over a live round of {round_s:.2f} s the floor is {share['floor_per_round_cpu_s']:.3f} CPU s of the "
          f"{share['outside_training_cpu_s']:.3f} outside the training threads; the round's own work "
          f"{share['round_messages_cpu_s']:.3f} CPU s ({share['round_messages_cpu_s'] / cores:.3f} s over {cores} "
          f"cores)")
    parts = (("agents' main loops", live["agents_main_loop"], floor["agents_main_loop"]),
             ("agents' paho", live["agents_paho"], floor["agents_other"]),
             ("coordinator", live["coordinator"], floor["coordinator"]),
             ("mosquitto", live["mosquitto"], floor["mosquitto"]))
    print("  the round's own work per agent per round (live minus floor), CPU ms: "
          + ", ".join(f"{name} {1000 * (on_round - per_s * round_s) / agents:.2f}"
                      for name, on_round, per_s in parts))
