"""``feddst simulate``: the in-process simulator, for planning field trials."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from feddst_core.choices import (
    AggregationName,
    AlgorithmName,
    DatasetName,
    KernelName,
    PartitionName,
    UploadFormatName,
)

PAPER = "Paper setting"
DATA = "Data and partition"
ALGO = "Algorithm"
RUN = "Run"


def simulate(
    dataset: DatasetName = typer.Option("digits", help="digits is built in (no download); mnist and "
                                        "cifar10 read --data-dir; npz reads an .npz file.", rich_help_panel=DATA),
    data_dir: Path | None = typer.Option(None, help="Directory of standard MNIST IDX files (gzipped or raw), "
                                         "CIFAR-10 python batches, or an .npz file.", rich_help_panel=DATA),
    partition: PartitionName = typer.Option("pathological", help="How data is split across "
                                            "clients.", rich_help_panel=DATA),
    clients: int | None = typer.Option(None, help="Number of clients. Default: 400 (the paper's setting); 30 on "
                                       "digits, whose ~140 images per class cannot fill 400 clients x 2 classes "
                                       "x 20 images.", rich_help_panel=DATA),
    classes_per_client: int = typer.Option(2, help="pathological: classes per client.", rich_help_panel=DATA),
    samples_per_class: int = typer.Option(20, help="pathological: train images per class per client.",
                                          rich_help_panel=DATA),
    beta: float = typer.Option(0.1, help="dirichlet: concentration (smaller = more skewed).",
                               rich_help_panel=DATA),
    clients_per_round: int = typer.Option(20, help="Clients drawn (without replacement) each round.",
                                          rich_help_panel=PAPER),
    rounds: int = typer.Option(200, help="Server rounds.", rich_help_panel=PAPER),
    local_epochs: int = typer.Option(10, help="Local epochs per round.", rich_help_panel=PAPER),
    batch_size: int = typer.Option(32, help="Local mini-batch size.", rich_help_panel=PAPER),
    lr: float = typer.Option(0.01, help="Client SGD learning rate.", rich_help_panel=PAPER),
    momentum: float = typer.Option(0.9, help="Client SGD momentum.", rich_help_panel=PAPER),
    weight_decay: float = typer.Option(0.001, help="Client L2 weight decay.", rich_help_panel=PAPER),
    algorithm: AlgorithmName = typer.Option("feddst", help="feddst, or a baseline.",
                                            rich_help_panel=ALGO),
    sparsity: float = typer.Option(0.8, help="S: fraction of weights that are zero (sparse algorithms).",
                                   rich_help_panel=ALGO),
    readjust_ratio: float = typer.Option(0.01, "--readjust-ratio", help="ALPHA: fraction of active weights "
                                         "readjusted at round 1 (cosine decay to 0 at T_END).",
                                         rich_help_panel=ALGO),
    readjust_every: int = typer.Option(10, "--readjust-every", help="R_ADJ: rounds between mask readjustments.",
                                       rich_help_panel=ALGO),
    readjust_until: int | None = typer.Option(None, "--readjust-until", help="T_END: last readjustment round "
                                              "[default: rounds / 2].", rich_help_panel=ALGO),
    distribution: str = typer.Option("erk", help="Layer density budgets: uniform, er or erk "
                                     "(Erdős–Rényi-Kernel).", rich_help_panel=ALGO),
    mask_init: str = typer.Option("magnitude", help="Initial mask: magnitude (largest initial weights) or "
                                  "random.", rich_help_panel=ALGO),
    min_votes: int = typer.Option(1, help="Server keeps a weight only if at least this many of the round's "
                                  "clients hold it.", rich_help_panel=ALGO),
    prox_mu: float = typer.Option(0.0, help="FedProx mu (fedprox; composes with feddst and randommask).",
                                  rich_help_panel=ALGO),
    server_momentum: float = typer.Option(0.9, help="fedavgm: server momentum beta.", rich_help_panel=ALGO),
    aggregation: AggregationName = typer.Option("mean", help="Server rule over each weight's "
                                                "holders: mean (sample-weighted), or trimmed_mean / median "
                                                "(unweighted; robust to a minority of poisoned updates).",
                                                rich_help_panel=ALGO),
    trim_fraction: float = typer.Option(0.1, help="trimmed_mean / median: fraction of a round's K clients "
                                        "assumed hostile, f = floor(fraction * K) in [0, 0.5): trimmed_mean drops f "
                                        "values at each end of every weight's holders; a weight needs 2f + 1 "
                                        "holders to survive.", rich_help_panel=ALGO),
    clip_update_norm: float | None = typer.Option(None, help="Clip each client's update per layer to this "
                                                  "ratio ||w_client - w_global|| / ||w_global|| (over the "
                                                  "positions it holds) [default: no clipping].",
                                                  rich_help_panel=ALGO),
    upload_format: UploadFormatName = typer.Option("float32", help="Value format of every uploaded "
                                               "update: float32 (lossless), float16, bfloat16 (2 bytes a value) "
                                               "or int8 (1 byte and a per-tensor scale). The server aggregates the "
                                               "decoded values, so the accuracy cost is measured.",
                                               rich_help_panel=ALGO),
    seed: int = typer.Option(0, help="Seed: same seed, same report.", rich_help_panel=RUN),
    eval_every: int = typer.Option(10, help="Evaluate every N rounds (and after the last).",
                                   rich_help_panel=RUN),
    out: Path = typer.Option(Path("runs/simulate"), help="Output directory for report.json, metrics.csv, "
                             "accuracy_vs_upload.png and the final global model model.safetensors (export it "
                             "with `feddst export onnx --from`).", rich_help_panel=RUN),
    kernels: KernelName = typer.Option("auto", help="Local training kernels: auto (the default, "
                                       "as devices run: CPU sparse kernels for the layers where they are "
                                       "faster; rounds where every layer stays dense batch the clients), "
                                       "sparse (every masked layer sparse), or dense (masked dense, clients "
                                       "batched through grouped convolutions).", rich_help_panel=RUN),
    kernel_thresholds: Path | None = typer.Option(None, help="A device's measured table for --kernels auto "
                                                  "(JSON: per layer kind, the densities and sizes at which a "
                                                  "layer trains sparse), e.g. to time rounds as that device "
                                                  "would pick its kernels. Make it on the device with `python "
                                                  "bench/sparse_kernels.py --calibrate --write-thresholds FILE`. "
                                                  "Unused with --kernels sparse or dense. Default: the built-in "
                                                  "table.", rich_help_panel=RUN),
    client_batching: bool = typer.Option(True, help="Train a round's clients together (faster on a server); "
                                         "--no-client-batching trains them one by one, as devices do.",
                                         rich_help_panel=RUN),
) -> None:
    """Simulate a federated run in-process (no network) and write report.json, metrics.csv, a plot and
    the final global model (model.safetensors).

    Defaults reproduce the paper's MNIST setting (with --dataset mnist --data-dir DIR): 400 clients x 2
    classes x 20 images, 20 clients per round, 10 local epochs, FedDST at 80% sparsity with ERK layer
    budgets. With no flags it runs the same setting on the built-in digits, with 30 clients.
    """
    from simulator.config import SimulationConfig, default_clients

    try:
        config = SimulationConfig(
            dataset=dataset, data_dir=str(data_dir) if data_dir else None, partition=partition,
            clients=clients if clients is not None else default_clients(dataset),
            classes_per_client=classes_per_client, samples_per_class=samples_per_class,
            beta=beta, clients_per_round=clients_per_round, rounds=rounds, local_epochs=local_epochs,
            batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
            algorithm=algorithm, sparsity=sparsity, readjust_ratio=readjust_ratio,
            readjust_every=readjust_every, readjust_until=readjust_until, prox_mu=prox_mu,
            server_momentum=server_momentum, seed=seed, eval_every=eval_every, out=str(out),
            client_batching=client_batching, kernels=kernels, distribution=distribution,
            mask_init=mask_init, min_votes=min_votes, aggregation=aggregation, trim_fraction=trim_fraction,
            clip_update_norm=clip_update_norm, upload_format=upload_format,
            kernel_thresholds=str(kernel_thresholds) if kernel_thresholds else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if config.kernel_thresholds is not None and config.kernels != "auto":
        typer.echo(f"note: --kernel-thresholds {config.kernel_thresholds} is unused with --kernels "
                   f"{config.kernels} (it only applies to --kernels auto)", err=True)
    run_simulation(config)


def run_simulation(config: object) -> dict:
    """Run with a progress bar, write the outputs, print a summary; returns the report."""
    from tqdm import tqdm

    from datasources import DataSourceError
    from feddst_core.partition import PartitionError
    from simulator.engine import Simulation
    from simulator.report import build_report, write_model, write_report

    try:
        sim = Simulation(config)  # type: ignore[arg-type]
    except (DataSourceError, PartitionError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    cfg = sim.config
    records = []
    started = time.perf_counter()
    bar = tqdm(sim.run_rounds(), total=cfg.rounds, desc=f"{cfg.algorithm} rounds", unit="round")
    for record in bar:
        records.append(record)
        post = {"up_MB": f"{record.upload_bytes / 1e6:.1f}", "density": f"{record.density:.3f}"}
        if record.accuracy is not None:
            post["acc"] = f"{record.accuracy:.4f}"
        bar.set_postfix(post)
    report = build_report(cfg.algorithm, cfg.to_json(), records)
    path = write_report(cfg.out, report)
    final = report["rounds"][-1] if report["rounds"] else {}
    model_path = write_model(cfg.out, sim.state.params, sim.state.masks, {
        "run_id": Path(cfg.out).name, "round": str(sim.server_round), "model": sim.spec.name,
        "dataset": cfg.dataset, "algorithm": cfg.algorithm,
        "accuracy": "" if final.get("accuracy") is None else repr(float(final["accuracy"]))})
    elapsed = time.perf_counter() - started
    typer.echo(f"{cfg.algorithm}: final accuracy {report['final_accuracy']:.4f} after {cfg.rounds} rounds; "
               f"uploaded {report['total_upload_bytes'] / 1e6:.2f} MB, downloaded "
               f"{report['total_download_bytes'] / 1e6:.2f} MB; {elapsed:.1f} s")
    typer.echo(f"wrote {path}, {path.parent / 'metrics.csv'}, {path.parent / 'accuracy_vs_upload.png'}, {model_path}")
    return report
