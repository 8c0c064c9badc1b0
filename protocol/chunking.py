"""Splitting large encoded messages into packets and reassembling them.

A chunk is (little-endian)::

    offset  size  field
    0       4     magic b"FDSC"
    4       1     chunking version (1 or 2)
    5       1     flags, must be 0
    6       2     reserved, must be 0
    8       8     transfer id (BLAKE2b-64: version 1 of the whole message; version 2 of its edges, below)
    16      4     u32 total length of the whole message in bytes
    20      4     u32 chunk count
    24      4     u32 chunk index (0-based)
    28      ...   piece: bytes [index * piece_size, ...) of the message

Every chunk but the last carries ``piece_size = max_packet - 28`` bytes; the last carries the
rest. The reassembled message is an ordinary envelope (checked by its own CRC and tag), so
chunks themselves carry no checksum. Receivers check that every piece but the last has the same
size ``L``, that ``(count - 1) * L < total <= count * L`` and the last piece holds the rest, and
that the transfer id is the one its chunking version defines for the reassembled bytes
(``MalformedError`` otherwise). A message no larger than ``max_packet`` is sent as is
(no chunk header); :meth:`ChunkReassembler.add` passes such messages straight through.

Transfer ids: version 1, the BLAKE2b-64 of the whole message (one hash over every byte, by the sender
and again by the receiver: 0.18 ms of a 163 KB update); version 2, the BLAKE2b-64 of the message's
*edges*: its first ``EDGE_BYTES`` (64) bytes followed by its last 64 (the whole message when it is
shorter than 128 bytes), a constant-time hash. The edges of an envelope hold its fixed header (type,
round, seq, timestamp, id lengths), the start of its ids, its CRC-32 over every byte and its tag, so two
messages of a sender get the same version-2 id only if they agree there (and pieces mixed between them
still fail the envelope's CRC and tag). Receivers read both versions; :func:`split_into_chunks` writes
version 2 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from dataclasses import dataclass, field

from protocol.envelope import CHUNK_MAGIC, MAGIC
from protocol.errors import (
    InvalidMessageError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedVersionError,
)
from protocol.limits import DEFAULT_LIMITS, KIB, MIB

CHUNK_VERSION = 2
"""The chunking version :func:`split_into_chunks` writes by default."""
SUPPORTED_CHUNK_VERSIONS = frozenset({1, 2})
EDGE_BYTES = 64
"""Bytes at each end of the message that a version-2 transfer id hashes."""
CHUNK_HEADER = struct.Struct("<4sBBH8sIII")
CHUNK_HEADER_BYTES = CHUNK_HEADER.size  # 28
DEFAULT_MAX_PACKET = 128 * KIB
MIN_MAX_PACKET = CHUNK_HEADER_BYTES + 1
SET_OVERHEAD_BYTES = 256
"""Bookkeeping charged per pending set against ``max_pending_bytes`` (besides its pieces)."""
PIECE_OVERHEAD_BYTES = 64
"""Bookkeeping charged per stored piece against ``max_pending_bytes``."""


def transfer_id_of(data: bytes | memoryview, version: int = CHUNK_VERSION) -> bytes:
    """The 8-byte transfer id of the whole message ``data`` in chunking ``version`` (see the module docstring)."""
    if version == 1:
        return hashlib.blake2b(data, digest_size=8).digest()
    view = memoryview(data)
    edges = hashlib.blake2b(view[:EDGE_BYTES], digest_size=8)
    edges.update(view[max(EDGE_BYTES, len(view) - EDGE_BYTES):])
    return edges.digest()


def split_into_chunks(data: bytes, max_packet: int = DEFAULT_MAX_PACKET, version: int = CHUNK_VERSION) -> list[bytes]:
    """Split an encoded message into packets of at most ``max_packet`` bytes, in chunking ``version``
    (1 or 2: its transfer id; every receiver reads both, a receiver from before version 2 only version 1).

    Returns ``[data]`` unchanged when it already fits.
    """
    if max_packet < MIN_MAX_PACKET:
        raise InvalidMessageError(f"max_packet must be at least {MIN_MAX_PACKET} bytes")
    if version not in SUPPORTED_CHUNK_VERSIONS:
        raise InvalidMessageError(f"chunking version must be one of {sorted(SUPPORTED_CHUNK_VERSIONS)}")
    if len(data) <= max_packet:
        return [bytes(data)]
    piece_size = max_packet - CHUNK_HEADER_BYTES
    count = -(-len(data) // piece_size)
    if len(data) > 0xFFFFFFFF or count > 0xFFFFFFFF:
        raise InvalidMessageError("message too large to chunk")
    transfer_id = transfer_id_of(data, version)
    view = memoryview(data)
    return [
        CHUNK_HEADER.pack(CHUNK_MAGIC, version, 0, 0, transfer_id, len(data), count, index)
        + view[index * piece_size : (index + 1) * piece_size]
        for index in range(count)
    ]


def is_chunk(packet: bytes) -> bool:
    return bytes(packet[:4]) == CHUNK_MAGIC


@dataclass
class _PendingSet:
    total_length: int
    count: int
    first_seen: float
    version: int
    pieces: dict[int, memoryview] = field(default_factory=dict)
    received_bytes: int = 0
    charged_bytes: int = SET_OVERHEAD_BYTES
    piece_size: int | None = None  # size of every piece but the last, once one of them arrived

    def check_piece(self, index: int, size: int) -> str | None:
        """Why a piece of ``size`` bytes at ``index`` cannot belong to this set (None: it can)."""
        last = index == self.count - 1
        if not last:
            if self.piece_size is not None and size != self.piece_size:
                return f"piece {index} has {size} bytes, the set's other pieces {self.piece_size}"
            if not (self.count - 1) * size < self.total_length <= self.count * size:
                return f"{self.count} pieces of {size} bytes cannot hold {self.total_length} bytes"
            last_piece = self.pieces.get(self.count - 1)
            if last_piece is not None and len(last_piece) != self.total_length - (self.count - 1) * size:
                return "the last piece does not hold the rest of the message"
        elif self.piece_size is not None and size != self.total_length - (self.count - 1) * self.piece_size:
            return f"the last piece has {size} bytes, expected {self.total_length - (self.count - 1) * self.piece_size}"
        return None


class ChunkReassembler:
    """Reassembles chunk sets; incomplete sets expire after ``timeout_s`` and are dropped.

    Memory is bounded: pending pieces plus bookkeeping never exceed ``max_pending_bytes``; a
    chunk that would exceed it raises :class:`LimitExceededError` and its whole set is dropped.
    ``source`` (e.g. the MQTT topic) separates transfers from different senders.
    """

    def __init__(self, timeout_s: float = 60.0, max_pending_bytes: int = 64 * MIB,
                 max_message_bytes: int = DEFAULT_LIMITS.max_message_bytes) -> None:
        self.timeout_s = timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.max_message_bytes = max_message_bytes
        self._pending: dict[tuple[str, bytes], _PendingSet] = {}
        self.pending_bytes = 0
        self.expired_sets = 0
        self._oldest = math.inf  # no pending set is older (<= the oldest first_seen): expire() scans only past it

    @property
    def pending_sets(self) -> int:
        return len(self._pending)

    def expire(self, now: float | None = None) -> int:
        """Drop sets older than ``timeout_s``; return how many were dropped."""
        now = time.monotonic() if now is None else now
        if now - self._oldest <= self.timeout_s:  # every pending set is younger: no scan (add() calls this per packet)
            return 0
        stale = [key for key, pending in self._pending.items() if now - pending.first_seen > self.timeout_s]
        for key in stale:
            self._drop(key)
        self.expired_sets += len(stale)
        self._oldest = min((pending.first_seen for pending in self._pending.values()), default=math.inf)
        return len(stale)

    def _drop(self, key: tuple[str, bytes]) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self.pending_bytes -= pending.charged_bytes

    def add(self, packet: bytes | bytearray | memoryview, now: float | None = None, source: str = ""
            ) -> bytes | None:
        """Feed one received packet; return the whole message once complete, else None.

        A packet that is not a chunk (starts with the envelope magic) is returned as is.
        Raises only :class:`ProtocolError` subclasses for bad packets.
        """
        if not isinstance(packet, bytes | bytearray | memoryview):
            raise MalformedError(f"expected bytes, got {type(packet).__name__}")
        packet = bytes(packet)
        now = time.monotonic() if now is None else now
        self.expire(now)
        if packet[:4] == MAGIC:
            return packet
        if len(packet) < CHUNK_HEADER_BYTES:
            raise TruncatedError(f"chunk of {len(packet)} bytes is shorter than its header")
        magic, version, flags, reserved, transfer_id, total_length, count, index = \
            CHUNK_HEADER.unpack_from(packet, 0)
        if magic != CHUNK_MAGIC:
            raise MalformedError(f"bad chunk magic {magic!r}")
        if version not in SUPPORTED_CHUNK_VERSIONS:
            raise UnsupportedVersionError(f"chunking version {version} is not supported "
                                          f"(supported: {sorted(SUPPORTED_CHUNK_VERSIONS)})")
        if flags or reserved:
            raise MalformedError("reserved chunk header fields must be 0")
        if total_length > self.max_message_bytes:
            raise LimitExceededError(f"chunked message of {total_length} bytes exceeds the limit")
        piece = memoryview(packet)[CHUNK_HEADER_BYTES:]  # a view: the piece is copied once, by the join
        if count < 2 or index >= count or not piece or count > total_length:
            raise MalformedError("inconsistent chunk count, index or size")
        key = (source, transfer_id)
        pending = self._pending.get(key)
        if pending is None:
            if self.pending_bytes + SET_OVERHEAD_BYTES > self.max_pending_bytes:
                raise LimitExceededError(f"pending chunk memory would exceed {self.max_pending_bytes} bytes")
            pending = _PendingSet(total_length, count, now, version)
            self._pending[key] = pending
            self._oldest = min(self._oldest, now)
            self.pending_bytes += pending.charged_bytes
        elif (pending.total_length, pending.count, pending.version) != (total_length, count, version):
            self._drop(key)
            raise MalformedError("chunk disagrees with its set on total length, count or chunking version")
        if index in pending.pieces:
            return None  # duplicate delivery (QoS 1): ignore
        problem = pending.check_piece(index, len(piece))
        if problem is not None:
            self._drop(key)
            raise MalformedError(f"chunk sizes: {problem}")
        if index < count - 1:
            pending.piece_size = len(piece)
        if pending.received_bytes + len(piece) > total_length:
            self._drop(key)
            raise MalformedError("chunks carry more bytes than the declared total length")
        cost = len(piece) + PIECE_OVERHEAD_BYTES
        if self.pending_bytes + cost > self.max_pending_bytes:
            self._drop(key)
            raise LimitExceededError(
                f"pending chunk memory would exceed {self.max_pending_bytes} bytes; set dropped"
            )
        pending.charged_bytes += cost
        self.pending_bytes += cost
        pending.pieces[index] = piece
        pending.received_bytes += len(piece)
        if len(pending.pieces) < count:
            return None
        self._drop(key)
        whole = b"".join(pending.pieces[i] for i in range(count))
        if len(whole) != total_length:
            raise MalformedError("reassembled length differs from the declared total length")
        if transfer_id_of(whole, version) != transfer_id:
            what = "message" if version == 1 else "message's edges"
            raise MalformedError(f"the transfer id is not the BLAKE2b-64 of the reassembled {what} (version {version})")
        return whole
