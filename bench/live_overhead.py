"""Live-system overhead and scale: the coordinator + agents over MQTT versus the in-process simulator.

Part 1 (overhead): per-round wall time of a live run with 20 agent processes (``feddst agent run``,
one torch thread each, holding partitions 0..19 of the paper's MNIST setting: 400 clients x 2
classes x 20 images, 10 local epochs, FedDST S=0.8), every agent training every round, over a
local mosquitto; versus ``Simulation(..., client_batching=False)`` on the same config with the same
``--kernels`` (default auto, the agents' own default): the same per-client training path. Printed as
``overhead_ratio`` = live / simulated (target <= 1.05, issue 15). The agents start cold, as installed
(torch is imported at their first round); ``--preload-training`` starts them with that flag and waits
until each has imported torch before the run starts, as the simulation's process has.

Stage breakdown of the live rounds (mean seconds per selected device per round; ``stages`` in
``--json``), from timestamps the system records: the coordinator's round records (``broadcast_s``,
``published_at``, ``update_received_at``, ``aggregation_s``, ``seconds``) and each agent's
``stage timing`` INFO line (``model_at``, ``decode``, ``train``, ``encode``, ``published_at``). All
processes run on this machine, so their wall clocks agree.

* ``broadcast``: coordinator signs and encodes the ModelBroadcast and hands it and the Task to paho.
* ``delivery``: from then until the agent's main loop takes up the model's last chunk (Task
  delivery, subscribe on selection, retained chunks through mosquitto, agent event queue).
* ``decode``: the agent decodes and verifies the model (envelope, Ed25519, tensors).
* ``load``: the agent imports torch and the learning core before training (its first round only;
  about 0 with ``--preload-training``). 20 agents doing it at once on 2 cores take tens of seconds.
* ``train``: local training (the update's ``compute_s``).
* ``encode``: the agent packs the update (values on the mask, mask changes), HMACs and chunks it.
* ``upload``: from the agent handing the update to paho until its last packet reaches the
  coordinator's MQTT callback.
* ``aggregation``: the coordinator's streaming adds and finish (per round; the adds run while
  other devices still train, so the shares of the stages do not add up to 100 %).
* ``close``: from the last accepted update's arrival to the round's close (its decode and add, the
  aggregation's finish, main-loop queueing).
* ``critical_path``: per round, broadcast + the last-arriving device's delivery..upload + close;
  ``other`` = round seconds - critical path (selection before the broadcast, clock granularity).

``stages.alone``: the same stages for one preloaded agent training one client for one round with nothing else
running (``--skip-alone`` skips it): a stage's live value minus its ``alone`` value is what the other agents'
contention for the cores added; the product's own cost of the stage is the ``alone`` value.

``stages.control`` (``bench/contention_control.py``; ``--skip-control`` skips it): the same number of one-thread
processes training the same clients for the same rounds, released together each round, with no coordinator,
broker or MQTT: the machine's 20-processes-on-2-cores contention measured directly. ``overhead_vs_control_ratio``
= live round / control round is what the product adds on top of that contention (the live path's own cost);
``overhead_ratio`` stays live / simulated.

``stages.cpu`` (``bench/cpu_accounting.py``): CPU seconds per live round of each party, read from ``/proc`` at
the run's start and end: the agents' training threads (started and ended each round), main loops (decode,
encode, events) and paho threads, the coordinator's process and its main loop / decoder / paho threads,
mosquitto, their sum, and the machine's busy / idle / steal (``machine_outside``: busy CPU of processes outside
the bench, a disturbed run); ``stages.control.cpu`` the same for the control's workers. ``stages.cpu_attribution``:
with the cores fully shared, (live CPU - control CPU) / cores is the wall time the product's own work takes
(``product_cpu_s``), and the rest of live round - control round is contention inflation (``inflation_s``);
``train_cpu_per_device_s`` against ``control_cpu_per_worker_s`` says whether an agent's training does more work
than the control's or only waits longer. ``round_spans_s`` and ``train_by_round_s`` (live and control): each
round's span and mean training per device.

``simulated_train_per_client_s`` (the unbatched simulation's round time / clients per round) sits
beside ``train``: the agents train the same clients with the same kernels, so their ratio is the
slow-down of 20 single-threaded agent processes sharing this machine's cores.

Part 2 (scale, ``bench/fleet_scale.py``): ``--scale-agents`` protocol-level fake agents (no training;
one MQTT connection each, multiplexed by one asyncio loop in each of ``--scale-procs`` processes; one
model receiver per process; a Status every ``--scale-heartbeat-s``, default the real agent's) through
mosquitto on loopback (``--scale-bridge``: a bridged pair of mosquittos), each returning a density-0.2
update of the MNIST CNN. Prints the time of one round including aggregation (targets: 1000 agents
<= 2 s, 10 000 <= 10 s), the coordinator process's peak RSS (target <= 500 MB at 10 000) and the
round's breakdown (``scale_breakdown``: timeline, CPU seconds of the coordinator's threads, each
mosquitto and the fake agents against the machine's cores, each broker's ``$SYS`` counters);
``--profile`` adds cProfile of the coordinator's threads.

    python bench/live_overhead.py                   # 3 timed rounds, 1000 fake agents
    python bench/live_overhead.py --rounds 5 --json # one JSON object on stdout
    python bench/live_overhead.py --skip-overhead --scale-agents 10000
    python bench/live_overhead.py --skip-overhead --scale-agents 10000 --scale-bridge
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MNIST_DIR = str(ROOT.parent / "shared/data/mnist")


def make_coordinator(broker_url: str, state_dir: Path, heartbeat_s: float = 5.0):
    from cloud.coordinator import Coordinator
    from cloud.settings import CloudSettings

    coordinator = Coordinator(CloudSettings(broker_url=broker_url, state_dir=state_dir, heartbeat_s=heartbeat_s,
                                            mqtt_username=None))
    if not coordinator.start():
        raise RuntimeError(f"coordinator cannot connect to {broker_url}")
    return coordinator


def wait_until(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_mosquitto(workdir: Path):
    from brokers import MosquittoBroker

    # Unlimited queues: a burst of 1000 updates must never be dropped by the broker.
    return MosquittoBroker(workdir, extra_config=["max_queued_messages 0", "max_inflight_messages 0"]).start()


# --- part 1: overhead -----------------------------------------------------------------------------


def paper_config(rounds: int, clients: int = 20) -> dict:
    return dict(clients_per_round=clients, rounds=rounds, local_epochs=10, batch_size=32, lr=0.01, momentum=0.9,
                weight_decay=0.001, algorithm="feddst", sparsity=0.8, readjust_ratio=0.01, readjust_every=10,
                seed=0)


STAGE_LINE = re.compile(r"stage timing (?P<run>\S+) round (?P<round>\d+): model_at=(?P<model_at>\S+) "
                        r"decode=(?P<decode>\S+) train=(?P<train>\S+) encode=(?P<encode>\S+) "
                        r"published_at=(?P<published_at>\S+)(?: load=(?P<load>\S+))?(?: train_cpu=(?P<train_cpu>\S+))?"
                        r"(?: train_faults=(?P<train_faults>\d+))?(?: train_vcsw=(?P<train_vcsw>\d+))?"
                        r"(?: train_ivcsw=(?P<train_ivcsw>\d+))?")
STAGE_FIELDS = ("model_at", "decode", "train", "encode", "published_at", "load", "train_cpu", "train_faults",
                "train_vcsw", "train_ivcsw")
TRAIN_USAGE = ("train_cpu", "train_faults", "train_vcsw", "train_ivcsw")
"""The training thread's usage per device per round (``<name>_by_round_s`` for cpu, ``<name>_by_round`` else)."""
STAGES = ("broadcast", "delivery", "decode", "load", "train", "encode", "upload", "aggregation")
PRELOADED_LINE = "training modules loaded ahead of the first round"
IDLE_SETTLE_S = 2.0
HEARTBEAT_S = 2.0  # the live agents' --heartbeat-s


