"""``feddst export onnx`` (from a model file, from a coordinator's state dir, from its API) and ``feddst predict``."""

from __future__ import annotations

import json
import socket

import numpy as np
import onnx
import pytest
from postgres_schemas import new_schema, unavailable_reason
from typer.testing import CliRunner

from cloud.store import CoordinatorStore
from feddst_cli.main import app
from feddst_core.model_file import encode_model_file
from feddst_core.models import get_model_spec
from feddst_core.strategies import FedStrategy, StrategyConfig
from inference.model_card import ModelCard

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def card_of(path) -> ModelCard:
    return ModelCard.from_properties({p.key: p.value for p in onnx.load(str(path)).metadata_props})


@pytest.fixture
def digits_model():
    state = FedStrategy(get_model_spec("digits_cnn"), StrategyConfig(sparsity=0.8)).initialize(0)
    return state.params, state.masks


def test_from_simulate_output_then_predict(tmp_path):
    sim = ["simulate", "--dataset", "digits", "--clients", "8", "--clients-per-round", "4", "--samples-per-class",
           "10", "--rounds", "2", "--local-epochs", "1", "--eval-every", "2", "--out", tmp_path / "sim"]
    assert invoke(*sim).exit_code == 0
    result = invoke("export", "onnx", "--from", tmp_path / "sim" / "model.safetensors", "--model", "digits_cnn",
                    "--out", tmp_path / "digits.onnx")
    assert result.exit_code == 0, result.output
    card = card_of(tmp_path / "digits.onnx")
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert (card.model, card.run_id, card.server_round, card.accuracy) == ("digits_cnn", "sim", 2,
                                                                          report["final_accuracy"])
    from datasources import load_dataset

    x = load_dataset("digits").x_test[:5]
    np.savez(tmp_path / "x.npz", x=x)
    out = invoke("predict", "--model", tmp_path / "digits.onnx", "--json", tmp_path / "x.npz")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)["predictions"]
    assert len(rows) == 5 and all(set(r) == {"input", "label", "probabilities"} for r in rows)
    table = invoke("predict", "--model", tmp_path / "digits.onnx", tmp_path / "x.npz")
    assert table.exit_code == 0 and len(table.stdout.strip().splitlines()) == 5


def test_sparse_export_is_smaller_and_predicts_the_same(tmp_path, digits_model):
    params, masks = digits_model
    (tmp_path / "m.safetensors").write_bytes(encode_model_file(params, masks, {"model": "digits_cnn"}))
    for flag, name in (("--no-sparse", "dense.onnx"), ("--sparse", "sparse.onnx")):
        assert invoke("export", "onnx", "--from", tmp_path / "m.safetensors", flag, "--out",
                      tmp_path / name).exit_code == 0
    assert (tmp_path / "sparse.onnx").stat().st_size < (tmp_path / "dense.onnx").stat().st_size
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))
    outs = [json.loads(invoke("predict", "--model", tmp_path / n, "--json", tmp_path / "x.npz").stdout)
            for n in ("dense.onnx", "sparse.onnx")]
    assert outs[0] == outs[1]


def test_bad_model_files_and_flags_are_clear_errors(tmp_path, digits_model):
    params, masks = digits_model
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "anon.safetensors").write_bytes(encode_model_file(params, masks, {}))
    out = tmp_path / "m.onnx"
    cases = [
        (["--from", tmp_path / "junk.safetensors"], "not a safetensors model file"),
        (["--from", tmp_path / "missing.safetensors"], "cannot read it"),
        (["--from", tmp_path / "anon.safetensors"], "does not name its model; give --model"),
        (["--from", tmp_path / "anon.safetensors", "--model", "resnet"], "unknown model 'resnet'"),
        (["--from", tmp_path / "anon.safetensors", "--model", "mnist_cnn"], "does not fit --model mnist_cnn"),
        (["--from", tmp_path / "anon.safetensors", "--run", "r"], "exactly one of --from"),
        ([], "exactly one of --from"),
        (["--run", "r"], "exactly one of --state-dir DIR"),
        (["--run", "r", "--state-dir", tmp_path], "holds no coordinator.sqlite3"),
        (["--from", tmp_path / "anon.safetensors", "--round", "3"], "go with --run"),
    ]
    for args, message in cases:
        result = invoke("export", "onnx", *args, "--out", out)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not out.exists()


