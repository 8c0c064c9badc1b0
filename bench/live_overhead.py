"""Live-system overhead and scale: the coordinator + agents over MQTT versus the in-process simulator.

Part 1 (overhead): per-round wall time of a live run with 20 agent processes (``feddst agent run``,
one torch thread each, holding partitions 0..19 of the paper's MNIST setting: 400 clients x 2
classes x 20 images, 10 local epochs, FedDST S=0.8), every agent training every round, over a
local mosquitto; versus ``Simulation(..., client_batching=False)`` on the same config with the same
``--kernels`` (default auto, the agents' own default): the same per-client training path. Printed as
``overhead_ratio`` = live / simulated (target <= 1.15).

Stage breakdown of the live rounds (mean seconds per selected device per round; ``stages`` in
``--json``), from timestamps the system records: the coordinator's round records (``broadcast_s``,
``published_at``, ``update_received_at``, ``aggregation_s``, ``seconds``) and each agent's
``stage timing`` INFO line (``model_at``, ``decode``, ``train``, ``encode``, ``published_at``). All
processes run on this machine, so their wall clocks agree.

* ``broadcast``: coordinator signs and encodes the ModelBroadcast and hands it and the Task to paho.
* ``delivery``: from then until the agent's main loop takes up the model's last chunk (Task
  delivery, subscribe on selection, retained chunks through mosquitto, agent event queue).
* ``decode``: the agent decodes and verifies the model (envelope, Ed25519, tensors).
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

``simulated_train_per_client_s`` (the unbatched simulation's round time / clients per round) sits
beside ``train``: the agents train the same clients with the same kernels, so their ratio is the
slow-down of 20 single-threaded agent processes sharing this machine's cores.

Part 2 (scale): 1000 protocol-level fake agents (no training; one MQTT connection each, spread
over a few processes; one model receiver per process) through mosquitto on loopback, each
returning a density-0.2 update of the MNIST CNN. Prints the time of one round including
aggregation (target <= 10 s) and the coordinator process's peak RSS.

    python bench/live_overhead.py                   # 3 timed rounds, 1000 fake agents
    python bench/live_overhead.py --rounds 5 --json # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
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


def paper_config(rounds: int) -> dict:
    return dict(clients_per_round=20, rounds=rounds, local_epochs=10, batch_size=32, lr=0.01, momentum=0.9,
                weight_decay=0.001, algorithm="feddst", sparsity=0.8, readjust_ratio=0.01, readjust_every=10,
                seed=0)


STAGE_LINE = re.compile(r"stage timing (?P<run>\S+) round (?P<round>\d+): model_at=(?P<model_at>\S+) "
                        r"decode=(?P<decode>\S+) train=(?P<train>\S+) encode=(?P<encode>\S+) "
                        r"published_at=(?P<published_at>\S+)")
STAGES = ("broadcast", "delivery", "decode", "train", "encode", "upload", "aggregation")


def agent_stage_lines(log_path: Path) -> dict[int, dict[str, float]]:
    """Round -> the agent's ``stage timing`` values (first line per round)."""
    out: dict[int, dict[str, float]] = {}
    for m in STAGE_LINE.finditer(log_path.read_text(errors="replace")):
        out.setdefault(int(m["round"]), {k: float(m[k]) for k in ("model_at", "decode", "train", "encode",
                                                                   "published_at")})
    return out


def stage_breakdown(records: list[dict], agent_lines: dict[str, dict[int, dict[str, float]]]) -> dict:
    """Mean seconds of each stage (see the module docstring) over every accepted (round, device)."""
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    critical, other, round_s, closes = [], [], [], []
    for record in records:
        r = record["round"]
        per_stage["broadcast"].append(record["broadcast_s"])
        per_stage["aggregation"].append(record["aggregation_s"])
        paths = []
        for device, received_at in record["update_received_at"].items():
            agent = agent_lines.get(device, {}).get(r)
            if agent is None:
                continue
            delivery = agent["model_at"] - record["published_at"]
            upload = received_at - agent["published_at"]
            for name, value in (("delivery", delivery), ("decode", agent["decode"]), ("train", agent["train"]),
                                ("encode", agent["encode"]), ("upload", upload)):
                per_stage[name].append(value)
            paths.append((received_at, delivery + agent["decode"] + agent["train"] + agent["encode"] + upload))
        if paths:
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
                  samples=len(per_stage["train"]))
    return result


