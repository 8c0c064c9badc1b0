"""``feddst cloud serve`` start-up: each bad setting prints ONE line naming it and what to do (no traceback)
and exits non-zero; an unreachable broker is not an error (it serves, degraded)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from brokers import free_port
from coordinator_process import CoordinatorProcess
from served_coordinator import feddst_env


def _serve(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--api-port",
                           str(free_port()), *args], env=feddst_env(), capture_output=True, text=True,
                          timeout=timeout_s)


def _one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_missing_device_keys_file(tmp_path):
    result = _serve("--state-dir", str(tmp_path / "s"), "--device-keys-file", str(tmp_path / "nope.json"))
    _one_error_line(result, "device_keys_file", "does not exist", "--device-keys-file")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"dev-1": "zz"}'])
def test_invalid_device_keys_file(tmp_path, content):
    keys = tmp_path / "keys.json"
    keys.write_text(content)
    result = _serve("--state-dir", str(tmp_path / "s"), "--device-keys-file", str(keys))
    _one_error_line(result, "device_keys_file", str(keys), "JSON object")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_state_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = _serve("--state-dir", str(locked / "state"))
    finally:
        locked.chmod(0o700)
    _one_error_line(result, "state_dir", "not writable", "--state-dir")


def test_state_dir_that_is_a_file(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    _one_error_line(_serve("--state-dir", str(not_a_dir)), "state_dir", "not writable", "--state-dir")


def test_bad_broker_url(tmp_path):
    result = _serve("--state-dir", str(tmp_path / "s"), "--broker", "http://127.0.0.1:1883")
    _one_error_line(result, "broker_url", "mqtt://HOST:PORT", "--broker")


def test_unknown_settings_key(tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text('brokr_url = "mqtt://127.0.0.1:1883"\n')
    result = _serve("--state-dir", str(tmp_path / "s"), "--config", str(config))
    _one_error_line(result, "unknown setting 'brokr_url'")


@pytest.mark.parametrize("value", ["0", '"lots"'])
def test_bad_receive_queue_bound(tmp_path, value):
    config = tmp_path / "cloud.toml"
    config.write_text(f"mqtt_receive_queue_bytes = {value}\n")
    result = _serve("--state-dir", str(tmp_path / "s"), "--config", str(config))
    _one_error_line(result, "mqtt_receive_queue_bytes")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())  # nothing half-written


def test_unreachable_broker_serves_degraded(tmp_path):
    served = CoordinatorProcess(tmp_path / "s", f"mqtt://127.0.0.1:{free_port()}")
    served.headers = {}
    try:
        with pytest.raises(AssertionError, match="did not come up"):  # start() waits for broker_connected
            served.start(timeout_s=15)
        assert served.process is not None and served.process.poll() is None  # still serving
        health = httpx.get(f"{served.url}/healthz", timeout=5).json()
        assert health["status"] == "degraded" and health["broker_connected"] is False
    finally:
        served.stop()
    assert "Traceback" not in served.log_text() and "not reachable" in served.log_text()
