"""Mask readjustment (the client's local DST step) and its schedule.

``prune_and_grow`` is the one updater: drop the ``fraction`` of active weights with the lowest
drop score, grow as many previously inactive weights with the highest grow score. Scores are
pluggable (magnitude, gradient magnitude, random). The schedule (cosine decay of alpha) is separate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch


def cosine_readjust_fraction(server_round: int, alpha: float, t_end: int) -> float:
    """alpha_t = alpha / 2 * (1 + cos(pi * t / T_end)) for t <= T_end, 0 afterwards."""
    if t_end <= 0 or server_round > t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * server_round / t_end))


def is_readjust_round(server_round: int, every: int, t_end: int) -> bool:
    """Rounds 1, 1 + every, 1 + 2*every, ... up to T_end readjust (rounds count from 1)."""
    return every > 0 and server_round <= t_end and (server_round - 1) % every == 0


@dataclass(frozen=True)
class LayerReadjustment:
    """One layer's readjustment: flat indices (into the weight's ``reshape(-1)``) it turned off and on.

    The trainer's form (torch, in the order ``prune_and_grow`` chose them). Its wire form is
    ``protocol.MaskChange`` (numpy, sorted), built from this one once, by
    ``feddst_core.wire_format.wire_mask_changes``.
    """

    dropped: torch.Tensor  # (n,) int64
    grown: torch.Tensor  # (n,) int64


def prune_and_grow(mask: torch.Tensor, drop_scores: torch.Tensor, grow_scores: torch.Tensor,
                   fraction: float) -> tuple[torch.Tensor, LayerReadjustment]:
    """Readjust one layer's mask, keeping its active count.

    Drops ``floor(fraction * active)`` active weights with the *lowest* ``drop_scores`` and grows
    as many weights that were inactive *before* the drop with the *highest* ``grow_scores``, so
    dropped and grown sets are disjoint. Ties resolve to the lowest flat index (deterministic).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"readjust fraction must be in [0, 1], got {fraction}")
    flat_mask = mask.reshape(-1)
    active = int(flat_mask.sum())
    inactive = flat_mask.numel() - active
    n = min(math.floor(fraction * active), inactive)
    if n == 0:
        empty = torch.empty(0, dtype=torch.long)
        return mask.clone(), LayerReadjustment(empty, empty)
    big = torch.finfo(torch.float32).max
    # Scores of a diverged client (NaN, +-Inf) must not outrank the fills below: NaN counts as 0.
    drop = _finite(drop_scores, big).masked_fill(~flat_mask, big)  # inactive never dropped
    dropped = torch.sort(drop, stable=True).indices[:n]
    grow = _finite(grow_scores, big).masked_fill(flat_mask, -big)  # active never grown
    grown = torch.sort(grow, descending=True, stable=True).indices[:n]
    new = flat_mask.clone()
    new[dropped] = False
    new[grown] = True
    assert int(new.sum()) == active, "prune_and_grow must keep the active count"
    assert not bool(flat_mask[grown].any()), "grown weights must have been inactive"
    return new.reshape(mask.shape), LayerReadjustment(dropped, grown)


def _finite(scores: torch.Tensor, big: float) -> torch.Tensor:
    """Flat float32 scores with NaN -> 0 and +-Inf -> +-big/2 (strictly inside the +-big fills)."""
    return torch.nan_to_num(scores.reshape(-1).float(), nan=0.0, posinf=big / 2, neginf=-big / 2)


def readjust_masks(masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor],
                   gradients: Mapping[str, torch.Tensor], fraction: float,
                   ) -> tuple[dict[str, torch.Tensor], dict[str, LayerReadjustment]]:
    """FedDST's local step for one client: magnitude drop, gradient-magnitude growth, per layer."""
    new_masks: dict[str, torch.Tensor] = {}
    changes: dict[str, LayerReadjustment] = {}
    for name, mask in masks.items():
        new_masks[name], changes[name] = prune_and_grow(
            mask, weights[name].abs(), gradients[name].abs(), fraction)
    return new_masks, changes
