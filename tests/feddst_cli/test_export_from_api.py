"""``feddst export onnx --run ID --api URL`` against ``feddst cloud serve`` over real HTTP (uvicorn, embedded
broker): refused without a token (the API's 401 is reported), the latest or a given round with a viewer
token, and a missing round's 404 detail passed on."""

from __future__ import annotations

import onnx
from served_coordinator import create_token, served_coordinator
from typer.testing import CliRunner

from cloud.store import CoordinatorStore
from feddst_cli.main import app
from feddst_core.models import get_model_spec
from feddst_core.strategies import FedStrategy, StrategyConfig
from inference.model_card import ModelCard


def _state_dir_with_a_run(state) -> None:
    state_obj = FedStrategy(get_model_spec("digits_cnn"), StrategyConfig()).initialize(0)
    params, masks = state_obj.params, state_obj.masks
    store = CoordinatorStore(state)
    store.create_run("run-a", "", {"model": "digits_cnn"})
    for r in range(4):
        store.save_model("run-a", r, params, masks)
        if r:
            store.add_round("run-a", {"round": r, "accuracy": r / 10})
    store.close()


def test_export_over_http_with_and_without_a_token(tmp_path):
    state = tmp_path / "state"
    _state_dir_with_a_run(state)
    runner = CliRunner()
    with served_coordinator(state) as served:
        base = served.url
        out = tmp_path / "model.onnx"
        refused = runner.invoke(app, ["export", "onnx", "--run", "run-a", "--api", base, "--out", str(out)], env={})
        assert refused.exit_code == 2 and "HTTP 401" in refused.output and not out.exists()
        token = create_token(state, "viewer").stdout.strip()
        latest = runner.invoke(app, ["export", "onnx", "--run", "run-a", "--api", base, "--out", str(out)],
                               env={"FEDDST_API_TOKEN": token})
        assert latest.exit_code == 0, latest.output
        card = ModelCard.from_properties({p.key: p.value for p in onnx.load(str(out)).metadata_props})
        assert (card.run_id, card.server_round, card.accuracy) == ("run-a", 3, 0.3)
        second = runner.invoke(app, ["export", "onnx", "--run", "run-a", "--round", "2", "--api", base, "--token",
                                     token, "--out", str(tmp_path / "r2.onnx")])
        assert second.exit_code == 0, second.output
        card2 = ModelCard.from_properties({p.key: p.value for p in onnx.load(str(tmp_path / "r2.onnx")).metadata_props})
        assert (card2.server_round, card2.accuracy) == (2, 0.2)
        missing = runner.invoke(app, ["export", "onnx", "--run", "run-a", "--round", "9", "--api", base, "--token",
                                      token, "--out", str(tmp_path / "r9.onnx")])
        assert missing.exit_code == 2 and "HTTP 404" in missing.output and "no global model of round 9" in (
            missing.output)
