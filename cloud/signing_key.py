"""The coordinator's Ed25519 signing key: one file, created on first use, readable by its owner only.

File format: the private key as PKCS#8 PEM (unencrypted), mode 0600, written atomically (temporary file,
fsync, rename). Devices hold only the public key, given to them as 64 lowercase hex characters (the raw
32-byte Ed25519 public key), e.g. in their enrollment bundle or the agent setting
``coordinator_public_key``.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from durable_files import write_file_durably

DEFAULT_SIGNING_KEY_NAME = "coordinator-signing.key"
"""File name of the signing key inside the coordinator's state dir when no path is configured."""


class SigningKeyError(ValueError):
    """The signing key file exists but is not a usable Ed25519 private key."""


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the key at ``path``; if there is no file, generate one and write it (mode 0600)."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{path}: not a PEM Ed25519 private key ({exc}); move it away to generate "
                                  "a new one (devices then need the new public key)") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path}: holds a {type(key).__name__}, expected an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(path, pem)
    return key


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably with mode 0600 (for secrets;
    :func:`durable_files.write_file_durably`)."""
    write_file_durably(path, data, mode=0o600)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key as 64 lowercase hex characters (what devices are given)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()
