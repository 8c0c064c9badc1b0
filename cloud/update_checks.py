"""The coordinator's checks of one decoded ``Update`` before it may join the aggregation.

Every check reads the wire form (shapes, value counts, mask changes) and never builds a dense
tensor before the shapes are known to be the model's, so nothing an update contains can make the
coordinator allocate more than the model or crash; the first failed check raises
:class:`UpdateRejected` with a short ``reason`` (counted as ``invalid_<reason>`` in the run's
counters) and a ``detail`` for the negative Ack and the log.

Reasons, in the order they are checked:

* ``sample_count``: the declared sample count is < 1;
* ``non_finite``: NaN or +-Inf in ``train_loss``, ``compute_s`` or any tensor value;
* ``tensor_names``: the tensor names are not exactly the model's, or a mask change names a
  tensor that has no mask (a bias);
* ``tensor_shape``: a tensor's shape is not the model's;
* ``outside_mask``: a value lies outside the positions the device holds: a bias that is not dense,
  a mask change that drops an unset position or grows a set one, a number of values that is not
  the number of held positions;
* ``mask_budget``: the mask changes break the readjustment rule of ``feddst_core.readjust``.
  ``prune_and_grow`` drops ``n = min(floor(alpha * a), size - a)`` active weights of a layer with
  ``a`` active weights (in the mask the device was sent) and grows exactly as many, so per layer
  ``|dropped| == |grown| <= min(floor(alpha * a), size - a)``, with ``alpha`` the task's fraction
  (0 in a round without readjustment: the mask must be the one sent). Fewer moves are accepted
  (the per-layer active count, hence the density budget, is what the server relies on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from protocol import MaskChange, ProtocolError, Update, apply_mask_changes
from protocol.value_kernels import all_finite

REJECT_REASONS = ("sample_count", "non_finite", "tensor_names", "tensor_shape", "outside_mask", "mask_budget")


class UpdateRejected(Exception):
    """An update that must not reach the aggregation; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RoundExpectations:
    """What a round's updates must fit: the model's shapes, the sent masks and the task's alpha.

    ``sent_counts`` (set positions of each sent mask) is worked out once, when the round's expectations
    are made, not once per update."""

    shapes: Mapping[str, tuple[int, ...]]  # every parameter of the model
    sent_masks: Mapping[str, np.ndarray]  # bool, one per masked parameter: the broadcast mask
    readjust_fraction: float  # alpha of the round's task; 0 = no readjustment
    sent_counts: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        masks = {name: np.asarray(mask, dtype=bool) for name, mask in self.sent_masks.items()}
        object.__setattr__(self, "sent_masks", masks)
        object.__setattr__(self, "sent_counts", {name: int(np.count_nonzero(m)) for name, m in masks.items()})


def _names(names: set[str] | list[str], limit: int = 4) -> str:
    listed = sorted(names)
    return ", ".join(listed[:limit]) + (f" (+{len(listed) - limit} more)" if len(listed) > limit else "")


def max_moves(active: int, size: int, fraction: float) -> int:
    """How many weights ``prune_and_grow`` moves in a layer of ``size`` with ``active`` set ones."""
    return min(math.floor(fraction * active), size - active)


def check_update(update: Update, expect: RoundExpectations) -> dict[str, np.ndarray]:
    """Raise :class:`UpdateRejected` unless ``update`` fits ``expect`` (see the module docstring).

    Returns the masks the device holds (bool numpy, one per masked name of ``expect.sent_masks``), as
    the checks worked them out, for ``feddst_core.wire_format.update_on_masks`` to scatter the values
    on: a mask the update carries, else the sent mask with its changes applied (the sent mask itself,
    not a copy, when it has none: read-only).
    """
    if update.sample_count < 1:
        raise UpdateRejected("sample_count", f"sample_count must be >= 1, got {update.sample_count}")
    for field_name in ("train_loss", "compute_s"):
        if not math.isfinite(getattr(update, field_name)):
            raise UpdateRejected("non_finite", f"{field_name} is {getattr(update, field_name)}")
    _check_names_and_shapes(update, expect)
    for name, tensor in update.tensors.items():
        if not all_finite(tensor.values):
            bad = int(np.count_nonzero(~np.isfinite(tensor.values)))
            raise UpdateRejected("non_finite", f"{name}: {bad} of {tensor.values.size} values are NaN or infinite")
    held: dict[str, np.ndarray] = {}
    for name, tensor in update.tensors.items():
        if name in expect.sent_masks:
            held[name] = _check_masked(name, update, expect)
        else:
            size = math.prod(tensor.shape)
            if (tensor.mask is not None and not bool(tensor.mask.all())) or tensor.values.size != size:
                raise UpdateRejected("outside_mask", f"{name} has no mask: it must carry all {size} values")
    return held


def _check_names_and_shapes(update: Update, expect: RoundExpectations) -> None:
    got, want = set(update.tensors), set(expect.shapes)
    if got != want:
        parts = []
        if want - got:
            parts.append(f"missing {_names(want - got)}")
        if got - want:
            parts.append(f"unexpected {_names(got - want)}")
        raise UpdateRejected("tensor_names", "tensor names do not match the model: " + "; ".join(parts))
    unmasked_changes = set(update.mask_changes) - set(expect.sent_masks)
    if unmasked_changes:
        raise UpdateRejected("tensor_names", f"mask changes for tensors without a mask: {_names(unmasked_changes)}")
    for name, tensor in update.tensors.items():
        if tuple(tensor.shape) != tuple(expect.shapes[name]):
            raise UpdateRejected("tensor_shape", f"{name}: shape {tuple(tensor.shape)} != model shape "
                                 f"{tuple(expect.shapes[name])}")


def _check_masked(name: str, update: Update, expect: RoundExpectations) -> np.ndarray:
    """Check one masked tensor; return the mask the device holds."""
    tensor = update.tensors[name]
    sent = expect.sent_masks[name]
    if tensor.mask is not None:
        if name in update.mask_changes:
            raise UpdateRejected("outside_mask", f"{name} carries both its own mask and mask changes")
        change = MaskChange.between(sent, tensor.mask)
        held = tensor.mask
    elif name in update.mask_changes:
        change = update.mask_changes[name]
        try:
            held = apply_mask_changes(sent, change)
        except ProtocolError as exc:
            raise UpdateRejected("outside_mask", f"{name}: {exc}") from exc
    else:
        return _check_count(name, tensor.values.size, sent, expect.sent_counts[name])
    _check_count(name, tensor.values.size, held)
    dropped, grown = int(change.dropped.size), int(change.grown.size)
    if dropped == grown == 0:
        return held
    active = expect.sent_counts[name]
    if dropped != grown:
        raise UpdateRejected("mask_budget", f"{name}: {dropped} weights dropped but {grown} grown; a readjustment "
                             f"keeps the layer's {active} active weights")
    allowed = max_moves(active, sent.size, expect.readjust_fraction)
    if grown > allowed:
        why = ("this round does not readjust masks" if expect.readjust_fraction == 0
               else f"alpha {expect.readjust_fraction:.6g} of {active} active weights allows {allowed}")
        raise UpdateRejected("mask_budget", f"{name}: {grown} weights moved; {why}")
    return held


def _check_count(name: str, values: int, held: np.ndarray, held_count: int | None = None) -> np.ndarray:
    """``held`` if ``values`` is its number of set positions (``held_count`` when known), else
    :class:`UpdateRejected`."""
    held_count = int(np.count_nonzero(held)) if held_count is None else held_count
    if values != held_count:
        raise UpdateRejected("outside_mask", f"{name}: {values} values for {held_count} held positions")
    return held
