"""Running an exported ``model.onnx`` with onnxruntime (numpy, onnxruntime, Pillow; never torch).

    from inference import Predictor
    predictor = Predictor("model.onnx")               # reads the model card from the file's metadata
    for p in predictor.predict_paths(["digit.png", "batch.npz"]):
        print(p.input, p.label, max(p.probabilities))
    probs = predictor.probabilities(x)                 # x: (N, C, H, W) float32, already normalised

Image-like inputs are normalised exactly as the model's training data was (the card's
``normalization``); model-ready inputs (CSV rows, float npz arrays) are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.inputs import InputError, Samples, read_samples
from inference.model_card import ModelCard, ModelCardError


class ModelLoadError(ValueError):
    """The file is not a usable exported model; the message says why."""


@dataclass(frozen=True)
class Prediction:
    """One sample's predicted class: ``probabilities[k]`` for class k (they sum to 1)."""

    input: str
    label: str
    index: int
    probabilities: tuple[float, ...]

    def to_json(self) -> dict[str, object]:
        return {"input": self.input, "label": self.label, "probabilities": list(self.probabilities)}


class Predictor:
    """An onnxruntime session of one exported model plus its model card.

    ``threads``: onnxruntime intra-op threads (0: onnxruntime's default, all cores).
    Raises :class:`ModelLoadError` for a missing, corrupt or non-FedDST model file.
    """

    def __init__(self, model: str | Path | bytes, threads: int = 0) -> None:
        import onnxruntime as ort

        source = "model bytes" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes):
            try:
                model = Path(model).read_bytes()
            except OSError as exc:
                raise ModelLoadError(f"{source}: cannot read the model file ({exc})") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(f"{source}: onnxruntime cannot load it as an ONNX model ({exc})") from exc
        try:
            self.card = ModelCard.from_properties(self.session.get_modelmeta().custom_metadata_map, source)
        except ModelCardError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.input_name = self.session.get_inputs()[0].name
        if len(self.session.get_outputs()) < 2:
            raise ModelLoadError(f"{source}: expected outputs logits and probabilities")

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = self.card.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise InputError(f"model {self.card.model} takes (N, {', '.join(map(str, shape))}) inputs, "
                             f"got {x.shape}")
        logits, probabilities = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[:2]
        return logits, probabilities

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, K) logits of model-ready (normalised) inputs (N, C, H, W)."""
        return self._run(x)[0]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities of model-ready (normalised) inputs (N, C, H, W)."""
        return self._run(x)[1]

    def model_input(self, samples: Samples) -> np.ndarray:
        """The normalised model input of ``samples`` (intensities get the card's normalisation)."""
        if not samples.intensities:
            return samples.values
        norm = self.card.normalization
        if norm is None:
            raise InputError(f"{samples.names[0]}: the model records no input normalisation (trained on "
                             f"{self.card.dataset or 'unknown data'}), so raw pixels cannot be prepared for it; "
                             "give model-ready values (a CSV file or a float .npz array)")
        return norm.apply(samples.values)

    def predict_samples(self, samples: Samples, batch_size: int = 256) -> Iterator[Prediction]:
        x = self.model_input(samples)
        for start in range(0, len(x), batch_size):
            probs = self.probabilities(x[start:start + batch_size])
            for name, row in zip(samples.names[start:start + batch_size], probs, strict=True):
                index = int(np.argmax(row))
                yield Prediction(name, self.card.label(index), index, tuple(float(p) for p in row))

    def predict_paths(self, paths: Iterable[str | Path]) -> list[Prediction]:
        """Predictions for every sample of every input path (see :mod:`inference.inputs`)."""
        out: list[Prediction] = []
        for samples in read_samples(paths, self.card.input_shape):
            out.extend(self.predict_samples(samples))
        return out
