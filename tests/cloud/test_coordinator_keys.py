"""`feddst cloud keys public` and the coordinator's key settings: the printed key is the one the
coordinator signs with (checked by verifying a real signed message), the removed shared key is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cloud.coordinator import Coordinator
from cloud.settings import CloudSettings
from feddst_cli.main import app
from protocol import Abort, AuthenticationError, decode_message
from protocol.ed25519 import Ed25519Verifier


def test_keys_public_prints_the_key_the_coordinator_signs_with(tmp_path, mosquitto):
    state = tmp_path / "state"
    result = CliRunner().invoke(app, ["cloud", "keys", "public", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert result.output.count("\n") == 1 and len(line) == 64 and int(line, 16) >= 0
    assert (state / "coordinator-signing.key").exists()  # created on first use
    again = CliRunner().invoke(app, ["cloud", "keys", "public", "--state-dir", str(state)])
    assert again.output.strip() == line  # the same key next time
    coordinator = Coordinator(CloudSettings(broker_url=mosquitto.url, state_dir=state, mqtt_username=None))
    try:
        assert coordinator.public_key_hex == line
        signed = coordinator._sign(Abort("run-1", 1, "x"))
        assert decode_message(signed, Ed25519Verifier(line)) == Abort("run-1", 1, "x")
        other = CliRunner().invoke(app, ["cloud", "keys", "public", "--state-dir", str(tmp_path / "other")])
        with pytest.raises(AuthenticationError):
            decode_message(signed, Ed25519Verifier(other.output.strip()))
    finally:
        coordinator.close()


def test_signing_key_file_setting_and_the_removed_shared_key(tmp_path):
    assert CloudSettings(state_dir=tmp_path).signing_key_path == tmp_path / "coordinator-signing.key"
    chosen = tmp_path / "keys" / "signing.pem"
    assert CloudSettings(state_dir=tmp_path, signing_key_file=chosen).signing_key_path == chosen
    result = CliRunner().invoke(app, ["cloud", "keys", "public", "--signing-key-file", str(chosen)])
    assert result.exit_code == 0 and chosen.exists()
    with pytest.raises(ValidationError, match="coordinator_key_hex .* no longer supported.*feddst cloud keys public"):
        CloudSettings(state_dir=tmp_path, coordinator_key_hex="00" * 32)
    refused = CliRunner().invoke(app, ["cloud", "keys", "public", "--state-dir", str(tmp_path)],
                                 env={"FEDDST_CLOUD_COORDINATOR_KEY_HEX": "00" * 32})
    assert refused.exit_code == 2 and "no longer supported" in refused.output
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    broken = CliRunner().invoke(app, ["cloud", "keys", "public", "--signing-key-file", str(bad)])
    assert broken.exit_code == 2 and "not a PEM Ed25519 private key" in broken.output
