"""Chunking: split / reassemble, duplicates, interleaving, expiry and memory bounds."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    ChunkReassembler,
    InvalidMessageError,
    LimitExceededError,
    MalformedError,
    ProtocolError,
    Status,
    decode_message,
    encode_message,
    is_chunk,
    split_into_chunks,
)
from protocol.chunking import CHUNK_HEADER_BYTES


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=5000), st.integers(CHUNK_HEADER_BYTES + 1, 700), st.randoms())
def test_split_and_reassemble_in_any_order(body, max_packet, shuffler):
    data = b"FDST" + body  # unchunked packets pass through only if they look like an envelope
    packets = split_into_chunks(data, max_packet)
    assert all(len(packet) <= max_packet for packet in packets)
    if len(data) <= max_packet:
        assert packets == [data]
    shuffler.shuffle(packets)
    reassembler = ChunkReassembler()
    results = [reassembler.add(packet, now=0.0) for packet in packets]
    if len(packets) > 1:
        assert results[:-1] == [None] * (len(packets) - 1)
    assert results[-1] == data
    assert reassembler.pending_sets == 0 and reassembler.pending_bytes == 0


def test_whole_message_passes_through_and_decodes():
    data = encode_message(Status("dev-1", "online"))
    assert not is_chunk(data)
    assert ChunkReassembler().add(data) == data
    big = os.urandom(300_000)
    packets = split_into_chunks(big, 128 * 1024)
    assert len(packets) == 3 and all(is_chunk(p) for p in packets)


def test_duplicates_are_ignored_and_interleaved_sets_are_separate():
    first, second = os.urandom(5000), os.urandom(7000)
    packets_a, packets_b = split_into_chunks(first, 1000), split_into_chunks(second, 1000)
    reassembler = ChunkReassembler()
    done = []
    for a, b in zip(packets_a, packets_b, strict=False):
        for packet in (a, a, b):
            result = reassembler.add(packet, now=0.0)
            if result is not None:
                done.append(result)
    for packet in packets_b[len(packets_a):]:
        result = reassembler.add(packet, now=0.0)
        if result is not None:
            done.append(result)
    assert sorted(done) == sorted([first, second])


def test_sources_are_kept_apart():
    data = os.urandom(3000)
    packets = split_into_chunks(data, 1000)
    reassembler = ChunkReassembler()
    for packet in packets[:-1]:
        assert reassembler.add(packet, now=0.0, source="topic/a") is None
    assert reassembler.add(packets[-1], now=0.0, source="topic/b") is None
    assert reassembler.pending_sets == 2
    assert reassembler.add(packets[-1], now=0.0, source="topic/a") == data


def test_incomplete_sets_time_out_and_release_memory():
    reassembler = ChunkReassembler(timeout_s=10.0)
    packets = split_into_chunks(os.urandom(10_000), 1000)
    for packet in packets[:-1]:
        reassembler.add(packet, now=100.0)
    assert reassembler.pending_sets == 1 and reassembler.pending_bytes > 9000
    assert reassembler.expire(now=105.0) == 0
    assert reassembler.expire(now=111.0) == 1
    assert reassembler.pending_sets == 0 and reassembler.pending_bytes == 0
    assert reassembler.add(packets[-1], now=112.0) is None  # a late chunk starts a new, doomed set
    reassembler.add(b"FDST" + b"\x01", now=200.0)  # any add also expires stale sets
    assert reassembler.pending_sets == 0 and reassembler.pending_bytes == 0


def test_pending_memory_is_bounded():
    reassembler = ChunkReassembler(max_pending_bytes=20_000)
    rng = random.Random(0)
    raised = 0
    for _ in range(50):
        packets = split_into_chunks(rng.randbytes(8000), 1000)
        try:
            reassembler.add(packets[0], now=0.0)
        except LimitExceededError:
            raised += 1
        assert reassembler.pending_bytes <= 20_000
    assert raised > 0


def test_oversized_or_inconsistent_chunks_are_refused():
    data = os.urandom(5000)
    packets = split_into_chunks(data, 1000)
    with pytest.raises(LimitExceededError):
        ChunkReassembler(max_message_bytes=4000).add(packets[0])
    reassembler = ChunkReassembler()
    reassembler.add(packets[0], now=0.0)
    tampered = bytearray(packets[1])
    tampered[16] ^= 1  # total length disagrees with the set
    with pytest.raises(MalformedError):
        reassembler.add(bytes(tampered), now=0.0)
    assert reassembler.pending_sets == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_reassembler_raises_only_protocol_errors(packet):
    reassembler = ChunkReassembler(max_pending_bytes=10_000)
    try:
        reassembler.add(b"FDSC" + packet, now=0.0)
        reassembler.add(packet, now=0.0)
    except ProtocolError:
        pass
    assert reassembler.pending_bytes <= 10_000


def test_chunked_authenticated_message_round_trip():
    key = bytes(32)
    data = encode_message(Status("dev-1", "busy", "x" * 3000), key)
    reassembler = ChunkReassembler()
    results = [reassembler.add(packet) for packet in split_into_chunks(data, 256)]
    assert decode_message(results[-1], key) == Status("dev-1", "busy", "x" * 3000)


def test_max_packet_must_leave_room_for_a_piece():
    with pytest.raises(InvalidMessageError):
        split_into_chunks(b"x" * 100, CHUNK_HEADER_BYTES)


def test_non_contiguous_and_non_bytes_packets():
    import numpy as np

    reassembler = ChunkReassembler()
    with pytest.raises(ProtocolError):
        reassembler.add(memoryview(np.zeros((4, 4))[:, ::2]))
    with pytest.raises(ProtocolError):
        reassembler.add("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [30, 100, 127, 128, 129, 5000])
def test_each_chunking_version_carries_its_own_transfer_id(size):
    """Version 1: BLAKE2b-64 of the whole message; version 2: of its first 64 and last 64 bytes (all of a message
    shorter than 128). Both reassemble; the hash is recomputed here from the spec, not from the module."""
    import hashlib

    data = b"FDST" + os.urandom(size - 4)
    edges = data if size < 128 else data[:64] + data[-64:]
    expected = {1: hashlib.blake2b(data, digest_size=8).digest(), 2: hashlib.blake2b(edges, digest_size=8).digest()}
    for version, transfer_id in expected.items():
        packets = split_into_chunks(data, 29, version=version)
        assert {(p[4], p[8:16]) for p in packets} == {(version, transfer_id)}
        reassembler = ChunkReassembler()
        assert [reassembler.add(p, now=0.0) for p in packets][-1] == data
    assert split_into_chunks(data, 29) == split_into_chunks(data, 29, version=2)  # the default


def test_a_changed_middle_byte_passes_the_version_2_id_and_fails_the_envelope_crc():
    """The version-2 id hashes only the edges: a corrupted middle reassembles, and the envelope's CRC refuses it."""
    from protocol import ChecksumError

    data = encode_message(Status("dev-1", "busy", "x" * 3000))
    packets = split_into_chunks(data, 1000)
    hurt = bytearray(packets[1])
    hurt[500] ^= 0xFF
    reassembler = ChunkReassembler()
    whole = [reassembler.add(p, now=0.0) for p in [packets[0], bytes(hurt), *packets[2:]]][-1]
    assert whole is not None and whole != data
    with pytest.raises(ChecksumError):
        decode_message(whole)


def test_chunks_of_two_versions_do_not_form_one_set_and_unknown_versions_are_refused():
    from protocol import UnsupportedVersionError

    data = b"FDST" + os.urandom(3000)
    v1, v2 = split_into_chunks(data, 1000, version=1), split_into_chunks(data, 1000, version=2)
    mixed = v2[0][:4] + b"\x01" + v2[1][5:]  # a version-1 header on a piece of the version-2 set (same id)
    reassembler = ChunkReassembler()
    reassembler.add(v2[0], now=0.0)
    with pytest.raises(MalformedError, match="chunking version"):
        reassembler.add(mixed, now=0.0)
    assert reassembler.pending_sets == 0
    with pytest.raises(UnsupportedVersionError):
        ChunkReassembler().add(v1[0][:4] + b"\x03" + v1[0][5:])
    with pytest.raises(InvalidMessageError):
        split_into_chunks(data, 1000, version=3)
