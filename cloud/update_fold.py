"""Folding checked updates into the round's streaming mean straight from their wire form.

The dense path (``update_to_model`` then ``RoundAggregation.add``) scatters every tensor into a
dense float32 copy, then adds ``p * m`` (a dense float64 temporary per tensor) and ``m`` to the
accumulator: about five dense passes over the whole model per update, though a density-0.2 update
carries a fifth of the values. :class:`SparseFold` adds only what an update holds:

* a masked tensor whose held mask is the one the round sent (the update changed nothing: every
  round without readjustment, most tensors in the others) adds ``weight * values`` (float64) to a
  compact vector over the sent mask's positions, in the values' own order, and ``weight`` and one
  vote to two scalars: no indexing at all (:class:`protocol.value_kernels.ScaledSums`: one compiled call for all of
  an update's such tensors and its dense ones, keeping the GIL, when built; numpy's multiply and add otherwise,
  the same sums bit for bit);
* a masked tensor with another mask adds ``weight * values`` at its held positions of the
  accumulator's ``weighted_sum``, ``weight`` at the same positions of ``mask_weight`` and 1 to ``votes``;
* a dense tensor (a bias) adds ``weight * values`` everywhere;

then ``total_weight``, ``num_clients`` and the loss as ``RoundAggregation.add`` does. :meth:`SparseFold.flush`
(before the aggregation's ``finish``) scatters the compact sums into the accumulator once. The sums are
the dense path's, taken in another order (float64; the result agrees to float rounding).

It applies to the ``mean`` rule (``MaskedMeanAccumulator``) without ``clip_update_norm`` (:func:`can_fold`);
anything else takes the dense path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from feddst_core.aggregation import MaskedMeanAccumulator
from feddst_core.strategies import RoundAggregation
from protocol import Update
from protocol.value_kernels import ScaledSums


def can_fold(aggregation: RoundAggregation) -> bool:
    """Whether :class:`SparseFold` applies to this round's aggregation (see the module docstring)."""
    return (type(aggregation.accumulator) is MaskedMeanAccumulator
            and aggregation.strategy.config.clip_update_norm is None)


class SparseFold:
    """One round's folding of updates into ``aggregation`` (``can_fold`` must hold); ``sent_masks`` are the
    round's sent masks (bool arrays), the very objects :func:`cloud.update_checks.check_update` hands back
    as an update's held mask when the update kept it."""

    def __init__(self, aggregation: RoundAggregation, sent_masks: Mapping[str, np.ndarray]):
        assert isinstance(aggregation.accumulator, MaskedMeanAccumulator)
        self.aggregation = aggregation
        self.acc: MaskedMeanAccumulator = aggregation.accumulator
        self.sent = dict(sent_masks)
        self.sent_indices = {n: np.flatnonzero(m) for n, m in self.sent.items()}
        self.compact = {n: np.zeros(i.size, dtype=np.float64) for n, i in self.sent_indices.items()}
        self.compact_weight = dict.fromkeys(self.sent, 0.0)
        self.compact_votes = dict.fromkeys(self.sent, 0)
        # Flat numpy views of the accumulator's tensors, made once per round: ``.numpy()`` shares the tensor's
        # memory but releases the GIL, ~35 us of wall time per call behind a busy thread.
        acc = self.acc
        self.sum_view = {n: t.numpy().reshape(-1) for n, t in acc.weighted_sum.items()}
        self.mask_weight_view = {n: t.numpy().reshape(-1) for n, t in acc.mask_weight.items()}
        self.votes_view = {n: t.numpy().reshape(-1) for n, t in acc.votes.items()}
        # Every tensor an unchanged-mask update sends: a dense one into its sum, a masked one into its compact
        # vector, all of one update's in one compiled call (keys: the tensor names, which never collide).
        self.sums = ScaledSums({n: (self.compact[n] if n in acc.masked else view)
                                for n, view in self.sum_view.items() if n not in acc.masked or n in self.compact})
        # One float64 scratch vector per tensor for ``weight * values`` of the scatter path, reused all round.
        shapes = aggregation.strategy.spec.parameter_shapes()
        self._scratch = {n: np.empty(math.prod(s), dtype=np.float64) for n, s in shapes.items()}

    def add(self, update: Update, held: Mapping[str, np.ndarray], weight: int) -> None:
        """Fold in ``update`` (passed by ``check_update``, which gave ``held``: the bool mask each masked
        tensor's values sit on, C order) with aggregation weight ``weight`` (samples, >= 1)."""
        acc, w = self.acc, float(weight)
        summed = []
        for name, tensor in update.tensors.items():
            if name not in acc.masked:
                summed.append((name, tensor.values))
            elif held[name] is self.sent[name]:
                summed.append((name, tensor.values))
                self.compact_weight[name] += w
                self.compact_votes[name] += 1
            else:
                scaled = np.multiply(tensor.values, w, out=self._scratch[name][:tensor.values.size], dtype=np.float64)
                at = np.flatnonzero(held[name])  # unique: no accumulation within one update
                self.sum_view[name][at] += scaled
                self.mask_weight_view[name][at] += w
                self.votes_view[name][at] += 1
        self.sums.add(summed, w)
        acc.total_weight += w
        acc.num_clients += 1
        self.aggregation.losses.append((update.train_loss, weight))

    def flush(self) -> None:
        """Scatter the compact sums into the accumulator (call before reading it or finishing the round)."""
        for name, at in self.sent_indices.items():
            if not self.compact_votes[name]:
                continue
            self.sum_view[name][at] += self.compact[name]
            self.mask_weight_view[name][at] += self.compact_weight[name]
            self.votes_view[name][at] += self.compact_votes[name]
            self.compact[name][:] = 0.0
            self.compact_weight[name], self.compact_votes[name] = 0.0, 0
