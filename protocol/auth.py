"""Envelope authentication as an interface: signer objects (encode) and verifier objects (decode).

The envelope (``protocol/envelope.py``) does not know how a tag is made; it asks an object:

* a :class:`Signer` has ``algorithm`` (the envelope's auth byte), ``tag_bytes`` and
  ``sign(data) -> tag`` over every byte before the tag (CRC included);
* a :class:`Verifier` has ``algorithm`` and ``verify(data, tag) -> bool``.

Two algorithms exist (``docs/protocol.md`` section 4):

* ``AUTH_HMAC_SHA256`` (1): :class:`HmacKey`, a per-device secret shared by that device and the
  coordinator only (standard library ``hmac``). It is both a signer and a verifier.
* ``AUTH_ED25519`` (2): the coordinator's signature; devices hold only its public key.
  :mod:`protocol.ed25519` implements it with the ``cryptography`` package, imported only when an
  Ed25519 object is built, so ``import protocol`` still needs nothing beyond numpy and zstandard.

A plain ``bytes`` key, where the API accepts one, means ``HmacKey(key)`` (the historical form).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from protocol.errors import InvalidMessageError

AUTH_NONE = 0
AUTH_HMAC_SHA256 = 1
AUTH_ED25519 = 2
TAG_BYTES = {AUTH_NONE: 0, AUTH_HMAC_SHA256: 32, AUTH_ED25519: 64}
"""Bytes of the tag that follows the CRC, per auth algorithm."""
AUTH_NAMES = {AUTH_NONE: "none", AUTH_HMAC_SHA256: "HMAC-SHA256", AUTH_ED25519: "Ed25519"}
MIN_KEY_BYTES = 16
"""Shortest HMAC key accepted (32 random bytes recommended)."""


@runtime_checkable
class Signer(Protocol):
    """Makes the tag of an envelope: ``sign(every byte before the tag) -> tag_bytes bytes``."""

    @property
    def algorithm(self) -> int: ...

    @property
    def tag_bytes(self) -> int: ...

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class Verifier(Protocol):
    """Checks the tag of an envelope made with ``algorithm``; ``verify`` never raises for a bad tag."""

    @property
    def algorithm(self) -> int: ...

    def verify(self, data: bytes | memoryview, tag: bytes) -> bool: ...


@dataclass(frozen=True)
class HmacKey:
    """HMAC-SHA256 with one secret key (at least 16 bytes): signs and verifies."""

    key: bytes = field(repr=False)
    algorithm: int = field(default=AUTH_HMAC_SHA256, init=False)
    tag_bytes: int = field(default=32, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes | bytearray) or len(self.key) < MIN_KEY_BYTES:
            raise InvalidMessageError(f"an HMAC key must be bytes of at least {MIN_KEY_BYTES} bytes")
        object.__setattr__(self, "key", bytes(self.key))

    def sign(self, data: bytes | memoryview) -> bytes:
        return hmac.digest(self.key, data, "sha256")

    def verify(self, data: bytes | memoryview, tag: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(self.key, data, "sha256"), bytes(tag))


_SIGNER_CLASSES: set[type] = set()  # classes an instance of which passed ``isinstance(key, Signer)``


def as_signer(key: bytes | Signer | None) -> Signer | None:
    """``bytes`` -> :class:`HmacKey`; a :class:`Signer` or None as is; anything else is an error.
    (The runtime ``Protocol`` check costs ~50 us, once per signed message: it is made once per class.)"""
    if key is None or isinstance(key, HmacKey):
        return key
    if isinstance(key, bytes | bytearray):
        return HmacKey(bytes(key))
    if (type(key) in _SIGNER_CLASSES or isinstance(key, Signer)) and key.algorithm in TAG_BYTES \
            and key.algorithm != AUTH_NONE:
        _SIGNER_CLASSES.add(type(key))
        return key
    raise InvalidMessageError(f"key must be bytes (HMAC) or a Signer, got {type(key).__name__}")
