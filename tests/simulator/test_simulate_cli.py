import csv
import json
import subprocess
import sys

import pytest
from simulate_args import SMALL
from typer.testing import CliRunner

from feddst_cli.main import app
from simulator.report import WALL_CLOCK_FIELDS

runner = CliRunner()


def run(args):
    return runner.invoke(app, ["simulate", *args])


def test_writes_report_csv_and_plot(tmp_path):
    result = run([*SMALL, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"algorithm", "config", "rounds", "final_accuracy", "total_upload_bytes",
                           "total_download_bytes"}
    assert report["algorithm"] == "feddst"
    flags = {"dataset", "data_dir", "partition", "clients", "classes_per_client", "samples_per_class", "beta",
             "clients_per_round", "rounds", "local_epochs", "batch_size", "lr", "momentum", "weight_decay",
             "algorithm", "sparsity", "readjust_ratio", "readjust_every", "readjust_until", "prox_mu",
             "server_momentum", "seed", "eval_every", "out"}
    assert flags <= set(report["config"])
    assert [r["round"] for r in report["rounds"]] == [2, 4]
    for row in report["rounds"]:
        assert set(row) == {"round", "accuracy", "global_accuracy", "upload_bytes", "download_bytes", "density",
                            "train_loss", "seconds", "elapsed_s"}
        assert 0.0 <= row["accuracy"] <= 1.0
    assert report["rounds"][0]["upload_bytes"] < report["rounds"][1]["upload_bytes"] == report["total_upload_bytes"]
    first, second = report["rounds"]
    assert all(r["seconds"] > 0 and r["train_loss"] > 0 for r in (first, second))
    # elapsed_s counts the unevaluated rounds too: round 4's total covers rounds 1..4, at least rounds 3 and 4 more
    assert second["elapsed_s"] > first["elapsed_s"] + second["seconds"] > first["elapsed_s"] >= first["seconds"]
    assert abs(report["rounds"][-1]["density"] - 0.2) < 1e-3
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [2, 4]
    assert (tmp_path / "accuracy_vs_upload.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final accuracy" in result.output


def test_same_seed_same_report(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run([*SMALL, "--out", str(a), "--seed", "3"]).exit_code == 0
    assert run([*SMALL, "--out", str(b), "--seed", "3"]).exit_code == 0
    assert run([*SMALL, "--out", str(c), "--seed", "4"]).exit_code == 0
    ra, rb, rc = (json.loads((d / "report.json").read_text()) for d in (a, b, c))
    ra["config"].pop("out"), rb["config"].pop("out"), rc["config"].pop("out")
    for report in (ra, rb, rc):  # wall-clock seconds are measured, not seeded
        for row in report["rounds"]:
            assert all(row.pop(f) > 0 for f in WALL_CLOCK_FIELDS)
    assert ra == rb
    assert ra["rounds"] != rc["rounds"]


def test_dense_fedavg_uploads_about_five_times_feddst(tmp_path):
    assert run([*SMALL, "--out", str(tmp_path / "d"), "--algorithm", "feddst"]).exit_code == 0
    assert run([*SMALL, "--out", str(tmp_path / "f"), "--algorithm", "fedavg"]).exit_code == 0
    sparse = json.loads((tmp_path / "d" / "report.json").read_text())["total_upload_bytes"]
    dense = json.loads((tmp_path / "f" / "report.json").read_text())["total_upload_bytes"]
    assert 0.15 < sparse / dense < 0.3


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], "--sparsity must be in [0, 1)"),
    (["--sparsity", "-0.2"], "--sparsity must be in [0, 1)"),
    (["--clients-per-round", "50"], "--clients-per-round (50) must be between 1 and --clients (12)"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--algorithm", "fedsgd"], "fedsgd"),
    (["--dataset", "mnist"], "needs --data-dir"),
    (["--distribution", "lognormal"], "--distribution must be one of uniform, er, erk"),
    (["--mask-init", "zeros"], "--mask-init must be magnitude or random"),
    (["--min-votes", "0"], "--min-votes must be >= 1"),
    (["--aggregation", "krum"], "krum"),
    (["--trim-fraction", "0.5"], "--trim-fraction must be in [0, 0.5)"),
    (["--clip-update-norm", "0"], "--clip-update-norm must be a finite number > 0"),
    (["--clip-update-norm", "nan"], "--clip-update-norm must be a finite number > 0"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
    result = run([*SMALL, "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x" / "report.json").exists()


def test_guardrail_flags_reach_the_strategy_and_the_report(tmp_path):
    result = run([*SMALL, "--out", str(tmp_path), "--aggregation", "trimmed_mean", "--trim-fraction", "0.25",
                  "--clip-update-norm", "0.5"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "report.json").read_text())["config"]
    assert (config["aggregation"], config["trim_fraction"], config["clip_update_norm"]) == ("trimmed_mean", 0.25, 0.5)
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    sim = Simulation(SimulationConfig(**{**config, "readjust_until": None}))
    c = sim.strategy.config
    assert (c.aggregation, c.trim_fraction, c.clip_update_norm) == ("trimmed_mean", 0.25, 0.5)
    default = json.loads(json.dumps(SimulationConfig(dataset="digits").to_json()))
    assert (default["aggregation"], default["clip_update_norm"]) == ("mean", None)


def test_missing_data_dir_is_a_clear_error_and_writes_nothing(tmp_path):
    result = run(["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte.gz" in result.output
    assert not (tmp_path / "o").exists()


def test_unsatisfiable_partition_is_explained(tmp_path):
    result = run(["--dataset", "digits", "--clients", "400", "--out", str(tmp_path / "o")])  # 400 x 2 x 20 > digits
    assert result.exit_code == 2
    assert "pathological partition cannot be satisfied" in result.output


def test_console_script_version_and_help():
    out = subprocess.run([sys.executable, "-m", "feddst_cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("feddst ")
    out = subprocess.run([sys.executable, "-m", "feddst_cli.main", "simulate", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--readjust-ratio" in out.stdout and "--clients-per-round" in out.stdout


def test_sparse_kernels_reproduce_masked_dense_training(tmp_path):
    common = [*SMALL, "--rounds", "3", "--eval-every", "1", "--readjust-every", "1", "--readjust-until", "3"]
    assert run([*common, "--out", str(tmp_path / "s"), "--kernels", "sparse"]).exit_code == 0
    assert run([*common, "--out", str(tmp_path / "d"), "--kernels", "dense", "--no-client-batching"]).exit_code == 0
    sparse = json.loads((tmp_path / "s" / "report.json").read_text())
    dense = json.loads((tmp_path / "d" / "report.json").read_text())
    for a, b in zip(sparse["rounds"], dense["rounds"], strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=0.01)
        assert a["density"] == b["density"]
    assert sparse["config"]["kernels"] == "sparse"


def test_one_worker_thread_trains_every_client(tmp_path):
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    sim = Simulation(SimulationConfig(dataset="digits", clients=12, clients_per_round=4, samples_per_class=10,
                                      rounds=1, local_epochs=1, client_batching=False))
    sim.workers = 1
    trained = sim.train_clients([0, 3, 5, 7], 0.0, 0.0, 1)
    assert [c for c, _ in trained] == [0, 3, 5, 7]


def test_npz_colour_images_train_the_cifar10_cnn(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "colour.npz"
    np.savez(path, x_train=rng.random((80, 32, 32, 3), dtype=np.float32), y_train=np.arange(80) % 4,
             x_test=rng.random((20, 32, 32, 3), dtype=np.float32), y_test=np.arange(20) % 4)
    result = run(["--dataset", "npz", "--data-dir", str(path), "--clients", "4", "--clients-per-round", "2",
                  "--samples-per-class", "5", "--rounds", "1", "--local-epochs", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["rounds"][0]["round"] == 1 and report["total_upload_bytes"] > 0


def _flat(output):
    """CLI output with rich's box borders and line wrapping removed."""
    return " ".join(output.replace("│", " ").split())


def _write_table(path, linear=((1.0, 0),), conv=((1.0, 0),)):
    from feddst_core.sparse import SparseThreshold, thresholds_to_dict

    table = {"linear": tuple(SparseThreshold(d, n) for d, n in linear),
             "conv": tuple(SparseThreshold(d, n) for d, n in conv)}
    path.write_text(json.dumps(thresholds_to_dict(table) | {"measured_on": {"machine": "aarch64"}}))
    return table


def test_kernel_thresholds_reach_the_trainer_and_the_report(tmp_path, monkeypatch):
    import simulator.engine as engine

    table = _write_table(tmp_path / "pi.json", linear=((0.3, 100),), conv=())
    seen = []
    real = engine.make_local_trainer

    def spy(spec, config, kernels="dense", thresholds=None):
        seen.append((kernels, thresholds))
        return real(spec, config, kernels, thresholds)

    monkeypatch.setattr(engine, "make_local_trainer", spy)
    result = run([*SMALL, "--rounds", "2", "--out", str(tmp_path / "o"), "--kernels", "auto",
                  "--kernel-thresholds", str(tmp_path / "pi.json")])
    assert result.exit_code == 0, result.output
    assert seen and all(s == ("auto", table) for s in seen)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert set(report) == {"algorithm", "config", "rounds", "final_accuracy", "total_upload_bytes",
                           "total_download_bytes"}
    assert report["config"]["kernel_thresholds"] == str(tmp_path / "pi.json")
    assert report["config"]["kernels"] == "auto"

    seen.clear()
    assert run([*SMALL, "--rounds", "1", "--out", str(tmp_path / "d"), "--kernels", "auto"]).exit_code == 0
    assert seen and all(s == ("auto", None) for s in seen)  # no flag: the built-in table
    assert json.loads((tmp_path / "d" / "report.json").read_text())["config"]["kernel_thresholds"] is None


def test_kernel_thresholds_config_reads_the_file_once(tmp_path):
    from simulator.config import SimulationConfig

    path = tmp_path / "t.json"
    table = _write_table(path)
    config = SimulationConfig(dataset="digits", kernels="auto", kernel_thresholds=str(path))
    assert config.kernel_threshold_table == table
    path.write_text("{}")
    assert config.kernel_threshold_table == table
    assert "kernel_threshold_table" not in config.to_json()
    assert SimulationConfig(dataset="digits").kernel_threshold_table is None


@pytest.mark.parametrize(("content", "problem"), [
    (None, "does not exist"),
    ("not json", "not valid JSON"),
    ('{"conv": [{"max_density": 2, "min_weights": 0}]}', "conv[0].max_density must be a number in [0, 1], got 2"),
    ('{"version": 3}', "version 3 is not supported"),
])
def test_bad_kernel_thresholds_give_clear_errors(tmp_path, content, problem):
    from simulator.config import SimulationConfig

    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="--kernel-thresholds: ") as err:
        SimulationConfig(dataset="digits", kernels="auto", kernel_thresholds=str(path))
    assert str(path) in str(err.value) and problem in str(err.value)
    result = runner.invoke(app, ["simulate", *SMALL, "--out", str(tmp_path / "x"), "--kernels", "auto",
                                 "--kernel-thresholds", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    text = _flat(result.output)
    assert f"--kernel-thresholds: {path}" in text and problem in text
    assert not (tmp_path / "x" / "report.json").exists()


def test_kernel_thresholds_without_auto_are_noted_as_unused(tmp_path):
    _write_table(tmp_path / "t.json")
    result = run([*SMALL, "--rounds", "1", "--out", str(tmp_path / "o"), "--kernels", "dense", "--kernel-thresholds",
                  str(tmp_path / "t.json")])  # dense is no longer the default (auto is)
    assert result.exit_code == 0, result.output
    assert "is unused with --kernels dense" in result.output


def test_help_explains_kernel_thresholds():
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _flat(result.output)
    assert "--kernel-thresholds" in text
    assert "python bench/sparse_kernels.py --calibrate --write-thresholds FILE" in text


def test_default_flags_run_on_the_built_in_digits(tmp_path):
    """No data flags: digits with the paper's partition shape, as many clients as digits can fill."""
    result = run(["--rounds", "1", "--local-epochs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "report.json").read_text())["config"]
    assert (config["dataset"], config["clients"], config["samples_per_class"]) == ("digits", 30, 20)


def test_writes_the_final_global_model_as_safetensors(tmp_path):
    """model.safetensors holds the final global model: evaluated on the digits test set it scores the
    report's final global accuracy, and its masks have the reported density."""
    import torch

    from datasources import load_dataset
    from feddst_core.model_file import decode_model_file
    from feddst_core.models import DIGITS_CNN, predict

    assert run([*SMALL, "--out", str(tmp_path)]).exit_code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    model = decode_model_file((tmp_path / "model.safetensors").read_bytes())
    assert model.metadata["model"] == "digits_cnn" and model.metadata["round"] == "4"
    assert model.metadata["dataset"] == "digits" and model.metadata["run_id"] == tmp_path.name
    assert float(model.metadata["accuracy"]) == report["final_accuracy"]
    assert set(model.params) == set(DIGITS_CNN.parameter_shapes()) and set(model.masks) == set(
        DIGITS_CNN.masked_names())
    data = load_dataset("digits")
    correct = predict(DIGITS_CNN, model.params, torch.from_numpy(data.x_test)).numpy() == data.y_test
    assert float(correct.mean()) == pytest.approx(report["rounds"][-1]["global_accuracy"])
    active = sum(int(m.sum()) for m in model.masks.values()) / sum(m.numel() for m in model.masks.values())
    assert active == pytest.approx(report["rounds"][-1]["density"], abs=1e-6)
    for name, mask in model.masks.items():
        assert (model.params[name][~mask] == 0).all()
