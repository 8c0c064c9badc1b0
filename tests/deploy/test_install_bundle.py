"""``deploy/install_bundle.py`` (what ``install_agent.sh --bundle`` runs): a bundle from the real enrollment
service becomes agent files with the right modes, which the agent's own settings loader accepts."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from certificates import CertificateAuthority

from cloud.enrollment import EnrollmentService
from cloud.settings import CloudSettings
from cloud.store import CoordinatorStore
from edge_agent.config import load_settings, read_key_file

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "deploy" / "install_bundle.py"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def bundle_file(tmp_path: Path) -> tuple[Path, dict]:
    ca = CertificateAuthority(tmp_path / "pki")
    settings = CloudSettings(broker_url="mqtts://127.0.0.1:8883", device_broker_url="mqtts://broker.lan:8883",
                             ca_file=ca.cert_file, state_dir=tmp_path / "state", broker_admin="none")
    bundle = EnrollmentService(settings, CoordinatorStore(settings.state_dir)).enroll("dev-003")
    path = bundle.write(tmp_path / "dev-003.bundle.json")
    raw = json.loads(path.read_text())
    raw["mqtt_password"] = "a-password-from-the-broker"  # as with broker_admin = dynsec
    path.write_text(json.dumps(raw))
    return path, raw


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundle_installs_files_the_agent_loads(bundle_file, tmp_path: Path) -> None:
    path, raw = bundle_file
    shown = run_tool("show", str(path))
    assert shown.returncode == 0 and shown.stdout.split() == ["dev-003", "mqtts://broker.lan:8883"]
    etc = tmp_path / "etc-feddst"
    result = run_tool("install", str(path), "--etc", str(etc), "--group", "root")
    assert result.returncode == 0, result.stderr
    assert mode(etc / "agent.key") == 0o640 and mode(etc / "agent.env") == 0o600 and mode(etc / "ca.crt") == 0o644
    env = dict(line.split("=", 1) for line in (etc / "agent.env").read_text().splitlines() if "=" in line
               and not line.startswith("#"))
    assert env["FEDDST_PASSWORD"] == raw["mqtt_password"]
    assert env["FEDDST_COORDINATOR_PUBLIC_KEY"] == raw["coordinator_public_key"]
    settings = load_settings({}, environ=env)  # what systemd hands the agent
    assert settings.device_id == "dev-003" and settings.broker_url == "mqtts://broker.lan:8883"
    assert settings.password == raw["mqtt_password"]
    assert read_key_file(settings.key_file or "") == bytes.fromhex(raw["device_key_hex"])
    assert Path(settings.ca_file or "").read_text() == raw["ca_certificate_pem"]


@pytest.mark.parametrize("damage, message", [
    (lambda raw: "not json {", "not a readable JSON bundle"),
    (lambda raw: {**raw, "format": "zip"}, "not a FedDST device bundle"),
    (lambda raw: {**raw, "version": 2}, "version 2 is not supported"),
    (lambda raw: {**raw, "device_key_hex": "zz" * 32}, "'device_key_hex' is missing or malformed"),
    (lambda raw: {**raw, "mqtt_password": "pw\nFEDDST_BROKER=mqtt://evil:1883"}, "'mqtt_password'"),
    (lambda raw: {**raw, "device_id": "../etc"}, "'device_id'"),
    (lambda raw: {**raw, "broker_url": "http://x"}, "'broker_url'"),
    (lambda raw: {**raw, "coordinator_public_key": None}, "'coordinator_public_key'"),
    (lambda raw: {**raw, "ca_certificate_pem": "hello"}, "not a PEM certificate"),
    (lambda raw: {**raw, "mqtt_username": "dev-999"}, "must equal the device id"),
])
def test_bad_bundles_are_refused_and_nothing_is_written(bundle_file, tmp_path: Path, damage, message) -> None:
    path, raw = bundle_file
    damaged = damage(raw)
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    etc = tmp_path / "etc-feddst"
    result = run_tool("install", str(path), "--etc", str(etc))
    assert result.returncode == 2
    assert message in result.stderr
    assert not etc.exists()


def test_unknown_group_is_a_clear_error(bundle_file, tmp_path: Path) -> None:
    path, _ = bundle_file
    result = run_tool("install", str(path), "--etc", str(tmp_path / "etc"), "--group", "no-such-group-xyz")
    assert result.returncode == 2 and "no such group" in result.stderr


def test_install_script_offers_the_bundle_option() -> None:
    script = REPO / "deploy" / "install_agent.sh"
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True).stdout
    assert "--bundle" in usage