def measure_live(rounds: int, data_dir: str, workdir: Path, agents: int, kernels: str) -> tuple[float, dict]:
    """Seconds per live round, and the stage breakdown (:func:`stage_breakdown`)."""
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
                     "--seed", "0", "--threads", "1", "--heartbeat-s", "2", "--log-level", "info",
                     "--kernels", kernels, "--coordinator-public-key", coordinator.public_key_hex],
                    stdout=subprocess.DEVNULL, stderr=agent_log, env=env, cwd=ROOT))
        # up to 10 min: 20 agents loading MNIST on a loaded machine (setup, not measured)
        wait_until(lambda: len(coordinator.registry.online_ids()) == agents, 600, "agents online")
        cfg = paper_config(rounds)
        config = RunConfig(model="mnist_cnn", round_timeout_s=600, quorum=agents, min_devices=agents,
                           readjust_until=rounds, **cfg)
        run = coordinator.create_run(config)
        t0 = time.perf_counter()
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 3600)
        elapsed = time.perf_counter() - t0
        if final.status != "completed":
            raise RuntimeError(f"live run {final.status}: {final.error}")
        _, records = coordinator.get_run(run.id)
        time.sleep(1.0)  # let the agents' last log lines reach their files
        lines = {f"dev-{i:03d}": agent_stage_lines(logs / f"dev-{i:03d}.log") for i in range(agents)}
        return elapsed / rounds, stage_breakdown(records, lines)
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


def measure_simulated(rounds: int, data_dir: str, kernels: str) -> float:
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    cfg = paper_config(rounds)
    sim = Simulation(SimulationConfig(dataset="mnist", data_dir=data_dir, clients=400, eval_every=10 ** 6,
                                      readjust_until=rounds, client_batching=False, kernels=kernels, **cfg))
    t0 = time.perf_counter()
    for _ in sim.run_rounds():
        pass
    return (time.perf_counter() - t0) / rounds


# --- part 2: scale ----------------------------------------------------------------------------------


def fake_agent_process(port: int, first: int, count: int) -> None:
    """Child: ``count`` fake agents, one MQTT connection each; prints 'ready' then serves one round.

    Like real agents they number their messages from the clock (the coordinator drops any seq not above
    the last one it accepted from a device) and echo the task's nonce in their updates."""
    import dataclasses
    import itertools

    import paho.mqtt.client as mqtt

    from feddst_core.models import MNIST_CNN
    from feddst_core.wire_format import model_from_tensors, update_message
    from protocol import (
        ChunkReassembler,
        ModelBroadcast,
        Register,
        Status,
        Task,
        decode_message,
        encode_message,
        split_into_chunks,
        topics,
    )
    from protocol.messages import Capabilities

    ids = [f"fake-{i:04d}" for i in range(first, first + count)]
    seqs = itertools.count(time.time_ns() // 1000)  # one increasing counter shared by this process's fakes

    def encode(msg) -> bytes:  # noqa: ANN001
        return encode_message(msg, seq=next(seqs))

    model: dict = {}
    got_model = threading.Event()
    reassembler = ChunkReassembler()

    def on_model(client, userdata, message) -> None:  # noqa: ANN001
        if not message.payload:
            return  # the coordinator clearing a closed round's retained chunk
        whole = reassembler.add(message.payload, source=message.topic.rsplit("/", 1)[0])
        if whole is not None:
            msg = decode_message(whole)
            if isinstance(msg, ModelBroadcast):
                model["msg"] = msg
                got_model.set()

    receiver = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"model-rx-{first}")
    receiver.on_message = on_model
    receiver.connect("127.0.0.1", port)
    # one receiver per process stands in for its selected fakes (all are selected in this round)
    receiver.subscribe(f"{topics.ROOT}/runs/+/model/+/+", qos=1)
    receiver.loop_start()

    tasks: list = []

    def make_client(device_id: str) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        will_seq = next(seqs)
        c.will_set(topics.status(device_id), encode_message(Status(device_id, "offline"), seq=will_seq), qos=1,
                   retain=True)
        c.on_message = lambda cl, u, m: tasks.append((device_id, m.payload)) if m.topic.endswith("/task") else None
        c.connect("127.0.0.1", port, keepalive=120)
        c.subscribe([(f"{topics.ROOT}/runs/+/task", 1), (f"{topics.ROOT}/runs/+/ack/{device_id}", 1)])
        c.loop_start()
        c.publish(topics.status(device_id), encode(Status(device_id, "online")), qos=1, retain=True)
        c.publish(topics.register(device_id), encode(
            Register(device_id, Capabilities("x86_64", 1, 1024, {}), 40, will_seq)), qos=1)
        return c

    clients = {d: make_client(d) for d in ids}
    print("ready", flush=True)
    beat = time.time()
    sent = False
    while not sent:
        if time.time() - beat > 2:
            for d, c in clients.items():
                c.publish(topics.status(d), encode(Status(d, "online")), qos=1, retain=True)
            beat = time.time()
        if tasks and got_model.is_set():
            task = decode_message(tasks[0][1])
            assert isinstance(task, Task)
            msg = model["msg"]
            params, masks = model_from_tensors(msg.tensors, MNIST_CNN.masked_names())
            for d in ids:
                if d in task.selected:
                    update = update_message(task.run_id, task.server_round, d, params, masks, masks, 40, 0.0, 0.0)
                    data = encode(dataclasses.replace(update, task_nonce=task.task_nonce))
                    for packet in split_into_chunks(data):
                        clients[d].publish(topics.update(task.run_id, d), packet, qos=1)
            sent = True
        time.sleep(0.01)
    sys.stdin.readline()  # parent closes stdin when done
    for c in clients.values():
        c.disconnect()
        c.loop_stop()
    receiver.loop_stop()


