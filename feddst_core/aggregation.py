"""Server aggregation math: pure functions and a streaming accumulator (memory O(model)).

FedDST's server step: every masked weight becomes the sample-weighted mean over the clients whose
mask holds it; unmasked parameters (biases) a plain sample-weighted mean; then each layer is
magnitude-pruned back to its budget. Sums are kept in float64 so the result does not depend on
the order in which client updates arrive (to ~1e-12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from feddst_core.masks import topk_mask

Params = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]


@dataclass
class AggregateResult:
    params: Params  # float32 means; masked-out entries 0
    candidates: Masks  # masked names: weights held by >= min_votes clients
    total_weight: float  # sum of client weights (samples)
    num_clients: int


class MaskedMeanAccumulator:
    """Adds client updates one at a time; ``result()`` gives the masked weighted means."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], masked_names: list[str] | set[str]):
        self.masked = set(masked_names)
        self.weighted_sum = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
        self.mask_weight = {n: torch.zeros(shapes[n], dtype=torch.float64) for n in self.masked}
        self.votes = {n: torch.zeros(shapes[n], dtype=torch.int32) for n in self.masked}
        self.total_weight = 0.0
        self.num_clients = 0

    def add(self, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], weight: float) -> None:
        """One client's parameters and bool masks, weighted by ``weight`` (> 0).

        Masked parameters must be exactly 0 off their mask (the trainers, ``wire_format``'s rebuild
        and ``clip_update`` all guarantee it), so they are summed as they are, not masked again; the
        bool masks are summed as they are (promoted in the addition, no per-update cast copy). Every
        name and shape is checked before anything is added.
        """
        if weight <= 0:
            raise ValueError(f"client weight must be positive, got {weight}")
        if set(params) != set(self.weighted_sum):
            raise ValueError("client parameters do not match the model's parameter names")
        for name, acc in self.weighted_sum.items():
            if tuple(params[name].shape) != tuple(acc.shape):
                raise ValueError(f"{name}: shape {tuple(params[name].shape)} != model shape {tuple(acc.shape)}")
            if name in self.masked and (name not in masks or tuple(masks[name].shape) != tuple(acc.shape)):
                raise ValueError(f"{name}: no mask of the model shape {tuple(acc.shape)}")
        for name, acc in self.weighted_sum.items():
            acc.add_(params[name].detach().to(torch.float64), alpha=weight)
            if name in self.masked:
                m = masks[name]
                self.mask_weight[name].add_(m, alpha=weight)
                self.votes[name].add_(m)
        self.total_weight += weight
        self.num_clients += 1

    def result(self, min_votes: int = 1) -> AggregateResult:
        if self.num_clients == 0:
            raise ValueError("cannot aggregate zero client updates")
        params: Params = {}
        candidates: Masks = {}
        for name, acc in self.weighted_sum.items():
            if name in self.masked:
                held = self.votes[name] >= max(1, min_votes)
                denom = torch.where(held, self.mask_weight[name], torch.ones_like(acc))
                params[name] = torch.where(held, acc / denom, torch.zeros_like(acc)).float()
                candidates[name] = held
            else:
                params[name] = (acc / self.total_weight).float()
        return AggregateResult(params, candidates, self.total_weight, self.num_clients)


def prune_to_budgets(params: Mapping[str, torch.Tensor], candidates: Mapping[str, torch.Tensor],
                     budgets: Mapping[str, int]) -> Masks:
    """Per layer, keep the ``budget`` largest-magnitude candidate weights (all of them if fewer)."""
    masks: Masks = {}
    for name, cand in candidates.items():
        k = budgets[name]
        if int(cand.sum()) <= k:
            masks[name] = cand.clone()
        else:
            scores = params[name].abs().masked_fill(~cand, -1.0)
            masks[name] = topk_mask(scores, k)
        assert int(masks[name].sum()) <= k
    return masks

