"""Folding one checked update into the round's streaming mean straight from its wire form.

The dense path (``update_to_model`` then ``RoundAggregation.add``) scatters every tensor into a
dense float32 copy, then adds ``p * m`` (a dense float64 temporary per tensor) and ``m`` to the
accumulator: about five dense passes over the whole model per update, though a density-0.2 update
carries a fifth of the values. :func:`fold_update` adds only what the update holds: per masked
tensor ``weight * values`` (float64) at the held positions of ``weighted_sum``, ``weight`` at the same
positions of ``mask_weight`` and 1 to ``votes``; per dense tensor ``weight * values`` everywhere;
then ``total_weight``, ``num_clients`` and the loss as ``RoundAggregation.add`` does. The sums are
the dense path's, position by position in arrival order (a masked-out position gains nothing in
either; float rounding aside, the result is the same).

It applies to the ``mean`` rule (``MaskedMeanAccumulator``) without ``clip_update_norm``; for anything
else it returns False and the caller takes the dense path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from feddst_core.aggregation import MaskedMeanAccumulator
from feddst_core.strategies import RoundAggregation
from protocol import Update


class HeldIndices:
    """Flat indices of a held mask, computed once for the round's sent masks (most updates keep them)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (mask object, its indices)

    def of(self, name: str, held: np.ndarray) -> np.ndarray:
        cached = self._cache.get(name)
        if cached is not None and cached[0] is held:
            return cached[1]
        indices = np.flatnonzero(held)
        if cached is None:  # the first mask seen per tensor is the sent one when the first update kept it
            self._cache[name] = (held, indices)
        return indices


def can_fold(aggregation: RoundAggregation) -> bool:
    """Whether :func:`fold_update` applies to this round's aggregation (see the module docstring)."""
    return (type(aggregation.accumulator) is MaskedMeanAccumulator
            and aggregation.strategy.config.clip_update_norm is None)


def fold_update(aggregation: RoundAggregation, update: Update, held: Mapping[str, np.ndarray], weight: int,
                indices: HeldIndices) -> None:
    """Add ``update`` (passed by :func:`cloud.update_checks.check_update`, which gave ``held``: the bool
    mask each masked tensor's values sit on) with aggregation weight ``weight`` (samples, >= 1).
    Only when :func:`can_fold` is True."""
    acc = aggregation.accumulator
    assert isinstance(acc, MaskedMeanAccumulator)
    w = float(weight)
    for name, tensor in update.tensors.items():
        total = acc.weighted_sum[name].numpy().reshape(-1)  # shares the accumulator's float64 memory
        scaled = tensor.values.astype(np.float64) * w
        if name in acc.masked:
            at = indices.of(name, held[name])
            total[at] += scaled  # indices are unique: no accumulation within one update
            acc.mask_weight[name].numpy().reshape(-1)[at] += w
            acc.votes[name].numpy().reshape(-1)[at] += 1
        else:
            total += scaled
    acc.total_weight += w
    acc.num_clients += 1
    aggregation.losses.append((update.train_loss, weight))
