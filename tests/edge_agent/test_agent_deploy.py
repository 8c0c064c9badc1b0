"""deploy/: the broker ACL generator works with a real mosquitto, and the shipped broker config loads."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from agent_harness import REPO, FakeCoordinator, agent_settings
from brokers import MosquittoBroker

from edge_agent.config import read_key_file
from protocol import Register

spec = importlib.util.spec_from_file_location("make_broker_acl", REPO / "deploy" / "make_broker_acl.py")
assert spec is not None and spec.loader is not None
make_broker_acl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_broker_acl)

STAY_ROOT = ["user root"] if os.geteuid() == 0 else []


def test_generated_acl_passwords_and_keys_work_with_mosquitto(tmp_path, start_agent) -> None:
    out = tmp_path / "fleet"
    assert make_broker_acl.main(["--range", "dev-", "4", "--keys", "--emqx", "--out", str(out)]) == 0
    credentials = json.loads((out / "credentials.json").read_text())
    assert set(credentials) == {"coordinator", "dev-000", "dev-001", "dev-002", "dev-003"}
    device_keys = json.loads((out / "device_keys.json").read_text())
    key = read_key_file(out / "keys" / "dev-003.hex")
    assert bytes.fromhex(device_keys["dev-003"]) == key and len(key) == 32
    assert "{deny, all}." in (out / "emqx_acl.conf").read_text()
    assert make_broker_acl.main(["--devices", "dev-004", "--range", "dev-", "4", "--keys", "--out", str(out)]) == 0
    assert json.loads((out / "credentials.json").read_text())["dev-003"] == credentials["dev-003"]  # kept
    assert read_key_file(out / "keys" / "dev-003.hex") == key

    acl = (out / "acl").read_text().splitlines()
    broker = MosquittoBroker(tmp_path / "broker", passwords=credentials, acl_lines=acl,
                             extra_config=STAY_ROOT).start()
    try:
        coordinator = FakeCoordinator(broker.port, password=credentials["coordinator"],
                                      device_keys=device_keys_bytes(device_keys))
        try:
            start_agent(agent_settings(broker.url, password=credentials["dev-003"]), key=key)
            got = coordinator.expect(Register)
            assert got.message.device_id == "dev-003" and got.decoded.envelope.authenticated
        finally:
            coordinator.close()
    finally:
        broker.stop()


def device_keys_bytes(keys: dict[str, str]) -> dict[str, bytes]:
    return {device: bytes.fromhex(value) for device, value in keys.items()}


def test_pattern_acl_confines_any_device_to_its_own_topics(tmp_path) -> None:
    out = tmp_path / "fleet"
    assert make_broker_acl.main(["--pattern", "--devices", "dev-a", "dev-b", "--out", str(out)]) == 0
    lines = (out / "acl").read_text().splitlines()
    assert any(line.startswith("pattern write feddst/v1/runs/+/update/%u") for line in lines)
    assert not any(line.startswith("user dev-") for line in lines)


def test_bad_ids_are_refused(tmp_path, capsys) -> None:
    assert make_broker_acl.main(["--devices", "bad/id", "--out", str(tmp_path / "x")]) == 2
    assert "not a valid identifier" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_parse() -> None:
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    assert len(units) == 2
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not problems, problems


def test_install_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "deploy" / "install_agent.sh")], check=True)
    assert Path(REPO / "deploy" / "install_agent.sh").stat().st_mode & 0o111
