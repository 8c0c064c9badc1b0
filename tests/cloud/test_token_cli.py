"""``feddst cloud token create|ls|revoke`` as a user runs them (subprocesses), against a real coordinator."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from coordinator_harness import make_coordinator
from fastapi.testclient import TestClient

from cloud.app import create_app

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def feddst(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra_env}
    return subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "token", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_create_prints_one_token_line_that_the_coordinator_accepts_until_revoked(mosquitto, tmp_path):
    state = tmp_path / "state"
    created = feddst("create", "--role", "operator", "--state-dir", str(state), "--name", "ci")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"feddst_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", lines[0])
    token, token_id = lines[0], lines[0].split("_")[1]
    assert token_id in created.stderr and "shown only once" in created.stderr
    coordinator = make_coordinator(mosquitto.url, state)  # a coordinator on the same state dir
    try:
        with TestClient(create_app(coordinator=coordinator),
                        headers={"Authorization": f"Bearer {token}"}) as client:
            assert client.post("/api/runs", json={}).status_code == 201
            listed = feddst("ls", "--state-dir", str(state))
            assert listed.returncode == 0, listed.stderr
            row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
            assert row.split()[1:3] == ["operator", "active"] and row.endswith("ci")
            assert token not in listed.stdout and token.split("_")[2] not in listed.stdout
            assert row.split()[5] != "-"  # last used: just now
            revoked = feddst("revoke", token_id, "--state-dir", str(state))
            assert revoked.returncode == 0, revoked.stderr
            assert client.get("/api/runs").status_code == 401
            assert "revoked" in feddst("ls", "--state-dir", str(state)).stdout
    finally:
        coordinator.close()


def test_state_dir_from_the_environment_or_a_config_file(tmp_path):
    env_dir, file_dir = tmp_path / "from-env", tmp_path / "from-file"
    assert feddst("create", "--role", "viewer", FEDDST_CLOUD_STATE_DIR=str(env_dir)).returncode == 0
    config = tmp_path / "coordinator.toml"
    config.write_text(f'state_dir = "{file_dir}"\n')
    assert feddst("create", "--role", "admin", "-c", str(config)).returncode == 0
    assert " viewer " in feddst("ls", "--state-dir", str(env_dir)).stdout
    assert " admin " in feddst("ls", "-c", str(config)).stdout


def test_bad_role_unknown_id_and_missing_state_dir_are_clear_errors(tmp_path):
    bad_role = feddst("create", "--role", "root", "--state-dir", str(tmp_path / "s"))
    assert bad_role.returncode == 2 and "root" in bad_role.stderr and bad_role.stdout == ""
    assert not (tmp_path / "s").exists()
    missing = feddst("ls", "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no coordinator state" in missing.stderr
    assert not (tmp_path / "nowhere").exists()
    assert feddst("create", "--role", "viewer", "--state-dir", str(tmp_path / "s")).returncode == 0
    unknown = feddst("revoke", "0123456789ab", "--state-dir", str(tmp_path / "s"))
    assert unknown.returncode == 1 and "no API token with id '0123456789ab'" in unknown.stderr