def agent_stage_lines(log_path: Path) -> dict[int, dict[str, float]]:
    """Round -> the agent's ``stage timing`` values (first line per round; a field the line lacks, as an older
    agent's, is 0)."""
    out: dict[int, dict[str, float]] = {}
    for m in STAGE_LINE.finditer(log_path.read_text(errors="replace")):
        out.setdefault(int(m["round"]), {k: float(m[k] or 0.0) for k in STAGE_FIELDS})
    return out


def usage_key(name: str) -> str:
    """``--json`` name of the per-round means of a :data:`TRAIN_USAGE` field."""
    return f"{name}_by_round_s" if name == "train_cpu" else f"{name}_by_round"


def stage_breakdown(records: list[dict], agent_lines: dict[str, dict[int, dict[str, float]]]) -> dict:
    """Mean seconds of each stage (see the module docstring) over every accepted (round, device)."""
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    critical, other, round_s, closes, train_by_round = [], [], [], [], []
    usage_by_round: dict[str, list[float]] = {name: [] for name in TRAIN_USAGE}
    for record in records:
        r = record["round"]
        per_stage["broadcast"].append(record["broadcast_s"])
        per_stage["aggregation"].append(record["aggregation_s"])
        paths, usages = [], []
        for device, received_at in record["update_received_at"].items():
            agent = agent_lines.get(device, {}).get(r)
            if agent is None:
                continue
            delivery = agent["model_at"] - record["published_at"]
            upload = received_at - agent["published_at"]
            for name, value in (("delivery", delivery), ("load", agent["load"]), ("decode", agent["decode"]),
                                ("train", agent["train"]), ("encode", agent["encode"]), ("upload", upload)):
                per_stage[name].append(value)
            usages.append(agent)
            paths.append((received_at, delivery + agent["load"] + agent["decode"] + agent["train"] + agent["encode"]
                          + upload))
        if paths:
            train_by_round.append(sum(per_stage["train"][-len(paths):]) / len(paths))
            for name, means in usage_by_round.items():
                means.append(sum(u.get(name, 0.0) for u in usages) / len(usages))
            last_arrival, last_path = max(paths)
            close = record["closed_at"] - last_arrival
            closes.append(close)
            path = record["broadcast_s"] + last_path + close
            critical.append(path)
            other.append(record["seconds"] - path)
            round_s.append(record["seconds"])

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    result = {f"{name}_s": mean(values) for name, values in per_stage.items()}
    result.update(close_s=mean(closes), critical_path_s=mean(critical), other_s=mean(other), round_s=mean(round_s),
                  samples=len(per_stage["train"]), round_spans_s=round_s, train_by_round_s=train_by_round,
                  **{usage_key(name): means for name, means in usage_by_round.items()})
    return result


