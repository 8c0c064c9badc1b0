"""A JSON form of messages, used by the test vectors and for debugging.

``message_to_json(msg)`` returns plain JSON types: ``{"type": "Update", "fields": {...}}``.
Tensors become ``{"shape": [...], "values": [...], "mask_positions": [...] | null}`` where
``values`` are the float32 values as JSON numbers (float32 -> float64 is exact, so they round
trip) and ``mask_positions`` are the flat C-order indices of the set mask positions. Mask changes
become ``{"dropped": [...], "grown": [...]}``. Non-finite floats are not representable in JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from protocol.errors import MalformedError
from protocol.messages import MESSAGE_CLASSES, Capabilities, Message
from protocol.tensors import MaskChange, SparseTensor

_CLASSES_BY_NAME = {cls.__name__: cls for cls in MESSAGE_CLASSES.values()}


def tensor_to_json(tensor: SparseTensor) -> dict[str, Any]:
    positions = None if tensor.mask is None else np.flatnonzero(tensor.mask).tolist()
    return {"shape": list(tensor.shape), "values": tensor.values.astype(np.float64).tolist(),
            "mask_positions": positions}


def tensor_from_json(obj: dict[str, Any]) -> SparseTensor:
    shape = tuple(obj["shape"])
    mask = None
    if obj["mask_positions"] is not None:
        mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
        mask[np.asarray(obj["mask_positions"], dtype=np.int64)] = True
        mask = mask.reshape(shape)
    return SparseTensor(shape, np.asarray(obj["values"], dtype=np.float32), mask)


def _value_to_json(value: Any) -> Any:
    if isinstance(value, SparseTensor):
        return tensor_to_json(value)
    if isinstance(value, MaskChange):
        return {"dropped": value.dropped.tolist(), "grown": value.grown.tolist()}
    if isinstance(value, Capabilities):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: _value_to_json(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def message_to_json(msg: Message) -> dict[str, Any]:
    fields = {field.name: _value_to_json(getattr(msg, field.name)) for field in dataclasses.fields(msg)}
    schema = getattr(msg, "schema_version", msg.SCHEMA_VERSION)  # Status: 1 or 2, by content
    return {"type": type(msg).__name__, "schema_version": schema, "fields": fields}


def message_from_json(obj: dict[str, Any]) -> Message:
    """Inverse of :func:`message_to_json`."""
    cls = _CLASSES_BY_NAME.get(obj.get("type", ""))
    if cls is None:
        raise MalformedError(f"unknown message type {obj.get('type')!r}")
    fields = dict(obj["fields"])
    if "capabilities" in fields:
        fields["capabilities"] = Capabilities(**fields["capabilities"])
    if "tensors" in fields:
        fields["tensors"] = {name: tensor_from_json(item) for name, item in fields["tensors"].items()}
    if "mask_changes" in fields:
        fields["mask_changes"] = {name: MaskChange(np.asarray(item["dropped"], dtype=np.int64),
                                                   np.asarray(item["grown"], dtype=np.int64))
                                  for name, item in fields["mask_changes"].items()}
    if "selected" in fields:
        fields["selected"] = tuple(fields["selected"])
    message: Message = cls(**fields)
    return message
