"""Poisoning-resistant server math: per-layer update-norm clipping and robust means over holders.

Pure functions plus one accumulator with the interface of
:class:`~feddst_core.aggregation.MaskedMeanAccumulator`, so a strategy can swap it in:

* :func:`clip_update` bounds, per layer, ``||w_client - w_global||`` over the positions the client
  holds by ``max_ratio * ||w_global||`` over the same positions (the delta is scaled down, its
  direction kept). A layer whose global norm over those positions is 0 gets no change at all.
* :func:`aggregate_over_holders` is the coordinate-wise rule over each weight's holders:
  ``mean`` (unweighted), ``trimmed_mean`` (drop ``cut`` of the ``h`` holders' values at each end,
  average the rest; by default ``cut = floor(trim_fraction * h)``, ``scipy.stats.trim_mean``'s
  convention) or ``median`` (the mean of the two middle values when ``h`` is even, ``numpy.median``'s).
* :class:`HolderStackAccumulator` applies them to a round: ``trim_fraction`` is the fraction of the
  round's ``K`` updates assumed hostile, ``f = floor(trim_fraction * K)``. ``trimmed_mean`` drops ``f``
  values at each end of every weight's holders, and under both rules a weight is a candidate only if
  at least ``2 f + 1`` devices hold it (so ``f`` attackers can never be the majority of a weight's
  holders, e.g. at a weight only the attacker grew). It keeps the round's accepted updates (the
  per-coordinate rules need all of them at once): memory ``K x (4 + 1) bytes x model elements``
  (float32 values plus a bool mask per masked weight), ``K`` bounded by ``clients_per_round`` plus
  retry replacements. The sample-weighted ``mean`` keeps streaming (``MaskedMeanAccumulator``).

Robust rules are unweighted: a device's sample count is something it declares, so letting it
weight a median would hand the attacker the lever the rule is meant to take away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from feddst_core.aggregation import AggregateResult
from feddst_core.choices import AGGREGATIONS

Params = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]

ROBUST_AGGREGATIONS = ("trimmed_mean", "median")


def clip_update(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                global_params: Mapping[str, torch.Tensor], max_ratio: float) -> tuple[Params, dict[str, float]]:
    """Clip one client's update layer by layer, relative to the global model.

    params: the client's tensors (masked-out entries 0); masks: bool, the client's mask per masked
    name (names without a mask are held everywhere); global_params: the model the client was sent.
    All values must be finite. Returns the clipped tensors (float32, still 0 off the client's mask)
    and, per layer, the factor its delta was multiplied by (1.0 = within the bound).
    """
    if not max_ratio > 0:
        raise ValueError(f"the clip ratio must be > 0, got {max_ratio}")
    out: Params = {}
    scales: dict[str, float] = {}
    for name, p in params.items():
        g = global_params[name].detach().to(torch.float64)
        held = masks.get(name)
        held_f = torch.ones_like(g) if held is None else held.to(torch.float64)
        delta = (p.detach().to(torch.float64) - g) * held_f
        bound = max_ratio * float(torch.linalg.vector_norm(g * held_f))
        norm = float(torch.linalg.vector_norm(delta))
        scale = 1.0 if norm <= bound else bound / norm
        scales[name] = scale
        out[name] = ((g + delta * scale) * held_f).to(torch.float32) if scale < 1.0 else p.detach().float()
    return out, scales


def aggregate_over_holders(stack: torch.Tensor, held: torch.Tensor, rule: str, trim_fraction: float = 0.0,
                           cut: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise aggregate of K clients' values over the clients holding each position.

    stack: (K, *shape) float values; held: (K, *shape) bool, which client holds which position.
    trimmed_mean drops ``cut`` values at each end (default ``floor(trim_fraction * h)`` per position
    with ``h`` holders); a position with ``h <= 2 cut`` holders keeps nothing and aggregates to 0.
    Returns (aggregate float64 of ``shape``, 0 where nobody holds the position; holder count int64).
    """
    if rule not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {rule!r}; choose one of {', '.join(AGGREGATIONS)}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {trim_fraction}")
    if cut is not None and cut < 0:
        raise ValueError(f"cut must be >= 0, got {cut}")
    if stack.shape != held.shape or stack.dim() < 1:
        raise ValueError(f"values {tuple(stack.shape)} and holders {tuple(held.shape)} must share a (K, ...) shape")
    k = stack.shape[0]
    x = stack.to(torch.float64).masked_fill(~held, float("inf"))  # non-holders sort after every holder
    ordered = torch.sort(x, dim=0).values
    count = held.sum(dim=0, dtype=torch.int64)
    rank = torch.arange(k).view(k, *([1] * (stack.dim() - 1)))
    if rule == "mean":
        lo, hi = torch.zeros_like(count), count - 1
    elif rule == "trimmed_mean":
        per_end = (torch.floor(count.to(torch.float64) * trim_fraction).to(torch.int64) if cut is None
                   else torch.full_like(count, cut))
        lo, hi = per_end, count - 1 - per_end
    else:  # median: the middle rank, or the two middle ranks
        lo, hi = torch.div(count - 1, 2, rounding_mode="floor"), torch.div(count, 2, rounding_mode="floor")
    keep = (rank >= lo) & (rank <= hi) & (rank < count)
    total = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(dim=0)
    kept = keep.sum(dim=0)
    return torch.where(kept > 0, total / kept.clamp(min=1), torch.zeros_like(total)), count


class HolderStackAccumulator:
    """Keeps every added update; ``result()`` applies a robust rule over each weight's holders."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], masked_names: list[str] | set[str], rule: str,
                 trim_fraction: float = 0.0):
        if rule not in ROBUST_AGGREGATIONS:
            raise ValueError(f"HolderStackAccumulator takes {' or '.join(ROBUST_AGGREGATIONS)}, got {rule!r}")
        aggregate_over_holders(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), rule, trim_fraction)
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.masked = set(masked_names)
        self.rule = rule
        self.trim_fraction = trim_fraction
        self.values: dict[str, list[torch.Tensor]] = {n: [] for n in self.shapes}
        self.holders: dict[str, list[torch.Tensor]] = {n: [] for n in self.masked}
        self.total_weight = 0.0
        self.num_clients = 0

    def add(self, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], weight: float) -> None:
        """One client's parameters and masks; ``weight`` (> 0) is only summed (robust rules are unweighted)."""
        if weight <= 0:
            raise ValueError(f"client weight must be positive, got {weight}")
        if set(params) != set(self.shapes):
            raise ValueError("client parameters do not match the model's parameter names")
        for name, shape in self.shapes.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"{name}: shape {tuple(params[name].shape)} != model shape {shape}")
        for name in self.shapes:
            self.values[name].append(params[name].detach().to(torch.float32).clone())
            if name in self.masked:
                self.holders[name].append(masks[name].to(torch.bool).clone())
        self.total_weight += weight
        self.num_clients += 1

    @property
    def tolerated(self) -> int:
        """``f = floor(trim_fraction * K)``: hostile updates the rule is built to withstand this round."""
        return math.floor(self.trim_fraction * self.num_clients)

    def result(self, min_votes: int = 1) -> AggregateResult:
        """Robust aggregate; a masked weight is a candidate if held by >= max(min_votes, 2 f + 1) devices."""
        if self.num_clients == 0:
            raise ValueError("cannot aggregate zero client updates")
        params: Params = {}
        candidates: Masks = {}
        hostile = self.tolerated
        for name, values in self.values.items():
            stack = torch.stack(values)
            held = (torch.stack(self.holders[name]) if name in self.masked
                    else torch.ones(stack.shape, dtype=torch.bool))
            agg, count = aggregate_over_holders(stack, held, self.rule, cut=hostile)
            if name in self.masked:
                keep = count >= max(1, min_votes, 2 * hostile + 1)
                params[name] = torch.where(keep, agg, torch.zeros_like(agg)).float()
                candidates[name] = keep
            else:
                params[name] = agg.float()
        return AggregateResult(params, candidates, self.total_weight, self.num_clients)
