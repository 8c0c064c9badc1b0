"""Ed25519 signatures for the envelope (auth algorithm 2), backed by the ``cryptography`` package.

``cryptography`` is imported when an :class:`Ed25519Signer` or :class:`Ed25519Verifier` is built,
never by ``import protocol``: the protocol package itself depends only on numpy and zstandard,
and only the parties that use Ed25519 (the coordinator signing, agents verifying) need the
library, which the ``cloud`` and ``agent`` extras install.

The signature is pure Ed25519 (RFC 8032, not the pre-hashed variant) over every envelope byte
before it, CRC included: 64 bytes. Keys on the wire of configuration are raw 32-byte keys; the
public key is usually written as 64 hex characters (:func:`parse_public_key_hex`).
"""

from __future__ import annotations

import re
from typing import Any

from protocol.auth import AUTH_ED25519

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def parse_public_key_hex(text: str) -> bytes:
    """The 32 raw bytes of a public key written as 64 hex characters (whitespace around ignored).

    Raises ``ValueError`` saying what is wrong; does not import ``cryptography``.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected 64 hex characters, got {type(text).__name__}")
    digits = text.strip()
    if not _HEX64.fullmatch(digits):
        non_hex = any(c not in "0123456789abcdefABCDEF" for c in digits)
        raise ValueError("expected 64 hex characters (the raw 32-byte Ed25519 public key that `feddst cloud keys "
                         f"public` prints), got {len(digits)} characters{' with non-hex ones' if non_hex else ''}")
    return bytes.fromhex(digits)


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - the extras install it
        raise ImportError("Ed25519 envelopes need the 'cryptography' package: pip install cryptography") from exc
    return ed25519


class Ed25519Signer:
    """Signs envelopes with an Ed25519 private key (a ``cryptography`` key object or a 32-byte seed)."""

    algorithm = AUTH_ED25519
    tag_bytes = SIGNATURE_BYTES

    def __init__(self, private_key: Any) -> None:
        ed25519 = _ed25519()
        if isinstance(private_key, bytes | bytearray):
            if len(private_key) != 32:
                raise ValueError("an Ed25519 private key seed is 32 bytes")
            private_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(private_key))
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519 private key, got {type(private_key).__name__}")
        self._key = private_key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(bytes(data))

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.public_key)

    def __repr__(self) -> str:
        return f"Ed25519Signer(public_key={self.public_key_hex})"


class Ed25519Verifier:
    """Verifies Ed25519 envelope signatures with one public key (32 raw bytes or 64 hex characters)."""

    algorithm = AUTH_ED25519

    def __init__(self, public_key: bytes | str) -> None:
        raw = parse_public_key_hex(public_key) if isinstance(public_key, str) else bytes(public_key)
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
        ed25519 = _ed25519()
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ValueError(f"not a valid Ed25519 public key: {exc}") from exc
        self.public_key = raw

    def verify(self, data: bytes | memoryview, tag: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        if len(tag) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(bytes(tag), bytes(data))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"Ed25519Verifier(public_key={self.public_key.hex()})"
