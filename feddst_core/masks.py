"""Sparsity masks: per-layer budgets (uniform / ER / ERK) and initial masks.

A *mask* is a bool tensor of a weight's shape; ``True`` means the weight is active. Biases are
never masked. The *budget* of a layer is its number of active weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from feddst_core.choices import DISTRIBUTIONS

Masks = dict[str, torch.Tensor]


def _raw_scale(shape: tuple[int, ...], distribution: str) -> float:
    """Un-normalised density of a layer: ER uses (out + in) / (out * in), ERK adds the kernel dims."""
    if distribution == "uniform":
        return 1.0
    if distribution == "er":
        dims = shape[:2]
        return sum(dims) / math.prod(dims)
    if distribution == "erk":
        return sum(shape) / math.prod(shape)
    raise ValueError(f"unknown sparsity distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


def layer_budgets(shapes: Mapping[str, tuple[int, ...]], sparsity: float,
                  distribution: str = "erk") -> dict[str, int]:
    """Active-weight count per masked layer so that the global density is ``1 - sparsity``.

    ``shapes`` holds only the masked (weight) tensors. Densities follow the distribution, layers
    whose density would exceed 1 are made dense and the rest re-scaled (RigL's procedure); counts
    are then rounded so their sum equals ``round((1 - sparsity) * total)`` exactly.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    target = round((1.0 - sparsity) * total)
    if sparsity == 0.0:
        return dict(sizes)
    dense: set[str] = set()
    while True:
        # Solve eps * sum(raw_l * n_l) = target - sum(dense n_l) over the non-dense layers.
        free = [n for n in shapes if n not in dense]
        budget_left = target - sum(sizes[n] for n in dense)
        denom = sum(_raw_scale(shapes[n], distribution) * sizes[n] for n in free)
        eps = budget_left / denom
        overflow = [n for n in free if eps * _raw_scale(shapes[n], distribution) > 1.0]
        if not overflow:
            break
        dense.update(overflow)
    exact = {n: float(sizes[n]) if n in dense else eps * _raw_scale(shapes[n], distribution) * sizes[n]
             for n in shapes}
    counts = {n: min(sizes[n], max(1, math.floor(v))) for n, v in exact.items()}
    # Hand out the rounding remainder to the largest fractional parts (never past a layer's size).
    remainder = target - sum(counts.values())
    order = sorted(shapes, key=lambda n: exact[n] - math.floor(exact[n]), reverse=True)
    while remainder != 0:
        progressed = False
        for n in order:
            if remainder > 0 and counts[n] < sizes[n]:
                counts[n] += 1
                remainder -= 1
                progressed = True
            elif remainder < 0 and counts[n] > 1:
                counts[n] -= 1
                remainder += 1
                progressed = True
            if remainder == 0:
                break
        if not progressed:
            break
    assert sum(counts.values()) == target or not progressed, "budgets must sum to the target"
    return counts


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask with ``True`` at the ``k`` largest scores (ties broken by lowest index)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        # stable descending sort keeps the lowest index first among equal scores: deterministic.
        idx = torch.sort(flat, descending=True, stable=True).indices[:k]
        mask[idx] = True
    return mask.reshape(scores.shape)


def init_masks(params: Mapping[str, torch.Tensor], budgets: Mapping[str, int], method: str = "magnitude",
               generator: torch.Generator | None = None) -> Masks:
    """Initial masks: keep the ``budget`` largest-magnitude weights of each layer, or a random set."""
    masks: Masks = {}
    for name, k in budgets.items():
        w = params[name]
        if method == "magnitude":
            masks[name] = topk_mask(w.abs(), k)
        elif method == "random":
            masks[name] = topk_mask(torch.rand(w.shape, generator=generator), k)
        else:
            raise ValueError(f"unknown mask init {method!r}; choose 'magnitude' or 'random'")
    return masks


def apply_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place (masks broadcast over a leading client axis)."""
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of active weights over all masked tensors."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


def full_masks(shapes: Mapping[str, tuple[int, ...]]) -> Masks:
    """All-True masks (a dense model)."""
    return {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
