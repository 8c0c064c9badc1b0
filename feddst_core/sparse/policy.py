"""Per-layer kernel selection: run a layer with sparse (CSR) kernels or as a masked dense layer.

``kernels`` is one of ``KERNEL_CHOICES``:

* ``"dense"``  every layer masked dense (what ``LocalTrainer`` does);
* ``"sparse"`` every masked Conv / Linear weight in CSR, whatever its density;
* ``"auto"``   a layer goes sparse when its density is at most the measured break-even density of
  its kind and it is large enough for the sparse path's fixed per-call cost to pay off
  (tiers of ``SparseThreshold`` per layer kind). The table ``DEFAULT_THRESHOLDS`` was measured with
  ``python bench/sparse_kernels.py --calibrate`` on the project's 2-core AVX2 machine; see
  ``docs/sparse_kernels.md``. Pass your own table (e.g. measured on a Raspberry Pi) to override it,
  or force single layers with ``layer_kernels={"fc1": "sparse"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from feddst_core import native
from feddst_core.models import Conv, Linear, ModelSpec

KERNEL_CHOICES = ("auto", "sparse", "dense")


@dataclass(frozen=True)
class SparseThreshold:
    """A layer of this kind runs sparse iff density <= max_density and weight count >= min_weights."""

    max_density: float  # break-even density (sparse time == dense time), with a safety margin
    min_weights: int  # below this many weights per-call overhead dominates: stay dense


# Measured on this project's 2-core AMD EPYC (AVX2/FMA), torch 2.13 CPU, 2 threads, batch 32, with
# bench/sparse_kernels.py --calibrate (fwd + bwd of one layer, masked dense vs CSR, interleaved medians).
# A layer goes sparse if ANY tier of its kind matches. Linear 5120x512 (2.6M weights): CSR/dense =
# 0.77 at density 0.3, 0.55 at 0.2, 0.34 at 0.1; 5120x50 (256k): 1.02 at 0.3, 0.81 at 0.2, 0.60 at 0.1
# (after the int32 / in-place kernel changes; the 0.1 tier is kept: see docs/sparse_kernels.md); 512x10:
# always slower (per-call overhead). Conv with the native direct sparse kernels: see CONV_NATIVE_TIERS.
_LINEAR_TIERS = (SparseThreshold(max_density=0.3, min_weights=1_000_000),
                 SparseThreshold(max_density=0.1, min_weights=200_000))
# Native direct sparse convolution (feddst_core.native), same calibration: PROVISIONAL, re-measured below.
CONV_NATIVE_TIERS = (SparseThreshold(max_density=0.3, min_weights=0),)

# The table used when the native kernels are built (the normal install).
DEFAULT_THRESHOLDS: dict[str, tuple[SparseThreshold, ...]] = {"linear": _LINEAR_TIERS, "conv": CONV_NATIVE_TIERS}
# Without the native library the only sparse convolution is im2col + CSR, 0.99-3.1x dense: never chosen.
TORCH_ONLY_THRESHOLDS: dict[str, tuple[SparseThreshold, ...]] = {"linear": _LINEAR_TIERS, "conv": ()}


def default_thresholds() -> dict[str, tuple[SparseThreshold, ...]]:
    """``DEFAULT_THRESHOLDS`` when the native kernels are available, else ``TORCH_ONLY_THRESHOLDS``."""
    return DEFAULT_THRESHOLDS if native.available() else TORCH_ONLY_THRESHOLDS


def validate_kernels(kernels: str) -> str:
    """Return ``kernels`` if it is a known choice, else raise a ValueError naming the choices."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNEL_CHOICES)}")
    return kernels


def layer_kind(layer: Conv | Linear) -> str:
    return "conv" if isinstance(layer, Conv) else "linear"


def choose_layer_kernels(spec: ModelSpec, masks: Mapping[str, torch.Tensor], kernels: str = "auto",
                         thresholds: Mapping[str, Sequence[SparseThreshold]] | None = None,
                         layer_kernels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Kernel ("sparse" | "dense") of every Conv / Linear layer of ``spec``, keyed by layer name.

    masks: bool weight masks keyed ``"<layer>.weight"``; a layer without a mask is dense (nothing
    to skip). layer_kernels: per-layer overrides ("sparse" | "dense") that beat ``kernels``.
    """
    validate_kernels(kernels)
    table = dict(default_thresholds() if thresholds is None else thresholds)
    overrides = dict(layer_kernels or {})
    layers = {ly.name: ly for ly in spec.layers if isinstance(ly, Conv | Linear)}
    unknown = set(overrides) - set(layers)
    if unknown:
        raise ValueError(f"layer_kernels names unknown layers {sorted(unknown)}; layers: {sorted(layers)}")
    chosen: dict[str, str] = {}
    for name, layer in layers.items():
        mask = masks.get(f"{name}.weight")
        if name in overrides:
            choice = overrides[name]
            if choice not in ("sparse", "dense"):
                raise ValueError(f"layer_kernels[{name!r}] must be 'sparse' or 'dense', got {choice!r}")
        elif kernels != "auto":
            choice = kernels
        elif mask is None:
            choice = "dense"
        else:
            density = float(mask.sum()) / mask.numel()
            wins = any(density <= tier.max_density and mask.numel() >= tier.min_weights
                       for tier in table.get(layer_kind(layer), ()))
            choice = "sparse" if wins else "dense"
        if mask is None and choice == "sparse":
            raise ValueError(f"layer {name!r} has no mask, so it cannot run sparse")
        chosen[name] = choice
    return chosen
