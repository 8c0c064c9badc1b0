"""Paper MNIST benchmark: FedAvg, FedAvgM, FedDST and RandomMask in the paper's setting, plus simulator speed.

Accuracy part: 400 clients x 2 classes x 20 images, 20 clients per round, 10 local epochs, S = 0.8 for
the sparse algorithms; prints final accuracy, upload per round, and each algorithm's accuracy at
FedDST's total upload budget (the last evaluated round whose cumulative upload fits in it).

Speed part: rounds per minute of ``feddst simulate`` (default kernels: sparse layers where the auto
policy picks them, clients on worker threads) and of ``--kernels dense`` (clients batched through
grouped convolutions) next to a baseline that trains the same 20 clients one after another in plain
PyTorch (nn.Module + torch.optim.SGD, mask applied after each step), all measured in this run; plus
this machine's dense matmul rate and the dense FLOP floor: the time the dense training math of a
round would take at that rate.

    python bench/paper_mnist.py                 # 200 rounds (about 20-25 minutes on 2 cores)
    python bench/paper_mnist.py --rounds 20     # a quick look
    python bench/paper_mnist.py --json          # one JSON object on stdout
    python bench/paper_mnist.py --speed-only --threads 1   # one core vs one core (a shared machine)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasources import load_dataset  # noqa: E402
from feddst_core.models import MNIST_CNN, ModelSpec  # noqa: E402
from simulator.comparison import accuracy_within_budget  # noqa: E402
from simulator.config import SimulationConfig  # noqa: E402
from simulator.engine import Simulation  # noqa: E402
from simulator.report import build_report, plot_accuracy_vs_upload, write_report  # noqa: E402

ALGORITHMS = ("fedavg", "fedavgm", "feddst", "randommask")
CAP_FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # upload caps as fractions of FedDST's total upload


class PlainMnistNet(nn.Module):
    """The paper's MNIST CNN written the ordinary way (the baseline's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(5120, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10)
        x = F.relu(F.max_pool2d(self.conv1(x), 3, 1))
        x = F.relu(F.max_pool2d(self.conv2(x), 3, 1))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def baseline_round(sim: Simulation, clients: list[int], server_round: int) -> None:
    """One round's local training, client after client, in plain PyTorch (no aggregation)."""
    cfg = sim.config
    for c in clients:
        net = PlainMnistNet()
        net.load_state_dict(sim.state.params)
        masks = {n: m.float() for n, m in sim.state.masks.items()}
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        data = sim.client_data(c)
        gen = torch.Generator().manual_seed(server_round * 1000 + c)
        for _ in range(cfg.local_epochs):
            order = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                opt.zero_grad()
                F.cross_entropy(net(data.x[idx]), data.y[idx]).backward()
                opt.step()
                with torch.no_grad():
                    for name, p in net.named_parameters():
                        if name in masks:
                            p.mul_(masks[name])


def training_gflop_per_round(spec: ModelSpec, images: int) -> float:
    """Dense FLOPs of forward + backward (3x forward) for ``images`` samples, in GFLOP."""
    _, h, w = spec.input_shape
    flops = 0
    for layer in spec.layers:
        name = type(layer).__name__
        if name == "Conv":
            h, w = h - layer.kernel + 1, w - layer.kernel + 1  # type: ignore[union-attr]
            flops += 2 * h * w * layer.out_channels * layer.in_channels * layer.kernel ** 2  # type: ignore
        elif name == "MaxPool":
            h, w = (h - layer.kernel) // layer.stride + 1, (w - layer.kernel) // layer.stride + 1  # type: ignore
        elif name == "Linear":
            flops += 2 * layer.in_features * layer.out_features  # type: ignore[union-attr]
    return 3 * flops * images / 1e9


