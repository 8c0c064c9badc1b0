"""Using an exported global model on a device: onnxruntime + numpy + Pillow, never torch.

Install only what this needs with the ``[infer]`` extra (see ``docs/inference.md``)::

    from inference import Predictor
    for p in Predictor("model.onnx").predict_paths(["photo.png"]):
        print(p.input, p.label, p.probabilities)
"""

from inference.inputs import InputError, Samples, read_samples
from inference.model_card import ModelCard, ModelCardError
from inference.predictor import ModelLoadError, Prediction, Predictor

__all__ = ["InputError", "ModelCard", "ModelCardError", "ModelLoadError", "Prediction", "Predictor", "Samples",
           "read_samples"]
