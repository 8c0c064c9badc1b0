"""``SimulationConfig``: every ``feddst simulate`` flag, validated once."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from feddst_core.choices import (
    AGGREGATIONS,
    ALGORITHMS,
    DISTRIBUTIONS,
    KERNEL_CHOICES,
    MASK_INITS,
    PARTITIONS,
    UPLOAD_FORMATS,
)
from feddst_core.sparse import SparseThreshold, parse_thresholds_json

DATASET_MODELS = {"digits": "digits_cnn", "mnist": "mnist_cnn", "cifar10": "cifar10_cnn", "npz": None}

DIGITS_CLIENTS = 30
"""Clients when --clients is not given on the built-in digits: its 1437 training images hold 139-146 per
class, so the paper's 400 clients x 2 classes x 20 images (1600 per class) cannot be drawn from it; 30 clients
x 2 classes x 20 images takes 120 per class."""


def default_clients(dataset: str) -> int:
    """The number of clients a run uses when none is given: the paper's 400, or what the dataset can hold."""
    return DIGITS_CLIENTS if dataset == "digits" else SimulationConfig.clients


@dataclass(frozen=True)
class SimulationConfig:
    """Defaults are the paper's MNIST setting (400 clients x 2 classes x 20 images, 20 per round)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    partition: str = "pathological"
    clients: int = 400
    classes_per_client: int = 2
    samples_per_class: int = 20
    beta: float = 0.1  # Dirichlet concentration (dirichlet partition only)
    clients_per_round: int = 20
    rounds: int = 200
    local_epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.001
    algorithm: str = "feddst"
    sparsity: float = 0.8
    readjust_ratio: float = 0.01  # alpha
    readjust_every: int = 10  # R_adj
    readjust_until: int | None = None  # T_end; None = rounds // 2
    prox_mu: float = 0.0
    server_momentum: float = 0.9  # used by fedavgm only
    seed: int = 0
    eval_every: int = 10  # evaluate every N rounds (and always after the last one)
    out: str = "runs/simulate"
    distribution: str = "erk"
    mask_init: str = "magnitude"
    min_votes: int = 1
    model: str | None = None  # default: the paper's model for the dataset
    client_batching: bool = True  # train a round's clients together (grouped convs); off = one by one
    kernels: str = "auto"  # auto | sparse | dense (masked dense only, clients batched); as devices
    kernel_thresholds: str | None = None  # JSON auto-policy table (bench --write-thresholds); None = built in
    aggregation: str = "mean"  # mean (sample-weighted) | trimmed_mean | median over each weight's holders
    trim_fraction: float = 0.1  # robust rules: fraction of a round's updates assumed hostile
    clip_update_norm: float | None = None  # max ||w_client - w_global|| / ||w_global|| per layer; None = off
    upload_format: str = "float32"  # update value format: float32 (lossless) | float16 | bfloat16 | int8

    def __post_init__(self) -> None:
        checks = [
            (self.dataset in DATASET_MODELS, f"unknown dataset {self.dataset!r}; choose one of "
             + ", ".join(DATASET_MODELS)),
            (self.partition in PARTITIONS, f"unknown partition {self.partition!r}; choose one of "
             + ", ".join(PARTITIONS)),
            (self.algorithm in ALGORITHMS, f"unknown algorithm {self.algorithm!r}; choose one of "
             + ", ".join(ALGORITHMS)),
            (self.distribution in DISTRIBUTIONS, f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, "
             f"got {self.distribution!r}"),
            (self.mask_init in MASK_INITS, f"--mask-init must be magnitude or random, got "
             f"{self.mask_init!r}"),
            (self.min_votes >= 1, f"--min-votes must be >= 1, got {self.min_votes}"),
            (0.0 <= self.sparsity < 1.0, f"--sparsity must be in [0, 1), got {self.sparsity}"),
            (self.clients >= 1, f"--clients must be >= 1, got {self.clients}"),
            (1 <= self.clients_per_round <= self.clients,
             f"--clients-per-round ({self.clients_per_round}) must be between 1 and --clients ({self.clients})"),
            (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
            (self.local_epochs >= 0, f"--local-epochs must be >= 0, got {self.local_epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0.0 <= self.readjust_ratio <= 1.0, f"--readjust-ratio must be in [0, 1], got {self.readjust_ratio}"),
            (self.readjust_every >= 1, f"--readjust-every must be >= 1, got {self.readjust_every}"),
            (self.prox_mu >= 0, f"--prox-mu must be >= 0, got {self.prox_mu}"),
            (0.0 <= self.server_momentum < 1.0, f"--server-momentum must be in [0, 1), got {self.server_momentum}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.beta > 0, f"--beta must be > 0, got {self.beta}"),
            (self.kernels in KERNEL_CHOICES, f"--kernels must be one of {', '.join(KERNEL_CHOICES)}"),
            (self.aggregation in AGGREGATIONS, f"--aggregation must be one of {', '.join(AGGREGATIONS)}, "
             f"got {self.aggregation!r}"),
            (0.0 <= self.trim_fraction < 0.5, f"--trim-fraction must be in [0, 0.5), got {self.trim_fraction}"),
            (self.upload_format in UPLOAD_FORMATS, f"--upload-format must be one of "
             f"{', '.join(UPLOAD_FORMATS)}, got {self.upload_format!r}"),
            (self.clip_update_norm is None or 0.0 < self.clip_update_norm < float("inf"),
             f"--clip-update-norm must be a finite number > 0, got {self.clip_update_norm}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"--dataset {self.dataset} needs --data-dir")
        self.kernel_threshold_table  # noqa: B018 - reads and validates the file, once

    @functools.cached_property
    def kernel_threshold_table(self) -> dict[str, tuple[SparseThreshold, ...]] | None:
        """The ``--kernel-thresholds`` table for ``--kernels auto`` (None: the built-in one)."""
        return None if self.kernel_thresholds is None else read_kernel_thresholds(self.kernel_thresholds)

    @property
    def t_end(self) -> int:
        return self.readjust_until if self.readjust_until is not None else self.rounds // 2

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["readjust_until"] = self.t_end
        return d


def read_kernel_thresholds(path: str | Path) -> dict[str, tuple[SparseThreshold, ...]]:
    """The auto policy's table from a JSON file written by ``python bench/sparse_kernels.py --calibrate
    --write-thresholds FILE``; ValueError naming the file and the problem."""
    p = Path(path)
    hint = "make it with `python bench/sparse_kernels.py --calibrate --write-thresholds FILE`"
    try:
        return parse_thresholds_json(p.read_text(encoding="utf-8"))[0]
    except (OSError, UnicodeDecodeError) as exc:
        why = "does not exist" if not p.exists() else "is not a file" if not p.is_file() else f"cannot be read ({exc})"
        raise ValueError(f"--kernel-thresholds: {p} {why}; {hint}") from exc
    except ValueError as exc:
        raise ValueError(f"--kernel-thresholds: {p}: {exc}; {hint}") from exc
