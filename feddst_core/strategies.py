"""Strategies: plain policy objects, Flower-style. Transport lives elsewhere.

``configure_round`` says which clients train and how; ``aggregate_round`` folds their replies into
the next global model. One class covers the paper's family because its members compose:

===========  ========  =====  ===============  ======
algorithm    sparsity  alpha  server momentum  prox mu
===========  ========  =====  ===============  ======
fedavg       0         0      0                0
fedavgm      0         0      beta             0
fedprox      0         0      0                mu
randommask   S         0      0                (mu)
feddst       S         alpha  0                (mu)
===========  ========  =====  ===============  ======
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from feddst_core.aggregation import MaskedMeanAccumulator, prune_to_budgets
from feddst_core.choices import ALGORITHMS
from feddst_core.masks import apply_masks, full_masks, init_masks, layer_budgets
from feddst_core.models import ModelSpec, Params, init_params
from feddst_core.readjust import cosine_readjust_fraction, is_readjust_round
from feddst_core.robust_aggregation import AGGREGATIONS, HolderStackAccumulator, clip_update


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side knobs (paper defaults)."""

    algorithm: str = "feddst"
    sparsity: float = 0.8  # S: fraction of masked weights that are zero
    distribution: str = "erk"  # layer budgets: uniform | er | erk
    mask_init: str = "magnitude"  # magnitude | random
    readjust_ratio: float = 0.01  # alpha: fraction of active weights readjusted at round 1
    readjust_every: int = 10  # R_adj: rounds between readjustments
    readjust_until: int = 100  # T_end: no readjustment after this round (alpha_t = 0)
    prox_mu: float = 0.0  # FedProx coefficient sent to clients
    server_momentum: float = 0.0  # FedAvgM beta (0 = plain averaging)
    server_lr: float = 1.0  # FedAvgM server learning rate
    min_votes: int = 1  # a weight survives aggregation only if held by this many clients
    clients_per_round: int = 20
    aggregation: str = "mean"  # mean (sample-weighted, streaming) | trimmed_mean | median (over holders)
    trim_fraction: float = 0.1  # robust rules: fraction of a round's updates assumed hostile
    clip_update_norm: float | None = None  # max ||w_client - w_global|| / ||w_global|| per layer; None = off

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0.0 <= self.readjust_ratio <= 1.0:
            raise ValueError(f"readjust ratio must be in [0, 1], got {self.readjust_ratio}")
        if self.prox_mu < 0 or not 0.0 <= self.server_momentum < 1.0:
            raise ValueError("prox mu must be >= 0 and server momentum in [0, 1)")
        if self.clients_per_round < 1:
            raise ValueError("clients per round must be >= 1")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.clip_update_norm is not None and not self.clip_update_norm > 0:
            raise ValueError(f"clip update norm must be > 0 (or None for no clipping), got {self.clip_update_norm}")


def resolve_algorithm(config: StrategyConfig) -> StrategyConfig:
    """Apply the algorithm's meaning to the knobs (e.g. FedAvg is dense, RandomMask never readjusts)."""
    a = config.algorithm
    if a in ("fedavg", "fedavgm", "fedprox"):
        config = replace(config, sparsity=0.0, readjust_ratio=0.0)
    if a != "fedavgm":
        config = replace(config, server_momentum=0.0)
    if a == "randommask":
        config = replace(config, readjust_ratio=0.0)
    return config


@dataclass
class ServerState:
    """The global model between rounds."""

    params: Params  # one client's tensors; masked-out weights are exactly 0
    masks: dict[str, torch.Tensor]  # bool, masked names only (all True for dense algorithms)
    mask_version: int = 0  # incremented whenever the global mask changes
    momentum: Params | None = None  # FedAvgM server buffer


@dataclass(frozen=True)
class RoundPlan:
    """What one round asks of its clients."""

    server_round: int
    clients: list[int]
    readjust_fraction: float  # alpha_t, 0 when this round does not readjust
    prox_mu: float


@dataclass(frozen=True)
class ClientReply:
    client_id: int
    params: Mapping[str, torch.Tensor]
    masks: Mapping[str, torch.Tensor]
    num_samples: int
    train_loss: float = 0.0


@dataclass
class RoundAggregation:
    """Streaming aggregation of one round: ``add`` replies as they arrive, then ``finish``."""

    strategy: FedStrategy
    state: ServerState
    accumulator: MaskedMeanAccumulator | HolderStackAccumulator
    losses: list[tuple[float, int]] = field(default_factory=list)
    clipped_updates: int = 0  # replies with at least one layer clipped (``clip_update_norm``)

    def add(self, reply: ClientReply) -> None:
        """Fold in one reply (its values finite, its tensors the model's), clipped first if configured."""
        params = reply.params
        ratio = self.strategy.config.clip_update_norm
        if ratio is not None:
            params, scales = clip_update(params, reply.masks, self.state.params, ratio)
            self.clipped_updates += int(any(s < 1.0 for s in scales.values()))
        self.accumulator.add(params, reply.masks, float(reply.num_samples))
        self.losses.append((reply.train_loss, reply.num_samples))

    def finish(self) -> tuple[ServerState | None, dict[str, float]]:
        if self.accumulator.num_clients == 0:
            return None, {"clients": 0.0}
        return self.strategy.finish_aggregation(self)


