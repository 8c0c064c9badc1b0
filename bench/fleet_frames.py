"""A device's envelopes and chunks for the fleet bench's fakes, built from parts without re-encoding or copying.

Byte for byte what ``protocol.encode_message`` / ``encode_envelope`` (no key) and
``protocol.split_into_chunks`` give (tests/bench/test_fleet_frames.py checks that), but:

* :class:`EnvelopeFrame` keeps what does not change between a device's messages of one kind (message
  type, run, round, sender, payload) and per message packs only the fixed header (seq, timestamp) and
  the CRC-32 (running over the header, then the shared payload); the message is returned as its parts
  ``[header + run id + sender id, payload, crc]``, the payload not copied;
* :func:`chunk_pieces` splits such parts into chunks as lists of memoryview slices (chunk header first),
  so a 164 KB update goes to the socket without being joined or sliced into new bytes objects.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from protocol.checksum import crc32
from protocol.chunking import CHUNK_HEADER, CHUNK_HEADER_BYTES, CHUNK_VERSION, DEFAULT_MAX_PACKET, EDGE_BYTES
from protocol.envelope import CHUNK_MAGIC, FIXED_HEADER, MAGIC, PROTOCOL_VERSION
from protocol.messages import IDENTIFIER_PATTERN

Parts = list[bytes | memoryview]
_CRC = struct.Struct("<I")


class EnvelopeFrame:
    """One sender's envelopes of one ``message_type`` with one ``payload`` (bytes) in run ``run_id``, round
    ``server_round`` (``""`` / 0 for Status and Register), no authentication tag (auth 0)."""

    def __init__(self, message_type: int, run_id: str, server_round: int, sender_id: str, payload: bytes) -> None:
        for name, value in (("run id", run_id), ("sender id", sender_id)):
            if (value or name == "sender id") and IDENTIFIER_PATTERN.fullmatch(value) is None:
                raise ValueError(f"{name} {value!r} is not a valid identifier")
        self.message_type, self.server_round, self.payload = message_type, server_round, payload
        self._ids = run_id.encode("ascii") + sender_id.encode("ascii")
        self._id_lengths = (len(run_id), len(sender_id))

    def parts(self, seq: int, timestamp_ms: int) -> Parts:
        """The envelope with this ``seq`` (u64) and ``timestamp_ms`` (Unix ms) as ``[head, payload, crc]``."""
        head = FIXED_HEADER.pack(MAGIC, PROTOCOL_VERSION, self.message_type, 0, 0, self.server_round, seq,
                                 timestamp_ms, *self._id_lengths, len(self.payload)) + self._ids
        return [head, self.payload, _CRC.pack(crc32(self.payload, crc32(head)))]

    def encode(self, seq: int, timestamp_ms: int) -> bytes:
        """The envelope as one bytes object (for small messages: Status, Register)."""
        return b"".join(self.parts(seq, timestamp_ms))


def _slice(parts: Sequence[bytes | memoryview], start: int, end: int) -> Parts:
    """Bytes ``[start, end)`` of the concatenation of ``parts`` as memoryview slices of them (no copy)."""
    out: Parts = []
    offset = 0
    for part in parts:
        size = len(part)
        lo, hi = max(start - offset, 0), min(end - offset, size)
        if lo < hi:
            out.append(memoryview(part)[lo:hi])
        offset += size
        if offset >= end:
            break
    return out


def transfer_id_of_parts(parts: Sequence[bytes | memoryview], version: int = CHUNK_VERSION) -> bytes:
    """``protocol.chunking.transfer_id_of`` of the concatenation of ``parts``."""
    total = sum(len(p) for p in parts)
    digest = hashlib.blake2b(digest_size=8)
    hashed = [(0, total)] if version == 1 else [(0, min(EDGE_BYTES, total)), (max(EDGE_BYTES, total - EDGE_BYTES),
                                                                               total)]
    for start, end in hashed:
        for piece in _slice(parts, start, end):
            digest.update(piece)
    return digest.digest()


def chunk_pieces(parts: Sequence[bytes | memoryview], max_packet: int = DEFAULT_MAX_PACKET,
                 version: int = CHUNK_VERSION) -> list[Parts]:
    """``protocol.split_into_chunks`` of the concatenation of ``parts``: each chunk as its pieces (chunk
    header, then slices of ``parts``); a message that fits in ``max_packet`` is one chunk, ``parts`` as given."""
    total = sum(len(p) for p in parts)
    if total <= max_packet:
        return [list(parts)]
    piece_size = max_packet - CHUNK_HEADER_BYTES
    count = -(-total // piece_size)
    transfer_id = transfer_id_of_parts(parts, version)
    return [[CHUNK_HEADER.pack(CHUNK_MAGIC, version, 0, 0, transfer_id, total, count, index),
             *_slice(parts, index * piece_size, min((index + 1) * piece_size, total))]
            for index in range(count)]
