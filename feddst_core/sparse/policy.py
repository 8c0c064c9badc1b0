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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feddst_core import native
from feddst_core.choices import KERNEL_CHOICES

if TYPE_CHECKING:  # feddst_core.models imports torch; the threshold tables here must not (idle agent)
    import torch

    from feddst_core.models import Conv, Linear, ModelSpec


@dataclass(frozen=True)
class SparseThreshold:
    """A layer of this kind runs sparse iff density <= max_density and weight count >= min_weights."""

    max_density: float  # break-even density (sparse time == dense time), with a safety margin
    min_weights: int  # below this many weights per-call overhead dominates: stay dense


# Measured on this project's 2-core AMD EPYC (AVX-512), torch 2.13 CPU, 2 threads, batch 32, with
# bench/sparse_kernels.py --calibrate (fwd + bwd of one layer, masked dense vs sparse, interleaved medians;
# table in docs/sparse_kernels.md). A layer goes sparse if ANY tier of its kind matches; each tier sits
# one measured density step below break-even, so the 5% rule holds with a margin.
#
# Native kernels (feddst_core.native). Linear 5120x512 (2.6M weights): sparse/dense = 0.80 at density 0.5,
# 0.52 at 0.3, 0.28 at 0.1; 5120x50 (256k): 0.93 at 0.5, 0.76 at 0.3, 0.57 at 0.1; 512x10 (5k): 1.6x at
# every density (per-call overhead) -> stays dense. Conv 10->20 k5 @22: 1.00 at 0.5, 0.69 at 0.3, 0.33 at
# 0.1; CIFAR conv 6->16 @26: 0.97 / 0.66 / 0.41; convs with 1-3 input channels win even at 0.5 (0.38).
NATIVE_LINEAR_TIERS = (SparseThreshold(max_density=0.5, min_weights=1_000_000),
                       SparseThreshold(max_density=0.3, min_weights=200_000))
CONV_NATIVE_TIERS = (SparseThreshold(max_density=0.3, min_weights=0),)
# torch.sparse only (no native library): linear 5120x512 0.77 at 0.3, 0.55 at 0.2, 0.34 at 0.1; 5120x50
# 1.02 at 0.3, 0.81 at 0.2, 0.60 at 0.1; im2col + CSR convolution 0.99-3.1x dense at every density: never.
TORCH_LINEAR_TIERS = (SparseThreshold(max_density=0.3, min_weights=1_000_000),
                      SparseThreshold(max_density=0.1, min_weights=200_000))

# The table used when the native kernels are built (the normal install).
DEFAULT_THRESHOLDS: dict[str, tuple[SparseThreshold, ...]] = {"linear": NATIVE_LINEAR_TIERS,
                                                               "conv": CONV_NATIVE_TIERS}
# The table without the native library.
TORCH_ONLY_THRESHOLDS: dict[str, tuple[SparseThreshold, ...]] = {"linear": TORCH_LINEAR_TIERS, "conv": ()}


def default_thresholds() -> dict[str, tuple[SparseThreshold, ...]]:
    """``DEFAULT_THRESHOLDS`` when the native kernels are available, else ``TORCH_ONLY_THRESHOLDS``."""
    return DEFAULT_THRESHOLDS if native.available() else TORCH_ONLY_THRESHOLDS


def validate_kernels(kernels: str) -> str:
    """Return ``kernels`` if it is a known choice, else raise a ValueError naming the choices."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNEL_CHOICES)}")
    return kernels


def layer_kind(layer: Conv | Linear) -> str:
    from feddst_core.models import Conv

    return "conv" if isinstance(layer, Conv) else "linear"


def choose_layer_kernels(spec: ModelSpec, masks: Mapping[str, torch.Tensor], kernels: str = "auto",
                         thresholds: Mapping[str, Sequence[SparseThreshold]] | None = None,
                         layer_kernels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Kernel ("sparse" | "dense") of every Conv / Linear layer of ``spec``, keyed by layer name.

    masks: bool weight masks keyed ``"<layer>.weight"``; a layer without a mask is dense (nothing
    to skip). layer_kernels: per-layer overrides ("sparse" | "dense") that beat ``kernels``.
    """
    from feddst_core.models import Conv, Linear

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


# --- per-device tables: derived from a calibration, stored as JSON ------------------------------------