class FedStrategy:
    """FedDST and its baselines behind one interface."""

    def __init__(self, spec: ModelSpec, config: StrategyConfig):
        self.spec = spec
        self.config = resolve_algorithm(config)
        shapes = spec.parameter_shapes()
        self.masked_shapes = {n: shapes[n] for n in spec.masked_names()}
        self.budgets = layer_budgets(self.masked_shapes, self.config.sparsity, self.config.distribution)

    @property
    def name(self) -> str:
        return self.config.algorithm

    def initialize(self, seed: int) -> ServerState:
        """Seeded initial global model with its ERK (or uniform/ER) mask."""
        gen = torch.Generator().manual_seed(seed)
        params = init_params(self.spec, gen)
        if self.config.sparsity == 0.0:
            masks = full_masks(self.masked_shapes)
        else:
            masks = init_masks(params, self.budgets, self.config.mask_init, gen)
        apply_masks(params, masks)
        return ServerState(params=params, masks=masks)

    def readjust_fraction(self, server_round: int) -> float:
        c = self.config
        if c.readjust_ratio <= 0 or not is_readjust_round(server_round, c.readjust_every, c.readjust_until):
            return 0.0
        return cosine_readjust_fraction(server_round, c.readjust_ratio, c.readjust_until)

    def configure_round(self, server_round: int, state: ServerState, clients: Sequence[int],
                        rng: np.random.Generator, clients_per_round: int | None = None) -> RoundPlan:
        """Draw ``clients_per_round`` distinct clients (without replacement) and the round's alpha_t.

        ``clients_per_round`` overrides the config's for this round (the coordinator passes
        ``min(config, available)`` when its ``min_devices`` allows a smaller round); the draw is the
        same as the simulator's whenever it equals the config's."""
        k = self.config.clients_per_round if clients_per_round is None else clients_per_round
        if k > len(clients):
            raise ValueError(f"clients per round ({k}) exceeds the available clients ({len(clients)})")
        chosen = sorted(int(c) for c in rng.choice(np.asarray(clients), size=k, replace=False))
        return RoundPlan(server_round, chosen, self.readjust_fraction(server_round), self.config.prox_mu)

    def begin_aggregation(self, state: ServerState) -> RoundAggregation:
        """Streaming for ``mean`` (memory O(model)); robust rules keep the round's replies (O(K x model))."""
        c = self.config
        acc: MaskedMeanAccumulator | HolderStackAccumulator
        if c.aggregation == "mean":
            acc = MaskedMeanAccumulator(self.spec.parameter_shapes(), self.spec.masked_names())
        else:
            acc = HolderStackAccumulator(self.spec.parameter_shapes(), self.spec.masked_names(), c.aggregation,
                                         c.trim_fraction)
        return RoundAggregation(self, state, acc)

    def aggregate_round(self, server_round: int, state: ServerState, replies: Sequence[ClientReply],
                        failures: Sequence[object] = ()) -> tuple[ServerState | None, dict[str, float]]:
        """All replies at once (the simulator); the coordinator streams through ``begin_aggregation``."""
        agg = self.begin_aggregation(state)
        for reply in replies:
            agg.add(reply)
        new_state, metrics = agg.finish()
        metrics["failures"] = float(len(failures))
        return new_state, metrics

    def finish_aggregation(self, agg: RoundAggregation) -> tuple[ServerState, dict[str, float]]:
        c, old = self.config, agg.state
        result = agg.accumulator.result(c.min_votes)
        params = result.params
        masks = prune_to_budgets(params, result.candidates, self.budgets)
        momentum = old.momentum
        if c.server_momentum > 0:
            # FedAvgM: pseudo-gradient = old - mean; buffer = beta * buffer + pseudo-gradient.
            pseudo = {n: old.params[n] - params[n] for n in params}
            if momentum is None:
                momentum = pseudo
            else:
                momentum = {n: c.server_momentum * momentum[n] + pseudo[n] for n in params}
            params = {n: old.params[n] - c.server_lr * momentum[n] for n in params}
        with torch.no_grad():
            for n, m in masks.items():
                params[n] = params[n] * m
        changed = any(not torch.equal(masks[n], old.masks[n]) for n in masks)
        new_state = ServerState(params=params, masks=masks,
                                mask_version=old.mask_version + int(changed), momentum=momentum)
        weight = sum(w for _, w in agg.losses)
        metrics = {
            "clients": float(result.num_clients),
            "train_loss": sum(loss * w for loss, w in agg.losses) / weight if weight else 0.0,
            "mask_changed": float(changed),
            "clipped_updates": float(agg.clipped_updates),
        }
        return new_state, metrics

