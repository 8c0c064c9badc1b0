"""Model tensors <-> wire messages: the one place torch meets ``protocol`` (numpy only).

Used by the coordinator, the agent and the simulator's byte accounting, so that all three
build exactly the same messages: a model broadcast carries the global mask with the active
values (a dense model carries no mask); an update carries values only, on the mask the device
was sent after applying its ``mask_changes`` (none in a round without readjustment).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

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


def update_message(run_id: str, server_round: int, device_id: str, params: Mapping[str, torch.Tensor],
                   sent_masks: Mapping[str, torch.Tensor], new_masks: Mapping[str, torch.Tensor],
                   sample_count: int, train_loss: float, compute_s: float) -> Update:
    """A device's update: values on its (new) mask, plus the mask changes against the sent mask."""
    tensors: dict[str, SparseTensor] = {}
    changes: dict[str, MaskChange] = {}
    for name, p in params.items():
        values = p.detach().cpu().numpy()
        if name in new_masks:
            new = new_masks[name].cpu().numpy()
            change = MaskChange.between(sent_masks[name].cpu().numpy(), new)
            if not change.is_empty:
                changes[name] = change
            tensors[name] = SparseTensor(values.shape, values[new])
        else:
            tensors[name] = SparseTensor.from_dense(values)
    return Update(run_id=run_id, server_round=server_round, device_id=device_id, tensors=tensors,
                  mask_changes=changes, sample_count=sample_count, train_loss=train_loss, compute_s=compute_s)


def update_to_model(update: Update, sent_masks: Mapping[str, torch.Tensor]) -> tuple[Params, Masks]:
    """The device's weights and masks, rebuilt from its update and the mask it was sent.

    Raises a ``protocol.ProtocolError`` subclass when the update does not fit that mask.
    """
    if not set(sent_masks) <= set(update.tensors):
        raise MaskMismatchError("update does not carry every masked tensor of the model")
    params: Params = {}
    masks: Masks = {}
    for name, t in update.tensors.items():
        if name in sent_masks:
            if t.mask is not None:
                mask = t.mask
            else:
                mask = sent_masks[name].cpu().numpy()
                if name in update.mask_changes:
                    mask = apply_mask_changes(mask, update.mask_changes[name])
            params[name] = torch.from_numpy(t.to_dense(np.asarray(mask, dtype=bool)))
            masks[name] = torch.from_numpy(np.array(mask, dtype=bool))
        else:
            params[name] = torch.from_numpy(t.to_dense())
    return params, masks
