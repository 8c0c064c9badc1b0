"""`feddst trial run` end to end (embedded broker, coordinator, agent processes) and `feddst trial plan`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from feddst_cli.main import app
from field_trial.plan import FIRST_TASK_IMPORTS, device_seconds, measure_first_task_s
from field_trial.spec import PRESETS

SPEC = """
[trial]
name = "tiny"
algorithms = ["feddst", "fedavg"]
rounds = 2
clients_per_round = 2
upload_format = "float16"

[data]
dataset = "digits"
samples_per_class = 30

[train]
local_epochs = 1
batch_size = 16
lr = 0.05

[[devices]]
count = 2
profile = "lte-rural"
"""


def test_link_model_adds_latency_transfer_and_compute():
    p = PRESETS["lte-rural"]  # 1000 kbit/s up, 5000 down, 100 ms, 30 ms jitter, 1 % loss
    assert (p.uplink_kbps, p.downlink_kbps, p.latency_ms, p.jitter_ms, p.loss_pct) == (1000, 5000, 100, 30, 1)
    seconds = device_seconds(p, down_bytes=625_000, up_bytes=125_000, compute_s=2.0, contention=1.5)
    # four one-way trips (task, subscribe, model, update) of 50 ms + the agent shaper's mean jitter 15 ms
    assert seconds == pytest.approx(4 * 0.065 + 1.0 / 0.99 + 3.0 + 1.0 / 0.99)
    netem = device_seconds(p, down_bytes=625_000, up_bytes=125_000, compute_s=2.0, contention=1.5, shaper="netem")
    assert netem == pytest.approx(4 * 0.05 + 1.0 / 0.99 + 3.0 + 1.0 / 0.99)  # netem's jitter is symmetric
    first = device_seconds(p, down_bytes=625_000, up_bytes=125_000, compute_s=2.0, contention=1.5, first_task_s=4.0)
    assert first == pytest.approx(seconds + 6.0)  # the first task's start-up shares the cores like compute


def test_first_task_cost_is_the_imports_an_idle_agent_skipped():
    """The idle agent never imports torch (tests/edge_agent/test_agent_footprint.py); the imports the planner
    times are the ones that bring torch into a fresh interpreter, and timing them costs real seconds."""
    code = ("import sys; before = 'torch' in sys.modules; import edge_agent.agent; idle = 'torch' in sys.modules; "
            f"{FIRST_TASK_IMPORTS}; print(before, idle, 'torch' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert loaded.stdout.split() == ["False", "False", "True"]
    assert 0.05 < measure_first_task_s(runs=1) < 60


@pytest.mark.timeout(600)
def test_trial_run_writes_the_contract_files(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["trial", "run", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    trial = json.loads((out / "trial.json").read_text())
    assert trial["name"] == "tiny" and trial["spec"]["trial"]["upload_format"] == "float16"
    assert [r["algorithm"] for r in trial["runs"]] == ["feddst", "fedavg"]
    for run in trial["runs"]:
        report = json.loads((out / run["report"]).read_text())
        assert report["total_upload_bytes"] == run["total_upload_bytes"] > 0
        assert len(report["trial"]["round_seconds"]) == 2 and len(report["trial"]["predicted_round_s"]) == 2
        devices = report["trial"]["devices"]
        assert set(devices) == {"lte-rural-000", "lte-rural-001"}
        # the device side pays every payload byte plus MQTT framing, heartbeats and acks
        assert run["wire_upload_bytes"] >= run["total_upload_bytes"]
        assert run["wire_download_bytes"] >= run["total_download_bytes"]
        assert sum(d["payload_up"] for d in devices.values()) == run["total_upload_bytes"]
        # heartbeats (Status, counted by the coordinator) are part of what the devices sent beyond their updates
        t = report["trial"]
        assert 0 < t["status_upload_bytes"] <= run["wire_upload_bytes"] - run["total_upload_bytes"]
        assert t["heartbeat_share"] == pytest.approx(t["status_upload_bytes"] / t["wire_upload_bytes"])
    fd, fa = trial["runs"]
    assert fd["total_upload_bytes"] < fa["total_upload_bytes"]  # sparse updates are smaller
    page = (out / "trial.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and not re.search(r"(src|href)=['\"]https?:", page)
    assert (out / "trial.csv").read_text().splitlines()[0].startswith("algorithm,final_accuracy")


def test_trial_plan_prints_predictions(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('algorithms = ["feddst", "fedavg"]', 'algorithms = ["feddst"]'))
    result = CliRunner().invoke(app, ["trial", "plan", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output.strip().splitlines()[-1])["feddst"]
    assert planned["predicted_wall_clock_s"] > 2 * 0.1  # two rounds of at least the 100 ms latency
    assert planned["total_upload_bytes"] > 0


def test_bad_spec_is_a_clear_error(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("rounds = 2", "rounds = 0"))
    result = CliRunner().invoke(app, ["trial", "run", str(spec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "trial.rounds" in result.output and str(spec) in result.output
