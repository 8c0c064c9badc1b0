"""Keeping the latest global model on the device as ``model.onnx`` (``--model-onnx-path``).

Two sources, both models the coordinator sends anyway:

* the ``ModelBroadcast`` of round ``r`` carries the global model after ``r - 1`` completed rounds; with
  ``--model-onnx-every N`` the file is rewritten when that count is a multiple of N;
* the ``RunCompleted`` the coordinator sends once at the end of a run (on the run's ``final`` topic, which
  the agent subscribes to only with ``--model-onnx-path``) carries the model after the last round, which
  no broadcast does: the file is written at every completed run, with the run's accuracy.

The file is written atomically (temporary file, fsync, rename), so a local application reading it never
sees half a model. Its metadata (the model card) names the model, the run, the completed rounds, the
run's accuracy when the coordinator sent it (RunCompleted) and the input normalisation of this device's
data source; the log line also gives the model's accuracy on this device's local data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.data import LocalData
from inference.onnx_file import write_file_atomically
from protocol import ModelBroadcast, ProtocolError, RunCompleted, SparseTensor

if TYPE_CHECKING:  # torch, the models and the exporter are imported at the first write, not when idle
    import torch

    from feddst_core.models import ModelSpec

log = logging.getLogger("feddst.agent")
LOCAL_EVAL_SAMPLES = 1000  # bounds the cost of the local-accuracy figure on devices with much data


def spec_of_tensors(tensors: dict[str, SparseTensor]) -> ModelSpec | None:
    """The built-in model whose parameter shapes ``tensors`` are (None: no such model)."""
    from feddst_core.models import MODELS

    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    for spec in MODELS.values():
        if shapes == dict(spec.parameter_shapes()):
            return spec
    return None


class ModelSnapshotWriter:
    """Writes ``path`` from every due broadcast and every completed run; never raises (a failed write is
    logged and counted by the caller)."""

    def __init__(self, path: str | Path, every: int, data: LocalData, dataset: str) -> None:
        self.path = Path(path)
        self.every = every
        self.data = data
        self.dataset = dataset
        self.written: dict[str, int] = {}  # run id -> completed rounds of the model last written

    def due(self, model: ModelBroadcast | RunCompleted) -> bool:
        """A broadcast after a multiple of ``every`` rounds, or a completed run, not written yet."""
        completed = self._completed_rounds(model)
        if isinstance(model, ModelBroadcast) and completed % self.every != 0:
            return False
        return completed >= 1 and self.written.get(model.run_id, -1) < completed

    @staticmethod
    def _completed_rounds(model: ModelBroadcast | RunCompleted) -> int:
        return model.server_round - 1 if isinstance(model, ModelBroadcast) else model.server_round

    def write(self, model: ModelBroadcast | RunCompleted) -> bool:
        """Export and write the message's model; True when the file was written."""
        from feddst_core.onnx_export import OnnxExportError, export_model
        from feddst_core.wire_format import model_from_tensors

        completed = self._completed_rounds(model)
        accuracy = model.accuracy if isinstance(model, RunCompleted) else None
        spec = spec_of_tensors(model.tensors)
        if spec is None:
            log.warning("model.onnx not written for %s round %d: the model matches no built-in model",
                        model.run_id, completed)
            return False
        try:
            params, masks = model_from_tensors(model.tensors, spec.masked_names())
            data = export_model(spec, params, masks, dataset=self.dataset, run_id=model.run_id,
                                server_round=completed, accuracy=accuracy)
            write_file_atomically(self.path, data)
        except (ProtocolError, OnnxExportError, OSError) as exc:
            log.error("cannot write %s for %s round %d: %s", self.path, model.run_id, completed, exc)
            return False
        self.written[model.run_id] = completed
        run_accuracy = "" if accuracy is None else f"run accuracy {accuracy:.4f}, "
        log.info("wrote %s: %s, run %s after round %d%s, %s%s", self.path, spec.name, model.run_id, completed,
                 " (run completed)" if isinstance(model, RunCompleted) else "", run_accuracy,
                 self._local_accuracy(spec, params))
        return True

    def _local_accuracy(self, spec: ModelSpec, params: dict[str, torch.Tensor]) -> str:
        import torch

        from feddst_core.models import predict

        if spec.input_shape != self.data.input_shape or len(self.data) == 0:
            return "local accuracy n/a (the local data does not fit this model)"
        x = torch.from_numpy(self.data.x[:LOCAL_EVAL_SAMPLES])
        y = torch.from_numpy(self.data.y[:LOCAL_EVAL_SAMPLES])
        accuracy = float((predict(spec, params, x) == y).float().mean())
        return f"accuracy {accuracy:.4f} on {len(y)} local training samples"
