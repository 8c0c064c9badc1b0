"""The coordinator's signing key file: created once, private, reloaded identically, bad files named."""

import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud.signing_key import SigningKeyError, load_or_create_signing_key, public_key_hex


def test_created_private_and_reloaded(tmp_path):
    path = tmp_path / "state" / "coordinator-signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(path)
    assert public_key_hex(again) == public_key_hex(key)
    # the hex form is what a device verifies with: an independent check through the raw public key
    signature = again.sign(b"task")
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex(key))).verify(signature, b"task")
    assert len(public_key_hex(key)) == 64


def test_bad_file_is_named(tmp_path):
    path = tmp_path / "k.pem"
    path.write_text("not a key")
    with pytest.raises(SigningKeyError, match="k.pem: not a PEM Ed25519 private key"):
        load_or_create_signing_key(path)
    assert path.read_text() == "not a key"  # never overwritten
