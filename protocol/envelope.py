"""The envelope: framing, integrity (CRC-32) and authentication (HMAC-SHA256 or Ed25519) of a payload.

Byte layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"FDST" (46 44 53 54)
    4       1     protocol version (this implementation: 1)
    5       1     message type (1 Register, 2 Status, 3 Task, 4 ModelBroadcast, 5 Update,
                  6 Ack, 7 Abort, 8 RunCompleted)
    6       1     auth algorithm: 0 none, 1 HMAC-SHA256 (32-byte tag),
                  2 Ed25519 (64-byte signature, see protocol/ed25519.py)
    7       1     flags, must be 0
    8       4     u32 server round
    12      8     u64 sequence number (per sender, increasing)
    20      8     u64 timestamp, Unix time in milliseconds
    28      1     u8 run id length R (0..64)
    29      1     u8 sender id length S (1..64)
    30      4     u32 payload length P
    34      R     run id (ASCII identifier, empty for Register/Status)
    34+R    S     sender id (ASCII identifier)
    34+R+S  P     payload (first byte: the message's schema version)
    ...     4     u32 CRC-32 (ISO-HDLC, as zlib.crc32) of every preceding byte
    ...     T     tag over every preceding byte including the CRC: HMAC-SHA256 (T = 32) if auth = 1,
                  Ed25519 signature (T = 64) if auth = 2, nothing if auth = 0

How tags are made and checked is delegated to signer / verifier objects (:mod:`protocol.auth`).

Only the first 5 bytes (magic and version) are guaranteed stable across protocol versions; a
decoder reads them first and refuses any other version with :class:`UnsupportedVersionError`
before interpreting anything else. Checks then run in this order: sizes against limits and the
bytes present, CRC, authentication, payload.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from protocol.auth import (
    AUTH_ED25519,
    AUTH_HMAC_SHA256,
    AUTH_NAMES,
    AUTH_NONE,
    MIN_KEY_BYTES,
    TAG_BYTES,
    HmacKey,
    Signer,
    Verifier,
    as_signer,
)
from protocol.binary import as_byte_view
from protocol.checksum import crc32, crc32_keeping_gil
from protocol.errors import (
    AuthenticationError,
    ChecksumError,
    InvalidMessageError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedVersionError,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import IDENTIFIER_PATTERN

MAGIC = b"FDST"
CHUNK_MAGIC = b"FDSC"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
FIXED_HEADER = struct.Struct("<4sBBBBIQQBBI")
FIXED_HEADER_BYTES = FIXED_HEADER.size  # 34
CRC_BYTES = 4
MAX_ID_BYTES = 64
KNOWN_MESSAGE_TYPES = frozenset(range(1, 10))  # 8 = RunCompleted, 9 = DeviceError

KeySource = (bytes | Verifier | Mapping[str, "bytes | Verifier"] | Callable[[str], "bytes | Verifier | None"]
             | None)
"""A key for decoding: one key for every sender (HMAC ``bytes`` or a :class:`~protocol.auth.Verifier`,
e.g. the coordinator's Ed25519 public key), a mapping sender id -> key, or a lookup callable
returning the key or None (unknown sender). ``None`` disables verification."""

__all__ = ["AUTH_ED25519", "AUTH_HMAC_SHA256", "AUTH_NONE", "CHUNK_MAGIC", "MAGIC", "PROTOCOL_VERSION",
           "TAG_BYTES", "Envelope", "KeySource", "decode_envelope", "encode_envelope"]


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope; ``payload`` is a read-only view into the input bytes."""

    version: int
    message_type: int
    auth_algorithm: int
    server_round: int
    seq: int
    timestamp_ms: int
    run_id: str
    sender_id: str
    payload: memoryview
    checksum: int
    authenticated: bool

    @property
    def timestamp(self) -> float:
        """Unix time in seconds."""
        return self.timestamp_ms / 1000.0


def _is_identifier_bytes(raw: bytes) -> bool:
    try:
        return IDENTIFIER_PATTERN.fullmatch(raw.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def encode_envelope(message_type: int, run_id: str, server_round: int, sender_id: str, seq: int,
                    timestamp_ms: int, payload: bytes, key: bytes | Signer | None) -> bytes:
    """Frame ``payload`` and append the tag ``key`` makes (see :mod:`protocol.auth`).

    ``key``: None (auth 0, no tag), HMAC key bytes (at least 16), or any :class:`~protocol.auth.Signer`
    (e.g. :class:`protocol.ed25519.Ed25519Signer`).
    """
    run_raw = run_id.encode("ascii", "replace")
    sender_raw = sender_id.encode("ascii", "replace")
    if run_raw and not _is_identifier_bytes(run_raw):
        raise InvalidMessageError(f"run id {run_id!r} is not a valid identifier")
    if not _is_identifier_bytes(sender_raw):
        raise InvalidMessageError(f"sender id {sender_id!r} is not a valid identifier")
    signer = as_signer(key)
    auth = AUTH_NONE if signer is None else signer.algorithm
    try:
        header = FIXED_HEADER.pack(MAGIC, PROTOCOL_VERSION, message_type, auth, 0, server_round, seq,
                                   timestamp_ms, len(run_raw), len(sender_raw), len(payload))
    except struct.error as error:
        raise InvalidMessageError(f"envelope field out of range: {error}") from error
    parts = [header, run_raw, sender_raw, payload]
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    parts.append(struct.pack("<I", crc))
    if signer is None:
        return b"".join(parts)
    body = b"".join(parts)
    tag = signer.sign(body)
    if len(tag) != TAG_BYTES[auth]:
        raise InvalidMessageError(f"{AUTH_NAMES[auth]} signer returned {len(tag)} bytes, expected {TAG_BYTES[auth]}")
    return body + tag


def _as_verifier(found: object, sender_id: str) -> Verifier:
    if isinstance(found, bytes | bytearray):
        if len(found) < MIN_KEY_BYTES:
            raise AuthenticationError(f"configured key is shorter than {MIN_KEY_BYTES} bytes")
        return HmacKey(bytes(found))
    if isinstance(found, Verifier):
        return found
    raise AuthenticationError(f"key lookup for {sender_id!r} returned neither bytes nor a Verifier")


def _resolve_key(key: KeySource, sender_id: str) -> Verifier | None:
    if key is None:
        return None
    if isinstance(key, bytes | bytearray | Verifier):
        return _as_verifier(key, sender_id)
    if isinstance(key, Mapping):
        found = key.get(sender_id)
    else:
        try:
            found = key(sender_id)
        except KeyError:
            found = None
    if found is None:
        raise AuthenticationError(f"no key for sender {sender_id!r}")
    return _as_verifier(found, sender_id)


def decode_envelope(data: bytes | bytearray | memoryview, key: KeySource = None, *,
                    limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Check and unframe one message; raises only :class:`ProtocolError` subclasses.

    With a ``key`` (see :data:`KeySource`) the message must carry a valid tag of the key's
    algorithm made with the sender's key, else :class:`AuthenticationError` (an unsigned message,
    or one signed with another algorithm, is refused). With ``key=None`` the tag, if any, is not
    verified and ``authenticated`` is False.
    """
    view = as_byte_view(data)
    size = len(view)
    if size > limits.max_message_bytes:
        raise LimitExceededError(f"message of {size} bytes exceeds limit {limits.max_message_bytes}")
    if size < 5:
        raise TruncatedError(f"message of {size} bytes is shorter than magic + version")
    magic = bytes(view[:4])
    if magic != MAGIC:
        if magic == CHUNK_MAGIC:
            raise MalformedError("this is a chunk: feed it to ChunkReassembler first")
        raise MalformedError(f"bad magic {magic!r}, expected {MAGIC!r}")
    version = view[4]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"protocol version {version} is not supported (supported: {sorted(SUPPORTED_VERSIONS)})"
        )
    if size < FIXED_HEADER_BYTES:
        raise TruncatedError(f"message of {size} bytes is shorter than the {FIXED_HEADER_BYTES}-byte header")
    (_, _, message_type, auth, flags, server_round, seq, timestamp_ms, run_length, sender_length,
     payload_length) = FIXED_HEADER.unpack_from(view, 0)
    if message_type not in KNOWN_MESSAGE_TYPES:
        raise MalformedError(f"unknown message type {message_type}")
    if auth not in TAG_BYTES:
        raise MalformedError(f"unknown auth algorithm {auth}")
    if flags != 0:
        raise MalformedError(f"reserved flags byte is {flags}, must be 0")
    if run_length > MAX_ID_BYTES or not 1 <= sender_length <= MAX_ID_BYTES:
        raise MalformedError("run id or sender id length out of range")
    payload_start = FIXED_HEADER_BYTES + run_length + sender_length
    crc_start = payload_start + payload_length
    expected_size = crc_start + CRC_BYTES + TAG_BYTES[auth]
    if expected_size > limits.max_message_bytes:
        raise LimitExceededError(f"declared message size {expected_size} exceeds {limits.max_message_bytes}")
    if size < expected_size:
        raise TruncatedError(f"message declares {expected_size} bytes, {size} present")
    if size > expected_size:
        raise MalformedError(f"{size - expected_size} trailing bytes after the message")
    (stored_crc,) = struct.unpack_from("<I", view, crc_start)
    if crc32_keeping_gil(view[:crc_start]) != stored_crc:
        raise ChecksumError("CRC-32 mismatch: the message was corrupted")
    run_raw = bytes(view[FIXED_HEADER_BYTES : FIXED_HEADER_BYTES + run_length])
    sender_raw = bytes(view[FIXED_HEADER_BYTES + run_length : payload_start])
    if (run_raw and not _is_identifier_bytes(run_raw)) or not _is_identifier_bytes(sender_raw):
        raise MalformedError("run id or sender id is not a valid identifier")
    sender_id = sender_raw.decode("ascii")
    verifier = _resolve_key(key, sender_id)
    if verifier is not None:
        if auth != verifier.algorithm:
            raise AuthenticationError(f"message from {sender_id!r} is authenticated with {AUTH_NAMES[auth]}, "
                                      f"expected {AUTH_NAMES.get(verifier.algorithm, verifier.algorithm)}")
        tag_start = crc_start + CRC_BYTES
        if not verifier.verify(view[:tag_start], bytes(view[tag_start:])):
            raise AuthenticationError(f"{AUTH_NAMES[auth]} tag does not verify for sender {sender_id!r}")
    return Envelope(version, message_type, auth, server_round, seq, timestamp_ms, run_raw.decode("ascii"),
                    sender_id, view[payload_start:crc_start], stored_crc, verifier is not None)
