"""The live-overhead bench's contention control: N processes training at once, with no product around them.

``bench/live_overhead.py`` compares a live round (20 one-thread agent processes on this machine's cores,
coordinator and mosquitto beside them) with the unbatched simulation (one process, two worker threads).
The live agents pay for sharing 2 cores between 20 processes (context switches, cold caches) whether or
not the product adds anything. This control measures that cost directly: ``agents`` worker processes
(one torch thread each, as the agents) each build the simulator's state for the paper's MNIST setting, hold
client ``i`` (the live agents hold partitions 0..N-1), and, released together once per round, train that
client for one round with the simulator's per-client trainer (``Simulation.train_clients``: the agents'
own training path, ``edge_agent/local_training.py``; like an agent, each worker freezes the objects loaded
before its first round out of the garbage collector's reach), with no coordinator, broker, MQTT, encoding or
decoding. A control round lasts from the first worker's start to the last worker's end.

So: control round / simulated round is the machine's contention alone; live round / control round is
what the product adds on top (the live path: broadcast, delivery, decode, encode, upload, aggregation).

    python bench/contention_control.py --agents 20 --rounds 3      # prints the rounds; --json for one object
    python bench/contention_control.py --worker 3 ...               # one worker (the parent starts these)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

READY = "ready"
GO = "go"
WORKER_USAGE = {"cpu": "train_cpu_by_round_s", "faults": "train_faults_by_round", "vcsw": "train_vcsw_by_round",
                "ivcsw": "train_ivcsw_by_round"}
"""A worker line's usage field -> the per-round mean's name in the result (as the live stages')."""


def run_worker(client: int, rounds: int, data_dir: str, kernels: str, config: dict) -> None:
    """Worker process: build the simulation, print ``ready``, then per round wait for ``go`` on stdin, train
    ``client`` for that round and print ``{"round", "start", "end"}`` (unix seconds), ``cpu`` (the training's
    CPU seconds, ``time.thread_time``) and ``faults`` / ``vcsw`` / ``ivcsw`` (its thread's minor page faults and
    voluntary / involuntary context switches, as the agents' ``stage timing`` line) as one JSON line."""
    import torch

    torch.set_num_threads(1)
    from edge_agent.local_training import freeze_loaded_objects
    from edge_agent.thread_usage import read_thread_usage
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    sim = Simulation(SimulationConfig(dataset="mnist", data_dir=data_dir, clients=400, eval_every=10 ** 6,
                                      readjust_until=rounds, client_batching=False, kernels=kernels, **config))
    client_ids = list(range(sim.config.clients))
    freeze_loaded_objects()  # as the agents do once their training modules are loaded
    print(READY, flush=True)
    for server_round in range(1, rounds + 1):
        if sys.stdin.readline().strip() != GO:
            return
        plan = sim.strategy.configure_round(server_round, sim.state, client_ids, sim.rng)
        start, cpu_start, usage_start = time.time(), time.thread_time(), read_thread_usage()
        sim.train_clients([client], plan.readjust_fraction, plan.prox_mu, server_round)
        cpu, usage = time.thread_time() - cpu_start, read_thread_usage() - usage_start
        print(json.dumps({"round": server_round, "start": start, "end": time.time(), "cpu": cpu,
                          "faults": usage.minor_faults, "vcsw": usage.voluntary_switches,
                          "ivcsw": usage.involuntary_switches}), flush=True)


def measure_contention_control(agents: int, rounds: int, data_dir: str, kernels: str) -> dict:
    """Start ``agents`` workers, release them together ``rounds`` times; return ``round_s`` (mean seconds from
    the first start to the last end of a round), ``round_spans_s`` (each round's), ``train_s`` (mean seconds
    per worker per round), ``rounds`` and ``agents``. Raises RuntimeError naming the worker when one exits early."""
    from cpu_accounting import CpuWindow

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(Path(__file__).resolve()), "--rounds", str(rounds), "--data-dir", data_dir,
               "--kernels", kernels]
    workers = [subprocess.Popen([*command, "--worker", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for i in range(agents)]
    try:
        for i, worker in enumerate(workers):
            read_line(worker, i, READY)  # setup (loading MNIST), not measured
        cpu = CpuWindow(agents=[w.pid for w in workers])
        cpu.start()
        window_start = time.perf_counter()
        spans: list[float] = []
        trains: list[float] = []
        train_by_round: list[float] = []
        usage_by_round: dict[str, list[float]] = {name: [] for name in WORKER_USAGE.values()}
        for _ in range(rounds):
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(GO + "\n")
                worker.stdin.flush()
            done = [json.loads(read_line(worker, i)) for i, worker in enumerate(workers)]
            spans.append(max(d["end"] for d in done) - min(d["start"] for d in done))
            trains.extend(d["end"] - d["start"] for d in done)
            train_by_round.append(sum(d["end"] - d["start"] for d in done) / agents)
            for field, name in WORKER_USAGE.items():
                usage_by_round[name].append(sum(d.get(field, 0) for d in done) / agents)
        cpu.stop()
        return {"agents": agents, "rounds": rounds, "round_s": sum(spans) / rounds,
                "train_s": sum(trains) / len(trains), "round_spans_s": spans,
                "train_by_round_s": train_by_round, **usage_by_round,
                "cpu": control_cpu_per_round(cpu.seconds(), rounds, time.perf_counter() - window_start)}
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def control_cpu_per_round(seconds: dict, rounds: int, window_s: float) -> dict:
    """CPU seconds per round of the workers (``workers_total``; ``workers_main``: their main threads, which
    train) and of the machine (busy / idle / steal over all cores; ``machine_outside``: busy CPU not the workers'),
    from :meth:`cpu_accounting.CpuWindow.seconds`."""
    out = {"workers_total": seconds["agents"]["total"], "workers_main": seconds["agents"]["main"],
           **{f"machine_{k}": seconds[f"machine_{k}"] for k in ("busy", "idle", "steal")}}
    out["machine_outside"] = out["machine_busy"] - out["workers_total"]
    per_round = {k: v / rounds for k, v in out.items()}
    per_round["window_s"] = window_s / rounds
    return per_round


def read_line(worker: subprocess.Popen, index: int, expected: str | None = None) -> str:
    """The worker's next stdout line (``expected`` if given); RuntimeError with its stderr tail if it exits."""
    assert worker.stdout is not None
    line = worker.stdout.readline().strip()
    if not line or (expected is not None and line != expected):
        worker.kill()
        _, err = worker.communicate()
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(f"contention-control worker {index} exited (code {worker.returncode}) instead of "
                           f"printing {expected or 'its round'!r}; its stderr ends:\n{tail}")
    return line


def main() -> None:
    from live_overhead import MNIST_DIR, paper_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=20, help="worker processes training at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each releases every worker once)")
    parser.add_argument("--data-dir", default=MNIST_DIR, help="MNIST IDX directory")
    parser.add_argument("--kernels", default="auto", choices=("auto", "sparse", "dense"))
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.worker is not None:
        run_worker(args.worker, args.rounds, args.data_dir, args.kernels, paper_config(args.rounds, args.agents))
        return
    result = measure_contention_control(args.agents, args.rounds, args.data_dir, args.kernels)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.agents} processes training one client each, released together: {result['round_s']:.3f} s "
              f"per round, {result['train_s']:.3f} s per process per round")


if __name__ == "__main__":
    main()