def wait_for_agents_online(coordinator, procs: list[subprocess.Popen], logs: Path,  # noqa: ANN001
                           timeout_s: float) -> None:
    """Until every agent ``dev-NNN`` (``procs[NNN]``) is online at the coordinator. Fails at once when an agent
    process has exited, and on timeout names the devices still missing; either way with the tail of their logs."""
    wanted = {f"dev-{i:03d}": p for i, p in enumerate(procs)}

    def tails(devices: list[str]) -> str:
        return "".join(f"\n--- {d} (last lines of {logs / f'{d}.log'}):\n"
                       + "\n".join((logs / f"{d}.log").read_text(errors="replace").splitlines()[-8:])
                       for d in devices[:3])

    end = time.monotonic() + timeout_s
    while True:
        exited = [d for d, p in wanted.items() if p.poll() is not None]
        if exited:
            codes = ", ".join(f"{d} (exit code {wanted[d].returncode})" for d in exited)
            raise RuntimeError(f"agent process exited before the run: {codes}" + tails(exited))
        missing = sorted(set(wanted) - set(coordinator.registry.online_ids()))
        if not missing:
            return
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for agents online: {len(missing)} of "
                               f"{len(wanted)} not online ({', '.join(missing[:10])})" + tails(missing))
        time.sleep(0.1)


