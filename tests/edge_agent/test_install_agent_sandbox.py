"""deploy/install_agent.sh really run, as root, in a private mount namespace.

``/etc`` and ``/var`` are overlays whose upper layers live in the test's temp dir, so the script's
user, settings files, unit and its enabling land there and never on the host; ``PREFIX`` points at
the temp dir. Only what needs the network is replaced, and with recorders, not fakes of the checks:
``apt-get`` and the venv's ``pip`` log their arguments and succeed; the venv's ``python`` is this
interpreter (it has torch and, on ``PYTHONPATH``, this tree), so the script's own import, torch and
native-kernel checks run for real. The settings it writes are then read by the agent's own loader.
(The whole install, network and all, runs in an emulated arm64 Debian: ``make test-arm64``.)
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_install_scripts import DEPLOY, REPO, make_wheel

from edge_agent.config import AgentConfigError, load_settings

# Overlays /etc and /var, then runs the script given as arguments; the mounts vanish with the namespace.
ENTER_SANDBOX = """set -e
for dir in etc var; do
  mkdir -p "$SANDBOX/upper/$dir" "$SANDBOX/work/$dir"
  mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$SANDBOX/upper/$dir,workdir=$SANDBOX/work/$dir" "/$dir"
done
exec bash "$@"
"""

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "%s"
"""


def can_overlay(tmp_path: Path) -> str:
    """'' if this process can make the sandbox, else why not."""
    if os.geteuid() != 0:
        return "the install script needs root"
    if shutil.which("unshare") is None or shutil.which("useradd") is None:
        return "needs unshare and useradd (util-linux, passwd)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", ENTER_SANDBOX,
                            "sandbox", "-c", "true"], env={**os.environ, "SANDBOX": str(tmp_path / "probe")},
                           capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"cannot mount an overlay in a mount namespace: {probe.stderr.strip()}"


def fake_venv(prefix: Path, calls: Path) -> None:
    """A venv whose python is this interpreter and whose pip only records what it was asked to do."""
    bin_dir = prefix / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {"python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
               "pip": RECORDER % calls,
               "feddst": f'#!/bin/sh\nexec "{sys.executable}" -m feddst_cli.main "$@"\n'}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def owner(path: Path, upper_etc: Path) -> tuple[str, str]:
    """(user, group) names of ``path``, looked up in the sandbox's /etc (where the script made feddst)."""
    def names(file: str) -> dict[int, str]:
        rows = [line.split(":") for line in (upper_etc / file).read_text().splitlines()]
        return {int(row[2]): row[0] for row in rows} | {0: "root"}
    info = path.stat()
    return names("passwd").get(info.st_uid, str(info.st_uid)), names("group").get(info.st_gid, str(info.st_gid))


COORDINATOR_KEY = "c0ffee" + "ab" * 29  # 64 hex characters, as `feddst cloud keys public` prints them


def run_install(sandbox: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """install_agent.sh ARGS in the sandbox (the same upper layers each time: a re-run sees what the last left)."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", ENTER_SANDBOX, "sandbox",
                           str(DEPLOY / "install_agent.sh"), *args], env={**env, "SANDBOX": str(sandbox)},
                          capture_output=True, text=True, timeout=300)


def recording_env(tmp_path: Path, prefix: Path, calls: Path) -> dict[str, str]:
    """The script's environment: PREFIX in the temp dir, a recording apt-get first on PATH, this tree importable."""
    fake_venv(prefix, calls)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "apt-get").write_text(RECORDER % calls)
    (stubs / "apt-get").chmod(0o755)
    return {**os.environ, "PREFIX": str(prefix), "PYTHONPATH": str(REPO), "PATH": f"{stubs}:{os.environ['PATH']}"}


