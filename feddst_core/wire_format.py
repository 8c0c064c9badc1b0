"""Model tensors <-> wire messages: the one place torch meets ``protocol`` (numpy only).

Used by the coordinator, the agent and the simulator's byte accounting, so that all three
build exactly the same messages: a model broadcast carries the global mask with the active
values (a dense model carries no mask); an update carries values only, on the mask the device
was sent after applying its ``mask_changes`` (none in a round without readjustment).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from feddst_core.readjust import LayerReadjustment
from protocol import MaskChange, ModelBroadcast, RunCompleted, SparseTensor, Update, apply_mask_changes
from protocol.errors import MaskMismatchError

Params = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]


def _is_dense(masks: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(m.all()) for m in masks.values())


def model_tensors(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, SparseTensor]:
    """Self-contained tensors (values + mask) of a model; unmasked or all-true masks go dense."""
    dense_model = _is_dense(masks)
    out: dict[str, SparseTensor] = {}
    for name, p in params.items():
        values = p.detach().cpu().numpy()
        if name in masks and not dense_model:
            out[name] = SparseTensor.from_dense(values, masks[name].cpu().numpy())
        else:
            out[name] = SparseTensor.from_dense(values)
    return out


def model_broadcast(run_id: str, server_round: int, params: Mapping[str, torch.Tensor],
                    masks: Mapping[str, torch.Tensor]) -> ModelBroadcast:
    """The global model of ``server_round`` as broadcast to devices."""
    return ModelBroadcast(run_id=run_id, server_round=server_round, tensors=model_tensors(params, masks))


def run_completed(run_id: str, rounds: int, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                  accuracy: float | None) -> RunCompleted:
    """The final global model after ``rounds`` completed rounds, as sent on the run's ``final`` topic."""
    return RunCompleted(run_id=run_id, server_round=rounds, tensors=model_tensors(params, masks), accuracy=accuracy)


def model_from_tensors(tensors: Mapping[str, SparseTensor], masked_names: list[str]) -> tuple[Params, Masks]:
    """Inverse of ``model_tensors``: float32 parameters and bool masks (all-true for dense tensors)."""
    params: Params = {}
    masks: Masks = {}
    for name, t in tensors.items():
        params[name] = torch.from_numpy(t.to_dense())
        if name in masked_names:
            masks[name] = (torch.from_numpy(t.mask.copy()) if t.mask is not None
                           else torch.ones(t.shape, dtype=torch.bool))
    missing = [n for n in masked_names if n not in masks]
    if missing:
        raise MaskMismatchError(f"model is missing tensors {missing}")
    return params, masks


def wire_mask_changes(changes: Mapping[str, LayerReadjustment]) -> dict[str, MaskChange]:
    """The trainer's per-layer changes (``feddst_core.readjust.LayerReadjustment``, torch int64 flat indices) as
    the wire's ``protocol.MaskChange`` (numpy int64, sorted); layers that moved nothing are left out."""
    wire: dict[str, MaskChange] = {}
    for name, change in changes.items():
        if change.dropped.numel() or change.grown.numel():
            wire[name] = MaskChange(change.dropped.cpu().numpy(), change.grown.cpu().numpy())
    return wire