def measure_live(rounds: int, data_dir: str, workdir: Path, agents: int, kernels: str,
                 preload: bool = False, idle_window_s: float = 0.0) -> tuple[float, dict]:
    """Seconds per live round, and the stage breakdown (:func:`stage_breakdown`). ``preload``: agents run with
    ``--preload-training`` and the run starts once every agent has logged that torch is imported.
    ``idle_window_s`` > 0: before the run, the parties' CPU per second over that long with every agent online and
    no round (``stages["idle_floor"]``, ``bench/idle_floor.py``)."""
    from cpu_accounting import CpuWindow, live_cpu_per_round
    from idle_floor import idle_floor

    from cloud.run_config import RunConfig

    broker = start_mosquitto(workdir / "mosquitto")
    coordinator = make_coordinator(broker.url, workdir / "state")
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    logs = workdir / "agent-logs"
    logs.mkdir(exist_ok=True)
    try:
        for i in range(agents):
            with open(logs / f"dev-{i:03d}.log", "w") as agent_log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "feddst_cli.main", "agent", "run", "--broker", broker.url, "--device-id",
                     f"dev-{i:03d}", "--dataset", "mnist", "--data-dir", data_dir, "--partition", f"{i}/400",
                     "--seed", "0", "--threads", "1", "--heartbeat-s", str(HEARTBEAT_S), "--log-level", "info",
                     "--kernels", kernels, "--coordinator-public-key", coordinator.public_key_hex,
                     *(["--preload-training"] if preload else [])],
                    stdout=subprocess.DEVNULL, stderr=agent_log, env=env, cwd=ROOT))
        # up to 10 min: 20 agents loading MNIST on a loaded machine (setup, not measured)
        wait_for_agents_online(coordinator, procs, logs, 600)
        if preload:
            wait_until(lambda: all(PRELOADED_LINE in (logs / f"dev-{i:03d}.log").read_text(errors="replace")
                                   for i in range(agents)), 600, "agents preloaded torch")
        floor = None
        if idle_window_s > 0:
            time.sleep(IDLE_SETTLE_S)  # the agents' start-up (registration, first statuses) out of the window
            floor = idle_floor([p.pid for p in procs], {"mosquitto": broker.process.pid}, idle_window_s)
        cfg = paper_config(rounds, agents)
        config = RunConfig(model="mnist_cnn", round_timeout_s=600, quorum=agents, min_devices=agents,
                           readjust_until=rounds, **cfg)
        run = coordinator.create_run(config)
        cpu = CpuWindow(agents=[p.pid for p in procs], others={"mosquitto": broker.process.pid}, own_threads=True)
        cpu.start()
        t0 = time.perf_counter()
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 3600)
        elapsed = time.perf_counter() - t0
        cpu.stop()
        if final.status != "completed":
            raise RuntimeError(f"live run {final.status}: {final.error}")
        _, records = coordinator.get_run(run.id)
        time.sleep(1.0)  # let the agents' last log lines reach their files
        lines = {f"dev-{i:03d}": agent_stage_lines(logs / f"dev-{i:03d}.log") for i in range(agents)}
        stages = stage_breakdown(records, lines)
        stages["cpu"] = live_cpu_per_round(cpu.seconds(), rounds, elapsed)
        if floor is not None:
            stages["idle_floor"] = floor
        return elapsed / rounds, stages
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        coordinator.close()
        broker.stop()


def measure_simulated(rounds: int, data_dir: str, kernels: str, clients: int = 20) -> float:
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    cfg = paper_config(rounds, clients)
    sim = Simulation(SimulationConfig(dataset="mnist", data_dir=data_dir, clients=400, eval_every=10 ** 6,
                                      readjust_until=rounds, client_batching=False, kernels=kernels, **cfg))
    t0 = time.perf_counter()
    for _ in sim.run_rounds():
        pass
    return (time.perf_counter() - t0) / rounds