def matmul_gflops(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9


def measure_speed(data_dir: str, rounds: int, log: Any) -> dict[str, float]:
    """Simulator (default kernels: sparse where the auto policy says so) vs the simulator with
    ``--kernels dense`` (clients batched through grouped convolutions, the default before issue 15) vs
    plain sequential PyTorch, on the same rounds and clients, interleaved round by round."""
    dataset = load_dataset("mnist", data_dir)
    sims = {kernels: Simulation(SimulationConfig(dataset="mnist", data_dir=data_dir, rounds=rounds,
                                                 eval_every=10 ** 6, kernels=kernels), dataset)
            for kernels in ("auto", "dense")}
    sim = sims["auto"]
    client_ids = list(range(sim.config.clients))
    seconds = {"auto": 0.0, "dense": 0.0, "baseline": 0.0}
    for server_round in range(1, rounds + 1):
        plan = sim.strategy.configure_round(server_round, sim.state, client_ids, sim.rng)
        t0 = time.perf_counter()
        baseline_round(sim, plan.clients, server_round)
        seconds["baseline"] += time.perf_counter() - t0
        for kernels, s in sims.items():
            t0 = time.perf_counter()
            s.train_clients(plan.clients, plan.readjust_fraction, plan.prox_mu, server_round)
            seconds[kernels] += time.perf_counter() - t0
        log(f"  speed round {server_round}: simulator {seconds['auto'] / server_round:.2f} s/round, "
            f"with --kernels dense {seconds['dense'] / server_round:.2f} s/round, "
            f"sequential baseline {seconds['baseline'] / server_round:.2f} s/round")
    images = sum(len(sim.partition.train[c]) for c in plan.clients) * sim.config.local_epochs
    gflop = training_gflop_per_round(MNIST_CNN, images)
    peak = matmul_gflops()
    sim_s, base_s = seconds["auto"], seconds["baseline"]
    return {
        "rounds_per_min": 60.0 * rounds / sim_s,
        "baseline_rounds_per_min": 60.0 * rounds / base_s,
        "dense_kernels_rounds_per_min": 60.0 * rounds / seconds["dense"],
        "speedup": base_s / sim_s,
        "dense_kernels_speedup": base_s / seconds["dense"],
        "gflop_per_round": gflop,
        "matmul_gflops": peak,
        # the dense training math of a round at this machine's matmul rate (measured in this run)
        "dense_floor_s_per_round": gflop / peak,
        "s_per_round": sim_s / rounds,
        "fraction_of_matmul_peak": gflop / (sim_s / rounds) / peak,
    }


def run_algorithm(algorithm: str, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    config = SimulationConfig(dataset="mnist", data_dir=args.data_dir, rounds=args.rounds, algorithm=algorithm,
                              eval_every=args.eval_every, seed=args.seed,
                              out=str(Path(args.out) / algorithm))
    sim = Simulation(config)
    records = []
    t0 = time.perf_counter()
    for record in sim.run_rounds():
        records.append(record)
        if record.accuracy is not None:
            log(f"  {algorithm} round {record.round}: accuracy {record.accuracy:.4f}, "
                f"upload {record.upload_bytes / 1e6:.1f} MB, {time.perf_counter() - t0:.0f} s")
    report = build_report(algorithm, config.to_json(), records)
    write_report(config.out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="rounds per algorithm (paper: 200)")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist"),
                        help="MNIST IDX directory")
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate every N rounds")
    parser.add_argument("--speed-rounds", type=int, default=3, help="rounds timed for the speed comparison")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_paper_mnist", help="where reports and the plot go")
    parser.add_argument("--skip-speed", action="store_true", help="skip the speed comparison")
    parser.add_argument("--speed-only", action="store_true", help="only the speed comparison (no accuracy runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for everything timed: the baseline's intra-op threads and the "
                             "simulator's worker threads (default: torch's default, one per core); 1 compares "
                             "one core against one core, which holds up when other jobs share the machine")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    speed: dict[str, float] = {}
    if not args.skip_speed:
        log(f"speed: {args.speed_rounds} paper-setting rounds, simulator vs sequential plain PyTorch, "
            f"{torch.get_num_threads()} torch thread(s)")
        speed = {**measure_speed(args.data_dir, args.speed_rounds, log), "threads": torch.get_num_threads()}
    reports = {}
    for algorithm in ([] if args.speed_only else args.algorithms.split(",")):
        log(f"accuracy: {algorithm}, {args.rounds} rounds")
        reports[algorithm] = run_algorithm(algorithm, args, log)
    budget = reports["feddst"]["total_upload_bytes"] if "feddst" in reports else None
    rows = []
    for algorithm, rep in reports.items():
        rows.append({
            "algorithm": algorithm,
            "final_accuracy": rep["final_accuracy"],
            "total_upload_bytes": rep["total_upload_bytes"],
            "upload_bytes_per_round": rep["total_upload_bytes"] / args.rounds,
            "accuracy_at_feddst_budget": accuracy_within_budget(rep, budget) if budget else None,
        })
    caps = [int(budget * f) for f in CAP_FRACTIONS] if budget else []
    for row in rows:
        row["accuracy_at_caps"] = {str(cap): accuracy_within_budget(reports[row["algorithm"]], cap) for cap in caps}
    if reports:
        plot_accuracy_vs_upload(reports, Path(args.out) / "accuracy_vs_upload.png")
    result: dict[str, Any] = {"rows": rows, "rounds": args.rounds,
                              "rounds_per_min": speed.get("rounds_per_min"),
                              "baseline_rounds_per_min": speed.get("baseline_rounds_per_min"), **speed}
    if args.json:
        print(json.dumps(result))
        return 0
    if rows:
        print_accuracy_tables(rows, args.rounds, budget, caps)
    if speed:
        print(f"\nsimulator: {speed['rounds_per_min']:.1f} rounds/min; sequential plain-PyTorch baseline: "
              f"{speed['baseline_rounds_per_min']:.1f} rounds/min; speedup {speed['speedup']:.2f}x "
              f"(--kernels dense: {speed['dense_kernels_rounds_per_min']:.1f} rounds/min, "
              f"{speed['dense_kernels_speedup']:.2f}x)")
        print(f"dense training math {speed['gflop_per_round']:.0f} GFLOP/round; matmul peak "
              f"{speed['matmul_gflops']:.0f} GFLOP/s, so the dense FLOP floor is "
              f"{speed['dense_floor_s_per_round']:.2f} s/round; simulator {speed['s_per_round']:.2f} s/round "
              f"= {speed['s_per_round'] / speed['dense_floor_s_per_round']:.2f}x the floor (below 1 = faster "
              "than dense math could be)")
    if reports:
        print(f"plot: {Path(args.out) / 'accuracy_vs_upload.png'}")
    return 0


def print_accuracy_tables(rows: list[dict[str, Any]], rounds: int, budget: int | None, caps: list[int]) -> None:
    fedavg_per_round = next((r["upload_bytes_per_round"] for r in rows if r["algorithm"] == "fedavg"), None)
    print(f"\nPaper MNIST setting, {rounds} rounds"
          + (f"; FedDST total upload budget {budget / 1e6:.1f} MB" if budget else ""))
    print(f"{'algorithm':<12}{'final acc':>10}{'upload MB':>11}{'MB/round':>10}{'x FedAvg':>9}{'acc@budget':>12}")
    for r in rows:
        ratio = r["upload_bytes_per_round"] / fedavg_per_round if fedavg_per_round else float("nan")
        at_budget = r["accuracy_at_feddst_budget"]
        print(f"{r['algorithm']:<12}{r['final_accuracy']:>10.4f}{r['total_upload_bytes'] / 1e6:>11.1f}"
              f"{r['upload_bytes_per_round'] / 1e6:>10.3f}{ratio:>9.3f}"
              f"{(f'{at_budget:.4f}' if at_budget is not None else '-'):>12}")
    if caps:
        print("\naccuracy at equal cumulative upload caps (last evaluated round within the cap)")
        print(f"{'algorithm':<12}" + "".join(f"{cap / 1e6:>10.0f}MB" for cap in caps))
        for r in rows:
            cells = [r["accuracy_at_caps"][str(cap)] for cap in caps]
            print(f"{r['algorithm']:<12}" + "".join(f"{(f'{c:.4f}' if c is not None else '-'):>12}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())