def test_install_agent_writes_working_settings_with_the_documented_modes(tmp_path: Path) -> None:
    why_not = can_overlay(tmp_path)
    if why_not:
        pytest.skip(why_not)
    sandbox, prefix, calls = tmp_path / "sandbox", tmp_path / "opt-feddst", tmp_path / "calls"
    env = recording_env(tmp_path, prefix, calls)
    key_file, password_file = tmp_path / "dev-003.hex", tmp_path / "pw.txt"
    key_file.write_text("ab" * 32 + "\n")
    password_file.write_text("s3cret\n")
    coordinator_key_file = tmp_path / "coordinator.pub"  # `feddst cloud keys public > coordinator.pub`
    coordinator_key_file.write_text(COORDINATOR_KEY.upper() + "\n")
    wheel = make_wheel(tmp_path / "feddst_edge-0.1.0-py3-none-any.whl")
    host_had_feddst = Path("/etc/feddst").exists()
    result = run_install(sandbox, env, "--device-id", "dev-003", "--broker", "mqtt://broker.lan:1883",
                         "--key-file", str(key_file), "--password-file", str(password_file),
                         "--coordinator-public-key", str(coordinator_key_file), "--source", str(wheel),
                         "--torch", "pypi", "--partition", "3/8", "--no-start")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "installed; start with: systemctl start feddst-agent.service" in result.stdout
    assert "no --coordinator-public-key" not in result.stderr
    assert Path("/etc/feddst").exists() == host_had_feddst, "the install escaped the sandbox"

    etc = sandbox / "upper" / "etc"
    recorded = calls.read_text().splitlines()
    assert any(line.startswith("apt-get install") and "python3-venv" in line for line in recorded)
    assert f"pip install -q --no-deps --force-reinstall {wheel}" in recorded
    assert any(line.startswith("pip install -q torch==") for line in recorded)
    assert any(line.startswith("feddst:x:") for line in (etc / "passwd").read_text().splitlines())
    expected = {"agent.toml": (0o640, ("root", "feddst")), "agent.key": (0o640, ("root", "feddst")),
                "agent.env": (0o600, ("root", "root"))}
    for name, (mode, who) in expected.items():
        path = etc / "feddst" / name
        assert (stat.S_IMODE(path.stat().st_mode), owner(path, etc)) == (mode, who), name
    assert (etc / "feddst" / "agent.key").read_text() == key_file.read_text()
    assert (etc / "feddst" / "agent.env").read_text() == "FEDDST_PASSWORD=s3cret\n"
    wants = etc / "systemd" / "system" / "multi-user.target.wants" / "feddst-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/feddst-agent.service"
    assert (etc / "systemd" / "system" / "feddst-agent.service").read_bytes() == \
        (DEPLOY / "systemd" / "feddst-agent.service").read_bytes()
    assert (sandbox / "upper" / "var" / "lib" / "feddst").is_dir()

    # The agent's own loader accepts what the script wrote (the key path is the sandbox's /etc).
    toml = (etc / "feddst" / "agent.toml").read_text().replace("/etc/feddst/agent.key",
                                                               str(etc / "feddst" / "agent.key"))
    (tmp_path / "agent.toml").write_text(toml)
    settings = load_settings({}, environ={}, config_file=tmp_path / "agent.toml")
    assert (settings.device_id, settings.broker_url, settings.partition) == ("dev-003", "mqtt://broker.lan:1883", "3/8")
    assert settings.key_file == str(etc / "feddst" / "agent.key")
    assert settings.coordinator_public_key_bytes == bytes.fromhex(COORDINATOR_KEY)  # --coordinator-public-key FILE

    # Re-run after a key rotation: the kept agent.toml gets the new key (given as hex) and nothing else changes.
    written = (etc / "feddst" / "agent.toml").read_text()
    rotated = "5e" * 32
    result = run_install(sandbox, env, "--device-id", "dev-003", "--broker", "mqtt://broker.lan:1883",
                         "--coordinator-public-key", rotated, "--source", str(wheel), "--torch", "pypi", "--no-start")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "keeping the existing /etc/feddst/agent.toml" in result.stdout
    path = etc / "feddst" / "agent.toml"
    assert (stat.S_IMODE(path.stat().st_mode), owner(path, etc)) == (0o640, ("root", "feddst"))
    kept = path.read_text()
    assert [line for line in kept.splitlines() if "coordinator_public_key" in line] == \
        [f'coordinator_public_key = "{rotated}"  # feddst cloud keys public']
    assert kept.replace(rotated, COORDINATOR_KEY) == written


def test_install_agent_without_a_coordinator_key_warns_that_the_agent_will_not_start(tmp_path: Path) -> None:
    why_not = can_overlay(tmp_path)
    if why_not:
        pytest.skip(why_not)
    sandbox, prefix, calls = tmp_path / "sandbox", tmp_path / "opt-feddst", tmp_path / "calls"
    env = recording_env(tmp_path, prefix, calls)
    wheel = make_wheel(tmp_path / "feddst_edge-0.1.0-py3-none-any.whl")
    result = run_install(sandbox, env, "--device-id", "dev-003", "--broker", "mqtt://broker.lan:1883",
                         "--source", str(wheel), "--torch", "pypi", "--no-start")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no --coordinator-public-key: the agent will refuse to start" in result.stderr
    toml = sandbox / "upper" / "etc" / "feddst" / "agent.toml"
    assert "coordinator_public_key" not in toml.read_text()
    with pytest.raises(AgentConfigError, match="coordinator public key"):
        load_settings({}, environ={}, config_file=toml)