# --- part 2: scale (bench/fleet_scale.py) ----------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the overhead comparison")
    parser.add_argument("--agents", type=int, default=20, help="live agents (paper: 20 clients per round)")
    parser.add_argument("--scale-agents", type=int, default=1000, help="fake agents of the scale test")
    parser.add_argument("--scale-procs", type=int, default=4, help="fake-agent processes of the scale test")
    parser.add_argument("--scale-heartbeat-s", type=float, default=None,
                        help="seconds between each fake agent's Status heartbeats (default: the real agent's "
                             "default, edge_agent heartbeat_s)")
    parser.add_argument("--scale-bridge", action="store_true",
                        help="the scale round through a bridged pair of mosquittos (fake processes alternate between "
                             "them; the coordinator on the first)")
    parser.add_argument("--scale-upload-window", type=int, default=None,
                        help="fake devices per process uploading at once (default 64; 0: all at once)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the scale round's coordinator threads (printed on stderr; slows them)")
    parser.add_argument("--data-dir", default=MNIST_DIR, help="MNIST IDX directory")
    parser.add_argument("--kernels", default="auto", choices=("auto", "sparse", "dense"),
                        help="local training kernels on BOTH sides (agents' default is auto)")
    parser.add_argument("--preload-training", action="store_true",
                        help="start the live agents with --preload-training and wait until each has imported "
                             "torch (the simulation's process has it imported too); default: cold agents")
    parser.add_argument("--skip-alone", action="store_true",
                        help="skip the one-agent round whose stages are printed beside the live ones")
    parser.add_argument("--skip-control", action="store_true",
                        help="skip the contention control (bench/contention_control.py: the agents' training in as "
                             "many processes at once, without the product)")
    parser.add_argument("--idle-window-s", type=float, default=8.0,
                        help="seconds, before the live run, of measuring each party's CPU with every agent online "
                             "and no round (heartbeats, idle wake-ups: bench/idle_floor.py); 0 skips it")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    import torch
    from contention_control import measure_contention_control
    from cpu_accounting import cpu_attribution, print_cpu
    from fleet_scale import measure_scale, print_breakdown
    from live_overhead_report import print_control, print_idle_floor, print_stages

    result: dict = {"overhead_ratio": None, "scale_agents": args.scale_agents, "scale_round_s": None,
                    "scale_peak_mb": None, "stages": None}
    with tempfile.TemporaryDirectory(prefix="feddst-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_overhead:
            # The simulation runs before AND after the live run and the two are averaged: this shared machine's
            # speed drifts by tens of percent over minutes, and bracketing cancels a linear drift.
            log(f"simulating {args.rounds} rounds (client batching off, {torch.get_num_threads()} torch threads, "
                f"--kernels {args.kernels})...")
            sim_before = measure_simulated(args.rounds, args.data_dir, args.kernels, args.agents)
            log(f"live run: {args.agents} agents x {args.rounds} rounds over mosquitto (--kernels {args.kernels})...")
            live_s, stages = measure_live(args.rounds, args.data_dir, work, args.agents, args.kernels,
                                          args.preload_training, args.idle_window_s)
            if not args.skip_control:
                log(f"contention control: {args.agents} processes training the same clients at once, no product...")
                stages["control"] = measure_contention_control(args.agents, args.rounds, args.data_dir, args.kernels)
                result["overhead_vs_control_ratio"] = live_s / stages["control"]["round_s"]
                stages["cpu_attribution"] = cpu_attribution(live_s, stages["cpu"], stages["control"]["round_s"],
                                                            stages["control"]["cpu"], os.cpu_count() or 1,
                                                            args.agents)
            log("simulating again (bracketing the live run)...")
            sim_after = measure_simulated(args.rounds, args.data_dir, args.kernels, args.agents)
            if not args.skip_alone:
                log("one agent alone, one round (the stages without the other agents' contention)...")
                (work / "alone").mkdir()
                _, alone = measure_live(1, args.data_dir, work / "alone", 1, args.kernels, preload=True)
                stages["alone"] = alone
            sim_s = (sim_before + sim_after) / 2
            stages["simulated_train_per_client_s"] = sim_s / args.agents
            if "alone" in stages:
                stages["contention"] = contention_estimate(stages, args.agents, os.cpu_count() or 1, live_s, sim_s)
            result.update(live_round_s=live_s, simulated_round_s=sim_s, overhead_ratio=live_s / sim_s,
                          simulated_before_s=sim_before, simulated_after_s=sim_after, stages=stages)
        if not args.skip_scale:
            log(f"scale: one round with {args.scale_agents} fake agents through "
                f"{'a bridged mosquitto pair' if args.scale_bridge else 'mosquitto'}...")
            window = {} if args.scale_upload_window is None else {"upload_window": args.scale_upload_window}
            scale = measure_scale(args.scale_agents, work, args.scale_procs, args.profile,
                                  args.scale_heartbeat_s, args.scale_bridge, **window)
            result.update(scale_round_s=scale["round_s"], scale_peak_mb=scale["peak_mb"],
                          scale_breakdown=scale["breakdown"], scale_accepted=scale["accepted"],
                          scale_broadcast_s=scale["broadcast_s"], scale_aggregation_s=scale["aggregation_s"],
                          scale_bridge=args.scale_bridge)
    if args.json:
        print(json.dumps({k: result.get(k) for k in ("overhead_ratio", "overhead_vs_control_ratio", "scale_agents",
                                                     "scale_round_s", "scale_peak_mb", "stages", "scale_broadcast_s",
                                                     "scale_aggregation_s", "scale_breakdown",
                                                     "scale_bridge")}))
        return
    if result["overhead_ratio"] is not None:
        print(f"overhead: live {result['live_round_s']:.2f} s/round vs simulated {result['simulated_round_s']:.2f} "
              f"s/round (before {result['simulated_before_s']:.2f}, after {result['simulated_after_s']:.2f}) "
              f"-> ratio {result['overhead_ratio']:.3f} (target <= 1.05)")
        print_stages(result["stages"], args.agents)
        print_control(result)
        print_cpu(result["stages"], args.agents)
        print_idle_floor(result["stages"], args.agents, result["live_round_s"])
    if result["scale_round_s"] is not None:
        print(f"scale: {args.scale_agents} fake agents, one round incl. aggregation {result['scale_round_s']:.2f} s "
              f"(targets: 1000 <= 2 s, 10 000 <= 10 s), {result['scale_accepted']} updates accepted; coordinator "
              f"peak RSS "
              f"{result['scale_peak_mb']:.0f} MB (broadcast {result['scale_broadcast_s']:.2f} s, aggregation "
              f"{result['scale_aggregation_s']:.2f} s)")
        print_breakdown(args.scale_agents, result)


def contention_estimate(stages: dict, agents: int, cores: int, live_round_s: float, simulated_round_s: float) -> dict:
    """What sharing ``cores`` between ``agents`` one-thread agent processes costs, from the measured stages.

    ``time_sliced_train_s``: one agent's training alone x agents / cores, the training time per device if the
    processes took turns on the cores at no cost; ``train_contention_s``: the measured training beyond it;
    ``outside_contention_s``: the critical path outside training beyond one agent's alone. The live round minus
    both, over the simulated round, is ``ratio_without_contention`` (an estimate: the product's own overhead)."""
    alone = stages["alone"]
    time_sliced = alone["train_s"] * agents / cores
    train_contention = max(0.0, stages["train_s"] - time_sliced)
    outside = (stages["critical_path_s"] - stages["train_s"]) - (alone["critical_path_s"] - alone["train_s"])
    outside_contention = max(0.0, outside)
    without = live_round_s - train_contention - outside_contention
    return {"time_sliced_train_s": time_sliced, "train_contention_s": train_contention,
            "outside_contention_s": outside_contention, "round_without_contention_s": without,
            "ratio_without_contention": without / simulated_round_s}


if __name__ == "__main__":
    main()
