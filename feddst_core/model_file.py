"""The global-model file: a model's parameters and masks as safetensors bytes (no I/O here).

Layout (the one ``GET /api/runs/{id}/model``, the coordinator's state dir and ``feddst simulate
--out .../model.safetensors`` all use): every parameter under its own name (float32, the shapes of
``ModelSpec.parameter_shapes()``), each mask as ``<name>.mask`` (bool, same shape), and string
metadata: ``run_id`` and ``round`` always; ``model``, ``dataset`` and ``accuracy`` when known.
Pruned weights are stored as zeros.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

MASK_SUFFIX = ".mask"


class ModelFileError(ValueError):
    """The bytes are not a model file of this layout; the message says what is wrong."""


@dataclass(frozen=True)
class ModelFile:
    """A decoded model file: float32 parameters, bool masks, string metadata."""

    params: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def encode_model_file(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of a model (parameters by name, masks as ``<name>.mask``)."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in params.items()}
    tensors.update({name + MASK_SUFFIX: m.to(torch.bool).contiguous().cpu() for name, m in masks.items()})
    return save_safetensors(tensors, metadata={str(k): str(v) for k, v in metadata.items()})


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def decode_model_file(data: bytes, source: str = "model file") -> ModelFile:
    """Inverse of :func:`encode_model_file`. Raises :class:`ModelFileError` naming ``source``."""
    if len(data) < 8:
        raise ModelFileError(f"{source}: {len(data)} bytes is too short for a safetensors file")
    try:
        tensors = load_safetensors(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, struct.error) as exc:
        raise ModelFileError(f"{source}: not a safetensors model file ({exc})") from exc
    params = {n: t for n, t in tensors.items() if not n.endswith(MASK_SUFFIX)}
    masks = {n[: -len(MASK_SUFFIX)]: t.to(torch.bool) for n, t in tensors.items() if n.endswith(MASK_SUFFIX)}
    stray = sorted(set(masks) - set(params))
    if stray:
        raise ModelFileError(f"{source}: masks without a parameter: {', '.join(stray)}")
    return ModelFile(params, masks, metadata)