def _store_with_run(state_dir, params, masks) -> CoordinatorStore:
    store = CoordinatorStore(state_dir)
    store.create_run("run-a", "", {"model": "digits_cnn", "eval": {"dataset": "digits"}})
    for r, accuracy in ((0, None), (1, 0.25), (2, None), (3, 0.5)):
        scaled = {n: t * (r + 1) for n, t in params.items()}
        store.save_model("run-a", r, scaled, masks)
        if r:
            store.add_round("run-a", {"round": r, "accuracy": accuracy})
    return store


def test_from_a_state_dir(tmp_path, digits_model):
    params, masks = digits_model
    _store_with_run(tmp_path / "state", params, masks).close()
    latest, second = tmp_path / "latest.onnx", tmp_path / "r2.onnx"
    assert invoke("export", "onnx", "--run", "run-a", "--state-dir", tmp_path / "state", "--out", latest).exit_code == 0
    assert invoke("export", "onnx", "--run", "run-a", "--round", "2", "--state-dir", tmp_path / "state",
                  "--out", second).exit_code == 0
    assert (card_of(latest).server_round, card_of(latest).accuracy) == (3, 0.5)
    assert (card_of(second).server_round, card_of(second).accuracy) == (2, 0.25)  # last accuracy at or before 2
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(second)).graph.initializer}
    np.testing.assert_allclose(weights["fc2.weight"], (params["fc2.weight"] * 3 * masks["fc2.weight"]).numpy())
    missing = invoke("export", "onnx", "--run", "run-a", "--round", "9", "--state-dir", tmp_path / "state",
                     "--out", tmp_path / "x.onnx")
    assert missing.exit_code == 2 and "no global model of round 9; saved rounds: 0..3" in missing.output
    unknown = invoke("export", "onnx", "--run", "nope", "--state-dir", tmp_path / "state", "--out", tmp_path / "x")
    assert unknown.exit_code == 2 and "no run 'nope'" in unknown.output


def test_from_a_state_dir_whose_store_is_postgresql(tmp_path, digits_model):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    params, masks = digits_model
    url = new_schema()
    store = CoordinatorStore(tmp_path / "state", url)
    store.create_run("run-pg", "", {"model": "digits_cnn", "eval": {"dataset": "digits"}})
    store.save_model("run-pg", 0, params, masks)
    store.close()
    out = tmp_path / "pg.onnx"
    done = invoke("export", "onnx", "--run", "run-pg", "--state-dir", tmp_path / "state", "--database-url", url,
                  "--out", out)
    assert done.exit_code == 0, done.output
    assert card_of(out).run_id == "run-pg"
    down = invoke("export", "onnx", "--run", "run-pg", "--state-dir", tmp_path / "state", "--database-url",
                  "postgresql+psycopg://nobody@127.0.0.1:1/x", "--out", tmp_path / "y.onnx")
    assert down.exit_code == 2 and "database_url" in down.output and "Traceback" not in down.output


def test_unreachable_api_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke("export", "onnx", "--run", "r", "--api", f"http://127.0.0.1:{port}", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "cannot reach the coordinator" in result.output


def test_predict_with_a_bad_model_is_a_clear_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    (tmp_path / "x.npz").write_bytes(b"")
    result = invoke("predict", "--model", tmp_path / "bad.onnx", tmp_path / "x.npz")
    assert result.exit_code == 2 and "cannot load it as an ONNX model" in result.output

