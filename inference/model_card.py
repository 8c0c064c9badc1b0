"""The metadata an exported ``model.onnx`` carries (its ``metadata_props``), torch-free.

Keys (all values are strings; JSON where structured)::

    feddst.card_version   "1"
    feddst.model          built-in model name, e.g. "mnist_cnn"
    feddst.input_shape    JSON [C, H, W] of one sample (the graph input is (batch, C, H, W) float32)
    feddst.num_classes    e.g. "10"
    feddst.normalization  JSON {"mean": [...], "std": [...], "source": "..."} or "null": inputs are
                          x = (v - mean[c]) / std[c], v the intensity scaled to [0, 1] (8-bit pixel / 255)
    feddst.class_labels   JSON list of names for classes 0..K-1, or "null"
    feddst.dataset        the data source the normalisation was taken from, or ""
    feddst.run_id         run id ("" when not from a run), feddst.round: completed rounds ("" unknown)
    feddst.accuracy       the run's last reported accuracy ("" unknown)
    feddst.density        JSON {weight name: fraction of non-zero weights}

The graph (``feddst_core.onnx_export``): input ``input`` (batch, C, H, W) float32; outputs, in order,
``logits`` (batch, K) and ``probabilities`` (their softmax).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datasources.preprocessing import InputNormalisation

CARD_VERSION = 1
PREFIX = "feddst."


class ModelCardError(ValueError):
    """The model file's metadata is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class ModelCard:
    """What a device needs to use an exported model, and where the model came from."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    normalization: InputNormalisation | None = None
    class_labels: tuple[str, ...] | None = None
    dataset: str = ""
    run_id: str = ""
    server_round: int | None = None  # completed rounds
    accuracy: float | None = None
    density: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_labels is not None and len(self.class_labels) != self.num_classes:
            raise ModelCardError(f"{len(self.class_labels)} class labels for {self.num_classes} classes")
        if self.normalization is not None and len(self.normalization.mean) != self.input_shape[0]:
            raise ModelCardError(f"normalisation has {len(self.normalization.mean)} channels, the input "
                                 f"{self.input_shape[0]}")

    def label(self, index: int) -> str:
        """The name of class ``index`` (its number when the classes have no names)."""
        return self.class_labels[index] if self.class_labels is not None else str(index)

    def to_properties(self) -> dict[str, str]:
        norm = None if self.normalization is None else {
            "mean": list(self.normalization.mean), "std": list(self.normalization.std),
            "source": self.normalization.source}
        values = {
            "card_version": str(CARD_VERSION), "model": self.model, "input_shape": json.dumps(list(self.input_shape)),
            "num_classes": str(self.num_classes), "normalization": json.dumps(norm),
            "class_labels": json.dumps(None if self.class_labels is None else list(self.class_labels)),
            "dataset": self.dataset, "run_id": self.run_id,
            "round": "" if self.server_round is None else str(self.server_round),
            "accuracy": "" if self.accuracy is None else repr(float(self.accuracy)),
            "density": json.dumps(self.density),
        }
        return {PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_properties(cls, props: Mapping[str, str], source: str = "model") -> ModelCard:
        """Inverse of :meth:`to_properties`. Raises :class:`ModelCardError` naming the bad key."""
        reader = _PropertyReader(props, source)
        version = reader.integer("card_version")
        if version != CARD_VERSION:
            raise ModelCardError(f"{source}: metadata version {version}; this version reads {CARD_VERSION}")
        shape = reader.json("input_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise ModelCardError(f"{source}: {PREFIX}input_shape must be [C, H, W], got {shape!r}")
        labels = reader.json("class_labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ModelCardError(f"{source}: {PREFIX}class_labels must be a list of strings or null")
        norm = reader.json("normalization")
        normalization = None
        if norm is not None:
            if not isinstance(norm, dict):
                raise ModelCardError(f"{source}: {PREFIX}normalization must be a JSON object or null")
            try:
                normalization = InputNormalisation(tuple(float(v) for v in norm["mean"]),
                                                   tuple(float(v) for v in norm["std"]), str(norm.get("source", "")))
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelCardError(f"{source}: {PREFIX}normalization is malformed ({exc})") from exc
        density = reader.json("density")
        if not isinstance(density, dict):
            raise ModelCardError(f"{source}: {PREFIX}density must be a JSON object")
        try:
            return cls(model=reader.text("model"), input_shape=(shape[0], shape[1], shape[2]),
                       num_classes=reader.integer("num_classes"), normalization=normalization,
                       class_labels=None if labels is None else tuple(labels), dataset=reader.text("dataset"),
                       run_id=reader.text("run_id"), server_round=reader.optional_integer("round"),
                       accuracy=reader.optional_float("accuracy"),
                       density={str(k): float(v) for k, v in density.items()})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelCardError):
                raise
            raise ModelCardError(f"{source}: {exc}") from exc


class _PropertyReader:
    def __init__(self, props: Mapping[str, str], source: str):
        self.props, self.source = props, source

    def text(self, key: str) -> str:
        full = PREFIX + key
        if full not in self.props:
            raise ModelCardError(f"{self.source}: no {full} metadata; export the model with `feddst export onnx`")
        return self.props[full]

    def json(self, key: str) -> Any:
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{self.source}: {PREFIX}{key} is not JSON ({exc})") from exc

    def integer(self, key: str) -> int:
        value = self.text(key)
        try:
            return int(value)
        except ValueError as exc:
            raise ModelCardError(f"{self.source}: {PREFIX}{key} must be an integer, got {value!r}") from exc

    def optional_integer(self, key: str) -> int | None:
        return None if self.text(key) == "" else self.integer(key)

    def optional_float(self, key: str) -> float | None:
        value = self.text(key)
        if value == "":
            return None
        try:
            out = float(value)
        except ValueError as exc:
            raise ModelCardError(f"{self.source}: {PREFIX}{key} must be a number, got {value!r}") from exc
        if not math.isfinite(out):
            raise ModelCardError(f"{self.source}: {PREFIX}{key} must be finite, got {value!r}")
        return out


def card_for(model: str, input_shape: tuple[int, int, int], num_classes: int, masks: Mapping[str, object],
             dataset: str | None = None, run_id: str = "", server_round: int | None = None,
             accuracy: float | None = None) -> ModelCard:
    """The card of a built-in model trained on ``dataset`` (default: the model's usual data source).

    ``masks``: weight name -> bool mask (numpy or torch); density = the fraction of True entries.
    """
    import numpy as np

    from datasources.preprocessing import MODEL_DATASETS, dataset_class_labels, dataset_normalisation

    source = dataset if dataset is not None else MODEL_DATASETS.get(model, "")
    density = {}
    for name, mask in masks.items():
        array = np.asarray(mask, dtype=bool)
        density[name] = float(np.count_nonzero(array) / array.size) if array.size else 1.0
    return ModelCard(model=model, input_shape=input_shape, num_classes=num_classes,
                     normalization=dataset_normalisation(source, input_shape[0]) if source else None,
                     class_labels=dataset_class_labels(source, num_classes) if source else None,
                     dataset=source, run_id=run_id, server_round=server_round, accuracy=accuracy, density=density)
