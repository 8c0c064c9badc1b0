"""The terminal client against ``feddst cloud serve`` as deployed (uvicorn subprocess, embedded broker,
``--log-level info``) with protocol-level fake devices: create from a TOML file plus flags, watch
round lines, ls/report/devices tables and JSON, model download, delete, one-line API errors with
exit 1; and the server's stderr: every line has a time and a level, one INFO line per round."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
from fake_devices import FakeDevice
from served_coordinator import create_token, feddst_env, served_coordinator

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def feddst(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feddst_cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_terminal_client_drives_a_run_and_the_server_logs_one_line_per_round(tmp_path):
    env = feddst_env()
    env.pop("FEDDST_API_TOKEN", None)
    state = tmp_path / "state"
    stderr_path = tmp_path / "serve.stderr"
    devices: list[FakeDevice] = []
    with served_coordinator(state, "--log-level", "info", "--heartbeat-s", "1", stderr_path=stderr_path) as serve:
        try:
            _drive_a_run(env, serve.url, serve.broker_port, state, tmp_path, devices)
        finally:
            for device in devices:
                device.stop()
    log_lines = [line for line in stderr_path.read_text().splitlines() if line.strip()]
    unformatted = [line for line in log_lines if not LOG_LINE.match(line)]
    assert not unformatted, unformatted[:5]
    assert any(" WARNING cloud.app: no API tokens yet" in line for line in log_lines)
    rounds = [line for line in log_lines if re.search(r" INFO cloud\.coordinator: run \S+ round \d/2: ", line)]
    assert len(rounds) == 2 and "2/2 devices" in rounds[1], rounds
    assert any(" INFO uvicorn.access: " in line for line in log_lines)


def _drive_a_run(env: dict, base: str, broker_port: int, state, tmp_path, devices: list[FakeDevice]) -> None:
    """Every client command against the served coordinator (``devices`` collects the fakes started)."""
    deadline = time.monotonic() + 120
    env["FEDDST_API_URL"] = base
    refused = feddst(env, "cloud", "runs", "ls")
    assert refused.returncode == 1 and refused.stderr.startswith("error: HTTP 401: ")
    assert len(refused.stderr.strip().splitlines()) == 1
    made = create_token(state, "operator")
    assert made.returncode == 0, made.stderr
    env["FEDDST_API_TOKEN"] = made.stdout.strip()

    devices.extend(FakeDevice(f"dev-{i:03d}", broker_port, index=i).start() for i in range(2))
    listed: list = []
    while len([d for d in listed if d["status"] == "online"]) < 2:
        assert time.monotonic() < deadline, "devices did not come online"
        time.sleep(0.3)
        listed = json.loads(feddst(env, "cloud", "devices", "ls", "--json").stdout)
    table = feddst(env, "cloud", "devices", "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "STATE"] and len(table) == 3
    assert all(re.match(r"dev-00\d\s+online\s", line) for line in table[1:]), table

    bad = feddst(env, "cloud", "runs", "create", "--set", "sparsity=1.5")
    assert bad.returncode == 1 and re.fullmatch(r"error: HTTP 422: sparsity: .*less than 1.*\n", bad.stderr)

    _run_lifecycle(env, base, tmp_path)


def _run_lifecycle(env: dict, base: str, tmp_path) -> None:
    """create --start, watch, ls, report, model, delete of one 2-round run."""
    config = tmp_path / "run.toml"
    config.write_text('model = "digits_cnn"\nrounds = 5\nlocal_epochs = 0\nround_timeout_s = 20\n'
                      '[eval]\ndataset = "digits"\nclients = 2\nsamples_per_class = 10\neval_every = 1\n')
    created = feddst(env, "cloud", "runs", "create", str(config), "--rounds", "2", "--clients-per-round", "2",
                     "--name", "cli", "--set", "eval.classes_per_client=2", "--start")
    assert created.returncode == 0, created.stderr
    run_id = created.stdout.strip()
    watched = feddst(env, "cloud", "runs", "watch", run_id, "--interval", "0.2")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], lines
    assert re.match(r"round 2/2  accuracy \d+\.\d\d%  up [\d.]+ MB  down [\d.]+ MB  devices 2/2  [\d.]+ s$",
                    lines[1]), lines[1]
    assert watched.stderr.strip().endswith(f"{run_id}: completed")

    runs = json.loads(feddst(env, "cloud", "runs", "ls", "--json").stdout)
    assert [(r["id"], r["name"], r["status"], r["rounds_done"]) for r in runs] == [(run_id, "cli", "completed",
                                                                                     2)]
    detail = httpx.get(f"{base}/api/runs/{run_id}", headers={"Authorization": f"Bearer {env['FEDDST_API_TOKEN']}"})
    assert detail.json()["config"]["rounds"] == 2 and detail.json()["config"]["eval"]["clients"] == 2
    report = feddst(env, "cloud", "runs", "report", run_id).stdout.splitlines()
    header = next(i for i, line in enumerate(report) if line.startswith("ROUND"))
    assert [line.split()[0] for line in report[header + 1:]] == ["1", "2"]
    total_up = detail.json()["total_upload_bytes"]
    assert f"upload {total_up / 1e6:.3f} MB" in "\n".join(report)

    out = tmp_path / "model.safetensors"
    assert feddst(env, "cloud", "runs", "model", run_id, "--out", str(out)).returncode == 0
    served = httpx.get(f"{base}/api/runs/{run_id}/model",
                       headers={"Authorization": f"Bearer {env['FEDDST_API_TOKEN']}"}).content
    assert out.read_bytes() == served and len(served) > 1000

    not_interrupted = feddst(env, "cloud", "runs", "resume", run_id)
    assert not_interrupted.returncode == 1 and not_interrupted.stderr == (
        f"error: HTTP 409: run {run_id} is completed; only an interrupted run can be resumed\n")
    assert feddst(env, "cloud", "runs", "delete", run_id).returncode == 0
    gone = feddst(env, "cloud", "runs", "report", run_id)
    assert gone.returncode == 1 and gone.stderr == f"error: HTTP 404: no run '{run_id}'\n"