def coordinator_process(url: str, state_dir: str, agents: int) -> None:
    """Child: the coordinator; runs one round with ``agents`` fakes, prints JSON (round_s, peak_mb)."""
    from cloud.run_config import RunConfig

    coordinator = make_coordinator(url, Path(state_dir))
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) >= agents, 300, "fake agents online")
        run = coordinator.create_run(RunConfig(model="mnist_cnn", sparsity=0.8, clients_per_round=agents, rounds=1,
                                               quorum=agents, round_timeout_s=300, seed=0))
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 600)
        _, rounds = coordinator.get_run(run.id)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"status": final.status, "error": final.error,
                          "round_s": rounds[0]["seconds"] if rounds else None,
                          "broadcast_s": rounds[0]["broadcast_s"] if rounds else None,
                          "aggregation_s": rounds[0]["aggregation_s"] if rounds else None,
                          "accepted": len(rounds[0]["accepted"]) if rounds else 0, "peak_mb": peak_mb}), flush=True)
    finally:
        coordinator.close()


def measure_scale(agents: int, workdir: Path, procs_count: int = 4) -> dict:
    broker = start_mosquitto(workdir / "mosquitto-scale")
    fakes = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    coord = None
    try:
        per = -(-agents // procs_count)
        for k in range(procs_count):
            first, count = k * per, min(per, agents - k * per)
            fakes.append(subprocess.Popen([sys.executable, __file__, "--_fake", str(broker.port), str(first),
                                           str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                          text=True))
        for p in fakes:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        coord = subprocess.Popen([sys.executable, __file__, "--_coordinator", broker.url, str(workdir / "scale-state"),
                                  str(agents)], stdout=subprocess.PIPE, text=True, env=env)
        out, _ = coord.communicate(timeout=900)
        result = json.loads(out.strip().splitlines()[-1])
        if result["status"] != "completed":
            raise RuntimeError(f"scale round {result['status']}: {result['error']}")
        return result
    finally:
        for p in fakes:
            try:
                p.communicate(input="\n", timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if coord is not None and coord.poll() is None:
            coord.kill()
        broker.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_fake":
        fake_agent_process(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_coordinator":
        coordinator_process(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the overhead comparison")
    parser.add_argument("--agents", type=int, default=20, help="live agents (paper: 20 clients per round)")
    parser.add_argument("--scale-agents", type=int, default=1000, help="fake agents of the scale test")
    parser.add_argument("--data-dir", default=MNIST_DIR, help="MNIST IDX directory")
    parser.add_argument("--kernels", default="auto", choices=("auto", "sparse", "dense"),
                        help="local training kernels on BOTH sides (agents' default is auto)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    import torch

    result: dict = {"overhead_ratio": None, "scale_agents": args.scale_agents, "scale_round_s": None,
                    "scale_peak_mb": None, "stages": None}
    with tempfile.TemporaryDirectory(prefix="feddst-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_overhead:
            # The simulation runs before AND after the live run and the two are averaged: this shared machine's
            # speed drifts by tens of percent over minutes, and bracketing cancels a linear drift.
            log(f"simulating {args.rounds} rounds (client batching off, {torch.get_num_threads()} torch threads, "
                f"--kernels {args.kernels})...")
            sim_before = measure_simulated(args.rounds, args.data_dir, args.kernels)
            log(f"live run: {args.agents} agents x {args.rounds} rounds over mosquitto (--kernels {args.kernels})...")
            live_s, stages = measure_live(args.rounds, args.data_dir, work, args.agents, args.kernels)
            log("simulating again (bracketing the live run)...")
            sim_after = measure_simulated(args.rounds, args.data_dir, args.kernels)
            sim_s = (sim_before + sim_after) / 2
            stages["simulated_train_per_client_s"] = sim_s / args.agents
            result.update(live_round_s=live_s, simulated_round_s=sim_s, overhead_ratio=live_s / sim_s,
                          simulated_before_s=sim_before, simulated_after_s=sim_after, stages=stages)
        if not args.skip_scale:
            log(f"scale: one round with {args.scale_agents} fake agents through mosquitto...")
            scale = measure_scale(args.scale_agents, work)
            result.update(scale_round_s=scale["round_s"], scale_peak_mb=scale["peak_mb"],
                          scale_accepted=scale["accepted"], scale_broadcast_s=scale["broadcast_s"],
                          scale_aggregation_s=scale["aggregation_s"])
    if args.json:
        print(json.dumps({k: result.get(k) for k in ("overhead_ratio", "scale_agents", "scale_round_s",
                                                     "scale_peak_mb", "stages", "scale_broadcast_s",
                                                     "scale_aggregation_s")}))
        return
    if result["overhead_ratio"] is not None:
        print(f"overhead: live {result['live_round_s']:.2f} s/round vs simulated {result['simulated_round_s']:.2f} "
              f"s/round (before {result['simulated_before_s']:.2f}, after {result['simulated_after_s']:.2f}) "
              f"-> ratio {result['overhead_ratio']:.3f} (target <= 1.15)")
        print_stages(result["stages"], args.agents)
    if result["scale_round_s"] is not None:
        print(f"scale: {args.scale_agents} fake agents, one round incl. aggregation {result['scale_round_s']:.2f} s "
              f"(target <= 10 s), {result['scale_accepted']} updates accepted; coordinator peak RSS "
              f"{result['scale_peak_mb']:.0f} MB (broadcast {result['scale_broadcast_s']:.2f} s, aggregation "
              f"{result['scale_aggregation_s']:.2f} s)")


def print_stages(stages: dict, agents: int) -> None:
    """The stage table: mean seconds per device per round, and each stage's share of the mean round."""
    round_s = stages["round_s"]
    print(f"live stages (mean s per device per round over {stages['samples']} updates; round {round_s:.2f} s):")
    for name in STAGES:
        value = stages[f"{name}_s"]
        share = f"{100 * value / round_s:5.1f} %" if value is not None and round_s else "   n/a"
        print(f"  {name:<12} {value if value is not None else float('nan'):8.3f} s  {share}")
    print(f"  {'close':<12} {stages['close_s']:8.3f} s  (last update's arrival to the round's close)")
    print(f"  {'critical path':<12} {stages['critical_path_s']:8.3f} s  (broadcast + slowest device + close); "
          f"other {stages['other_s']:.3f} s")
    sim = stages["simulated_train_per_client_s"]
    print(f"  train per client: live {stages['train_s']:.3f} s vs simulated {sim:.3f} s "
          f"(x{stages['train_s'] / sim:.2f}: {agents} one-thread agents on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
