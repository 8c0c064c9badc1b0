"""The simulator's default path (sparse kernels, clients on worker threads) gives the report of the
dense batched path it replaced, and the same report with and without client batching (float rounding
aside: the sparse kernels sum in a different order than grouped dense convolutions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from feddst_cli.main import app
from feddst_core import native
from simulator.config import SimulationConfig
from simulator.engine import Simulation
from simulator.report import WALL_CLOCK_FIELDS

FIXTURE = Path(__file__).parent / "fixtures" / "report_before_sparse_batching.json"
runner = CliRunner()


def write_images(path: Path) -> Path:
    """28x28 grey images, 10 classes (a fixed random prototype per class plus noise): the mnist_cnn's input."""
    protos = np.random.default_rng(1234).random((10, 28, 28, 1), dtype=np.float32)

    def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        noise = np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)
        return (0.6 * protos[y] + 0.4 * noise).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = split(400, 1), split(100, 2)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def simulate(tmp_path: Path, name: str, *flags: str) -> dict:
    fixture = json.loads(FIXTURE.read_text())
    args = fixture["command"].split()[2:]  # drop "feddst simulate"
    args[args.index("--data-dir") + 1] = str(tmp_path / "images.npz")
    result = runner.invoke(app, ["simulate", *args, *flags, "--out", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / name / "report.json").read_text())


def assert_same_report(new: dict, old: dict) -> None:
    """Same rounds, densities and accuracies; losses and byte counts equal up to float rounding (an update's
    encoded size moves by a few bytes when a trained weight's last bits do)."""
    assert [r["round"] for r in new["rounds"]] == [r["round"] for r in old["rounds"]]
    for a, b in zip(new["rounds"], old["rounds"], strict=True):
        assert a["density"] == b["density"]
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=0.011)  # at most one local test image
        assert a["global_accuracy"] == pytest.approx(b["global_accuracy"], abs=0.011)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["upload_bytes"] == pytest.approx(b["upload_bytes"], rel=1e-4)
        assert a["download_bytes"] == pytest.approx(b["download_bytes"], rel=1e-4)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images.npz")


def test_the_default_trains_sparse_layers(images, monkeypatch):
    """The case the fixture covers really runs the sparse kernels (else the comparison below is dense vs dense)."""
    import simulator.engine as engine

    fixture = json.loads(FIXTURE.read_text())["report"]["config"]
    fixture = {k: v for k, v in fixture.items() if k not in ("kernels", "client_batching")}  # today's defaults
    config = SimulationConfig(**(fixture | {"data_dir": str(images), "out": "unused"}))
    assert config.kernels == "auto" and config.client_batching
    trainer_choice: dict[str, str] = {}
    real = engine.SparseLocalTrainer.train

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        trainer_choice.update(self.last_layer_kernels)
        return out

    monkeypatch.setattr(engine.SparseLocalTrainer, "train", spy)
    next(Simulation(config).run_rounds())
    expected_sparse = {"conv2", "fc1"} if native.available() else {"fc1"}
    assert expected_sparse <= {layer for layer, k in trainer_choice.items() if k == "sparse"}


def test_default_reproduces_the_report_of_the_old_dense_batched_path(tmp_path, images):
    old = json.loads(FIXTURE.read_text())["report"]
    new = simulate(tmp_path, "new")
    assert new["config"]["kernels"] == "auto" and old["config"]["kernels"] == "dense"
    assert_same_report(new, old)
    assert new["final_accuracy"] == pytest.approx(old["final_accuracy"], abs=0.011)


def test_batched_and_unbatched_reports_agree(tmp_path, images):
    batched = simulate(tmp_path, "batched")
    unbatched = simulate(tmp_path, "unbatched", "--no-client-batching")
    dense_batched = simulate(tmp_path, "dense", "--kernels", "dense")
    assert_same_report(batched, unbatched)
    assert_same_report(batched, dense_batched)
    for report in (batched, unbatched):
        for row in report["rounds"]:
            assert all(row[f] > 0 for f in WALL_CLOCK_FIELDS)
