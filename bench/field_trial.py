"""Field-trial benchmark: FedDST vs FedAvg live on lte-rural agents, plan vs measured, value formats.

    python bench/field_trial.py [--data-dir ../shared/data/mnist] [--agents 10] [--rounds 10] [--json]

1. Live (`feddst trial run` machinery, private mosquitto or embedded broker, agent shaper, lte-rural):
   wall-clock and uploaded bytes to the target accuracy (default FedAvg's final accuracy minus 1 point);
   ``feddst_wall_clock_ratio`` = FedDST's seconds to target / FedAvg's (target <= 0.5).
   ``plan_vs_measured_error``: |planned - measured| / measured mean round seconds, averaged over
   the two algorithms (target <= 0.2).
2. Value formats in the simulator (paper MNIST, ``--format-rounds``, default 200; ``--format-rounds 0`` skips):
   final accuracy, upload and download of float32 vs float16 for FedDST and FedAvg (``--format-algorithms``;
   target: float16 FedDST within 0.3 points of float32 FedDST at <= 0.55x upload), the simulations side by side
   in ``--format-workers`` processes; ``--skip-live`` runs only this part.
3. ``wire_vs_broker_ratio``: with ``--broker mosquitto`` (the default when mosquitto is installed) the live
   part runs on a private mosquitto (``field_trial.private_mosquitto``: free port, ``sys_interval 1``). After
   the runs the agents stop (clean disconnects, final counters files), then the in-process coordinator; the
   bytes every client wrote (agents' link-shaper counters + the coordinator's ``WireCountingClient`` + the
   ``$SYS`` reader's own) over ``$SYS/broker/bytes/received``, and the bytes they read over ``/sent``;
   ``wire_vs_broker_ratio`` is the total of both directions over the broker's total. null with
   ``--broker embedded`` (the embedded broker publishes no byte counters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from field_trial.private_mosquitto import BrokerByteCounters, find_mosquitto  # noqa: E402
from field_trial.spec import parse_spec  # noqa: E402

if TYPE_CHECKING:
    from field_trial.live import TrialStack


def live_spec(args: argparse.Namespace) -> dict:
    return {"trial": {"name": "bench lte-rural", "algorithms": ["feddst", "fedavg"], "rounds": args.rounds,
                      "clients_per_round": args.agents, "seed": 0, "round_timeout_s": 600.0},
            "data": {"dataset": "mnist", "data_dir": args.data_dir, "classes_per_client": 2, "samples_per_class": 20},
            "train": {"local_epochs": args.local_epochs, "batch_size": 32, "lr": 0.01, "readjust_ratio": 0.05,
                      "readjust_every": 2},
            "devices": [{"count": args.agents, "profile": "lte-rural"}]}


def run_live(args: argparse.Namespace, out: Path) -> dict:
    from feddst_cli.trial_command import plan_rounds
    from field_trial.live import TrialStack
    from field_trial.trial_report import write_trial

    spec = parse_spec(live_spec(args), "bench")
    predicted = {a: [r.predicted_s for r in plan_rounds(spec, a, os.cpu_count() or 1)] for a in spec.trial.algorithms}
    stack = TrialStack(out, spec)
    reports = {}
    counters: BrokerByteCounters | None = None
    wire: dict = {"wire_vs_broker_ratio": None}
    try:
        if args.broker == "mosquitto":
            url = stack.start_private_mosquitto(sys_interval_s=1)
            assert stack.mosquitto is not None
            counters = BrokerByteCounters(stack.mosquitto.port)
        else:
            url = stack.start_broker()
        stack.start_coordinator(url)
        stack.start_agents(url)
        for algorithm in spec.trial.algorithms:
            report = stack.run_algorithm(algorithm, lambda info: print(
                f"[{info['algorithm']}] round {info['round']} acc {info['accuracy']} {info['elapsed_s']:.0f}s",
                file=sys.stderr))
            report["trial"]["predicted_round_s"] = predicted[algorithm]
            reports[algorithm] = report
        if counters is not None:
            try:
                wire = wire_vs_broker(stack, counters)
            except TimeoutError as exc:  # keep the runs' figures; say why the ratio is missing
                wire["wire_vs_broker_error"] = str(exc)
    finally:
        if counters is not None:
            counters.close()
        stack.shutdown()
    trial = write_trial(out, spec, reports)
    runs = {r["algorithm"]: r for r in trial["runs"]}
    fd, fa = runs["feddst"], runs["fedavg"]
    ratio = (fd["seconds_to_target"] / fa["seconds_to_target"]
             if fd["seconds_to_target"] is not None and fa["seconds_to_target"] else None)
    errors = [abs(r["predicted_mean_round_s"] - r["mean_round_s"]) / r["mean_round_s"] for r in runs.values()]
    return {**wire, "target_accuracy": fd["target_accuracy"], "runs": trial["runs"], "feddst_wall_clock_ratio": ratio,
            "plan_vs_measured_error": sum(errors) / len(errors),
            "plan_vs_measured_error_by_algorithm": dict(zip(runs, errors, strict=True))}


def wire_vs_broker(stack: TrialStack, counters: BrokerByteCounters) -> dict:
    """Stop the agents and the coordinator, then compare every client's socket bytes with ``$SYS``."""
    stack.stop_agents()
    agents = stack.wire_counters()
    coordinator, stack.coordinator = stack.coordinator, None
    assert coordinator is not None
    coordinator.close()
    broker = counters.fresh()
    sent = sum(d["up"] for d in agents.values()) + coordinator.link.wire_sent_bytes + counters.wire_sent_bytes
    received = (sum(d["down"] for d in agents.values()) + coordinator.link.wire_received_bytes
                + counters.wire_received_bytes)
    return {"wire_vs_broker_ratio": (sent + received) / (broker["received"] + broker["sent"]),
            "clients_sent_bytes": sent, "broker_received_bytes": broker["received"],
            "clients_received_bytes": received, "broker_sent_bytes": broker["sent"]}