def update_message(run_id: str, server_round: int, device_id: str, params: Mapping[str, torch.Tensor],
                   sent_masks: Mapping[str, torch.Tensor], new_masks: Mapping[str, torch.Tensor],
                   sample_count: int, train_loss: float, compute_s: float,
                   mask_changes: Mapping[str, LayerReadjustment] | None = None) -> Update:
    """A device's update: values on its (new) mask, plus the mask changes against the sent mask.

    ``mask_changes``: the trainer's own changes (``ClientOutcome.mask_changes``, made against
    ``sent_masks``), converted once to the wire form; None (a caller that only has the two masks,
    e.g. a bench rewriting an update) derives them with ``protocol.MaskChange.between``. Both give
    the same message, byte for byte.
    """
    if mask_changes is not None:
        changes = wire_mask_changes(mask_changes)
    else:
        changes = {}
        for name, new in new_masks.items():
            change = MaskChange.between(sent_masks[name].cpu().numpy(), new.cpu().numpy())
            if not change.is_empty:
                changes[name] = change
    tensors: dict[str, SparseTensor] = {}
    for name, p in params.items():
        values = p.detach().cpu().numpy()
        if name in new_masks:
            tensors[name] = SparseTensor(values.shape, values[new_masks[name].cpu().numpy()])
        else:
            tensors[name] = SparseTensor.from_dense(values)
    ordered = {name: changes[name] for name in params if name in changes}  # encoded in parameter order
    return Update(run_id=run_id, server_round=server_round, device_id=device_id, tensors=tensors,
                  mask_changes=ordered, sample_count=sample_count, train_loss=train_loss, compute_s=compute_s)


def check_update_shapes(update: Update, sent_masks: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Raise ``MaskMismatchError`` unless every masked tensor is in ``update`` with its sent mask's
    shape and every other tensor is dense (all its values): reads shapes and counts only, so an update
    declaring a huge shape is refused before anything of that shape is allocated."""
    missing = sorted(set(sent_masks) - set(update.tensors))
    if missing:
        raise MaskMismatchError(f"update does not carry every masked tensor of the model: missing {missing}")
    for name, t in update.tensors.items():
        if name in sent_masks:
            if tuple(t.shape) != tuple(sent_masks[name].shape):
                raise MaskMismatchError(f"{name}: shape {tuple(t.shape)} != the sent mask's "
                                        f"{tuple(sent_masks[name].shape)}")
        elif (t.mask is not None and not bool(t.mask.all())) or t.values.size != math.prod(t.shape):
            raise MaskMismatchError(f"{name} has no mask: it must carry all {math.prod(t.shape)} values")


def held_masks(update: Update, sent_masks: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """The masks the device holds after its round (bool numpy, one per masked name): its tensor's own
    mask, else the sent mask with its mask changes applied (without changes: the sent mask itself, not
    a copy; treat the result as read-only). Raises ``MaskMismatchError`` when a change does not fit
    the sent mask. Call ``check_update_shapes`` first."""
    held: dict[str, np.ndarray] = {}
    for name, sent in sent_masks.items():
        t = update.tensors[name]
        if t.mask is not None:
            held[name] = t.mask
        elif name in update.mask_changes:
            held[name] = apply_mask_changes(np.asarray(sent, dtype=bool), update.mask_changes[name])
        else:
            held[name] = np.asarray(sent, dtype=bool)
    return held


def update_on_masks(update: Update, held: Mapping[str, np.ndarray]) -> tuple[Params, Masks]:
    """The device's weights (float32, 0 off its mask) and masks (bool) from its update and ``held``,
    the masks it holds (``held_masks``, or the coordinator's checked ones): one scatter per tensor.

    Raises ``MaskMismatchError`` when a tensor's values do not fit its held mask.
    """
    params: Params = {}
    masks: Masks = {}
    for name, t in update.tensors.items():
        if name in held:
            mask = held[name]
            params[name] = torch.from_numpy(t.to_dense(mask))
            masks[name] = torch.from_numpy(mask if mask.flags.writeable else mask.copy())
        else:
            params[name] = torch.from_numpy(t.to_dense())
    return params, masks


def update_to_model(update: Update, sent_masks: Mapping[str, np.ndarray | torch.Tensor]) -> tuple[Params, Masks]:
    """The device's weights and masks, rebuilt from its update and the mask it was sent (bool, torch
    or numpy): shapes are checked first (``check_update_shapes``), then ``held_masks``, then
    ``update_on_masks``.

    Raises a ``protocol.ProtocolError`` subclass when the update does not fit that mask.
    """
    check_update_shapes(update, sent_masks)
    return update_on_masks(update, held_masks(update, sent_masks))
