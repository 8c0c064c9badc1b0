"""A run's global model as ONNX: the bytes behind ``GET /api/runs/{id}/model.onnx`` and ``feddst
export onnx --run ID --state-dir DIR``.

The model of the run's current round (or of ``server_round``) from the state dir, exported by
``feddst_core.onnx_export.export_model`` with the run's model name, the normalisation and class
labels of its evaluation dataset (default: the model's usual data source), the round and the last
accuracy reported at or before it.
"""

from __future__ import annotations

from cloud.store import CoordinatorStore
from feddst_core.model_file import decode_model_file
from feddst_core.models import get_model_spec
from feddst_core.onnx_export import export_model


def run_model_onnx(store: CoordinatorStore, run_id: str, server_round: int | None = None) -> bytes:
    """The ``.onnx`` bytes of ``run_id``'s global model after ``server_round`` (default: its latest).

    Raises ``RunNotFoundError`` or ``ModelNotAvailableError`` (``cloud.errors``).
    """
    run = store.get_run(run_id)
    path = store.model_file(run_id) if server_round is None else store.round_model_file(run_id, server_round)
    if server_round is None:
        server_round = int(path.stem.split("-")[1])
    model = decode_model_file(path.read_bytes(), str(path))
    spec = get_model_spec(run.config.get("model", "digits_cnn"))
    eval_config = run.config.get("eval") or {}
    accuracies = [r["accuracy"] for r in store.rounds(run_id)
                  if r.get("accuracy") is not None and int(r["round"]) <= server_round]
    return export_model(spec, model.params, model.masks, dataset=eval_config.get("dataset"), run_id=run_id,
                        server_round=server_round, accuracy=accuracies[-1] if accuracies else None)