def _format_run(algorithm: str, fmt: str, data_dir: str, rounds: int) -> dict:
    """One simulation of the paper MNIST setting (a worker process, one torch thread): final accuracy, upload."""
    import torch

    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    torch.set_num_threads(1)
    started = time.perf_counter()
    sim = Simulation(SimulationConfig(dataset="mnist", data_dir=data_dir, rounds=rounds, algorithm=algorithm,
                                      eval_every=rounds, upload_format=fmt))
    last = list(sim.run_rounds())[-1]
    return {"final_accuracy": last.accuracy, "upload_bytes": last.upload_bytes,
            "download_bytes": last.download_bytes, "seconds": time.perf_counter() - started}


def run_formats(args: argparse.Namespace) -> dict[str, dict]:
    """``formats_<algorithm>`` for each of ``--format-algorithms``: float32 vs float16, run side by side in
    ``--format-workers`` processes; prints one progress line per finished simulation (to stderr)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    jobs = [(a, f) for a in args.format_algorithms.split(",") for f in ("float32", "float16")]
    results: dict[tuple[str, str], dict] = {}
    with ProcessPoolExecutor(max_workers=args.format_workers) as pool:
        futures = {pool.submit(_format_run, a, f, args.data_dir, args.format_rounds): (a, f) for a, f in jobs}
        for done in as_completed(futures):
            results[futures[done]] = r = done.result()
            print(f"formats: {futures[done][0]} {futures[done][1]} done: acc {r['final_accuracy']:.4f}, "
                  f"up {r['upload_bytes'] / 1e6:.2f} MB, {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    out = {}
    for algorithm in dict.fromkeys(a for a, _ in jobs):
        f32, f16 = results[(algorithm, "float32")], results[(algorithm, "float16")]
        out[f"formats_{algorithm}"] = {
            "float32": f32, "float16": f16,
            "float16_accuracy_drop_points": 100 * (f32["final_accuracy"] - f16["final_accuracy"]),
            "float16_upload_ratio": f16["upload_bytes"] / f32["upload_bytes"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist"))
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--format-rounds", type=int, default=200,
                        help="Rounds of each value-format simulation (0 skips part 2).")
    parser.add_argument("--format-algorithms", default="feddst,fedavg",
                        help="Comma-separated algorithms whose float32 vs float16 uploads part 2 compares.")
    parser.add_argument("--format-workers", type=int, default=4,
                        help="Worker processes for part 2's simulations (one torch thread each).")
    parser.add_argument("--skip-live", action="store_true", help="Run only part 2 (value formats).")
    parser.add_argument("--out", type=Path, default=None, help="Keep the live trial's outputs here.")
    parser.add_argument("--broker", choices=("embedded", "mosquitto"),
                        default="mosquitto" if find_mosquitto() else "embedded",
                        help="Live part's broker: a private mosquitto (default when installed; gives "
                        "wire_vs_broker_ratio) or the embedded one.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="feddst-bench-trial-"))
    result: dict = {"broker": args.broker}
    if not args.skip_live:
        result["live"] = run_live(args, out)
        for key in ("wire_vs_broker_ratio", "feddst_wall_clock_ratio", "plan_vs_measured_error"):
            result[key] = result["live"][key]
    if args.format_rounds:
        result.update(run_formats(args))
    result["bench_seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(result))
        return
    if "live" in result:
        _print_live(result)
    for key in sorted(k for k in result if k.startswith("formats_")):
        print(f"{key}: {json.dumps(result[key])}")


def _print_live(result: dict) -> None:
    for r in result["live"]["runs"]:
        print(f"{r['algorithm']}: acc {r['final_accuracy']:.4f}, up {r['total_upload_bytes'] / 1e6:.2f} MB payload / "
              f"{r['wire_upload_bytes'] / 1e6:.2f} MB wire, {r['wall_clock_s']:.0f} s, to target "
              f"{r['target_accuracy']:.4f}: {r['seconds_to_target']} s, {r['upload_bytes_to_target']} B; mean round "
              f"{r['mean_round_s']:.1f} s (planned {r['predicted_mean_round_s']:.1f} s)")
    print(f"feddst_wall_clock_ratio {result['feddst_wall_clock_ratio']}  plan_vs_measured_error "
          f"{result['plan_vs_measured_error']:.3f}  wire_vs_broker_ratio {result['wire_vs_broker_ratio']}")
    if result["wire_vs_broker_ratio"] is not None:
        live = result["live"]
        print(f"clients sent {live['clients_sent_bytes']} B / broker received {live['broker_received_bytes']} B; "
              f"clients received {live['clients_received_bytes']} B / broker sent {live['broker_sent_bytes']} B")

if __name__ == "__main__":
    main()