THRESHOLDS_FORMAT_VERSION = 1
LAYER_KINDS = ("linear", "conv")


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured layer at one density: sparse time / dense time of forward + backward."""

    kind: str  # "linear" | "conv"
    weights: int  # the layer's weight count
    density: float
    time_ratio: float


def thresholds_from_calibration(points: Sequence[CalibrationPoint], margin: float = 0.9,
                                ) -> dict[str, tuple[SparseThreshold, ...]]:
    """The auto policy's table from measured points (``bench/sparse_kernels.py --calibrate``).

    A layer *wins* at density d when sparse took <= ``margin`` x dense at d and at every lower density
    measured for it. Each layer gives a tier (its largest winning density, min_weights = its weight
    count), lowered to what every *larger* measured layer of its kind also wins at, so a tier never
    claims a layer size that measured slower. Layers that never win give no tier; dominated tiers are
    dropped. Returns ``{"linear": (...), "conv": (...)}`` sorted by min_weights.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    by_layer: dict[tuple[str, int], list[CalibrationPoint]] = {}
    for p in points:
        if p.kind not in LAYER_KINDS:
            raise ValueError(f"calibration point of unknown kind {p.kind!r}; kinds: {', '.join(LAYER_KINDS)}")
        by_layer.setdefault((p.kind, p.weights), []).append(p)
    best: dict[tuple[str, int], float] = {}  # largest density this layer wins at (0 = never)
    for key, pts in by_layer.items():
        win = 0.0
        for p in sorted(pts, key=lambda q: q.density):
            if p.time_ratio > margin:
                break
            win = p.density
        best[key] = win
    table: dict[str, tuple[SparseThreshold, ...]] = {}
    for kind in LAYER_KINDS:
        sizes = sorted(n for k, n in best if k == kind)
        tiers: list[SparseThreshold] = []
        for n in sizes:
            d = min(best[(kind, m)] for m in sizes if m >= n)
            if d > 0 and not any(t.max_density >= d and t.min_weights <= n for t in tiers):
                tiers.append(SparseThreshold(max_density=d, min_weights=n))
        table[kind] = tuple(tiers)
    return table


def thresholds_to_dict(table: Mapping[str, Sequence[SparseThreshold]]) -> dict:
    """JSON-ready form: ``{"version": 1, "linear": [{"max_density", "min_weights"}, ...], "conv": [...]}``."""
    return {"version": THRESHOLDS_FORMAT_VERSION} | {
        kind: [{"max_density": t.max_density, "min_weights": t.min_weights} for t in table.get(kind, ())]
        for kind in LAYER_KINDS}


def thresholds_from_dict(obj: object) -> dict[str, tuple[SparseThreshold, ...]]:
    """Parse ``thresholds_to_dict``'s form; ValueError naming the first problem. Extra keys (e.g. a
    ``"measured_on"`` note) are ignored; a missing kind means "never sparse"."""
    if not isinstance(obj, Mapping):
        raise ValueError("kernel thresholds must be a JSON object with 'linear' and/or 'conv' lists")
    if obj.get("version", THRESHOLDS_FORMAT_VERSION) != THRESHOLDS_FORMAT_VERSION:
        raise ValueError(f"kernel thresholds version {obj.get('version')!r} is not supported "
                         f"(expected {THRESHOLDS_FORMAT_VERSION})")
    table: dict[str, tuple[SparseThreshold, ...]] = {}
    for kind in LAYER_KINDS:
        entries = obj.get(kind, [])
        if not isinstance(entries, list):
            raise ValueError(f"kernel thresholds: {kind!r} must be a list of tiers")
        tiers = []
        for i, entry in enumerate(entries):
            where = f"kernel thresholds: {kind}[{i}]"
            if not isinstance(entry, Mapping) or set(entry) != {"max_density", "min_weights"}:
                raise ValueError(f"{where} must be an object with exactly 'max_density' and 'min_weights'")
            d, n = entry["max_density"], entry["min_weights"]
            if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d <= 1:
                raise ValueError(f"{where}.max_density must be a number in [0, 1], got {d!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{where}.min_weights must be an integer >= 0, got {n!r}")
            tiers.append(SparseThreshold(max_density=float(d), min_weights=n))
        table[kind] = tuple(tiers)
    return table


def parse_thresholds_json(text: str) -> tuple[dict[str, tuple[SparseThreshold, ...]], dict]:
    """(table, measured_on note) from the JSON text ``bench/sparse_kernels.py --write-thresholds`` writes;
    ValueError naming the problem (the caller adds which file)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise ValueError(f"not valid JSON ({exc})") from exc
    table = thresholds_from_dict(doc)
    note = doc.get("measured_on")
    return table, note if isinstance(note, dict) else {}


def describe_thresholds(table: Mapping[str, Sequence[SparseThreshold]]) -> str:
    """One line for logs: ``linear: sparse at density <= 0.5 if >= 1000000 weights, ...; conv: always dense``."""
    def tier(t: SparseThreshold) -> str:
        return f"sparse at density <= {t.max_density:g}" + (f" if >= {t.min_weights} weights" if t.min_weights else "")
    return "; ".join(f"{kind}: " + (", ".join(map(tier, table.get(kind, ()))) or "always dense")
                     for kind in LAYER_KINDS)
