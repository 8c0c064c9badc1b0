"""Field-trial benchmark: FedDST vs FedAvg live on lte-rural agents, plan vs measured, value formats.

    python bench/field_trial.py [--data-dir ../shared/data/mnist] [--agents 10] [--rounds 10] [--json]

1. Live (`feddst trial run` machinery, private mosquitto or embedded broker, agent shaper, lte-rural):
   wall-clock and uploaded bytes to the target accuracy (default FedAvg's final accuracy minus 1 point);
   ``feddst_wall_clock_ratio`` = FedDST's seconds to target / FedAvg's (target <= 0.5).
   ``plan_vs_measured_error``: |planned - measured| / measured mean round seconds, averaged over
   the two algorithms (target <= 0.2).
2. Value formats in the simulator (paper MNIST, ``--format-rounds``, default 200; ``--format-rounds 0`` skips):
   final accuracy and upload of float32 vs float16 for FedDST (target: within 0.3 points at <= 0.55x upload).
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


def run_formats(args: argparse.Namespace) -> dict:
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    out = {}
    for fmt in ("float32", "float16"):
        sim = Simulation(SimulationConfig(dataset="mnist", data_dir=args.data_dir, rounds=args.format_rounds,
                                          eval_every=args.format_rounds, upload_format=fmt))
        last = list(sim.run_rounds())[-1]
        out[fmt] = {"final_accuracy": last.accuracy, "upload_bytes": last.upload_bytes}
    out["float16_accuracy_drop_points"] = 100 * (out["float32"]["final_accuracy"] - out["float16"]["final_accuracy"])
    out["float16_upload_ratio"] = out["float16"]["upload_bytes"] / out["float32"]["upload_bytes"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist"))
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--format-rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="Keep the live trial's outputs here.")
    parser.add_argument("--broker", choices=("embedded", "mosquitto"),
                        default="mosquitto" if find_mosquitto() else "embedded",
                        help="Live part's broker: a private mosquitto (default when installed; gives "
                        "wire_vs_broker_ratio) or the embedded one.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="feddst-bench-trial-"))
    result: dict = {"live": run_live(args, out), "broker": args.broker}
    result["wire_vs_broker_ratio"] = result["live"]["wire_vs_broker_ratio"]
    result["feddst_wall_clock_ratio"] = result["live"]["feddst_wall_clock_ratio"]
    result["plan_vs_measured_error"] = result["live"]["plan_vs_measured_error"]
    if args.format_rounds:
        result["formats_feddst"] = run_formats(args)
    result["bench_seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(result))
        return
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
    if "formats_feddst" in result:
        print(f"formats (FedDST): {json.dumps(result['formats_feddst'])}")


if __name__ == "__main__":
    main()
