"""``bench/fleet_frames.py``: a fake's envelopes and chunks, built from parts, are byte for byte the product's.

The oracles are ``protocol.encode_message`` (the real agent's encoder), ``encode_envelope`` and
``split_into_chunks``, and the coordinator's side (``ChunkReassembler`` + ``decode_message``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from fleet_frames import EnvelopeFrame, chunk_pieces, transfer_id_of_parts  # noqa: E402

from protocol import ChunkReassembler, Status, decode_envelope, decode_message, encode_message  # noqa: E402
from protocol.chunking import split_into_chunks, transfer_id_of  # noqa: E402
from protocol.envelope import encode_envelope  # noqa: E402


@pytest.mark.parametrize("state", ["online", "offline"])
def test_a_status_frame_is_what_encode_message_gives(state: str) -> None:
    template = encode_message(Status("fake-00042", state), seq=1)
    frame = EnvelopeFrame(Status.MESSAGE_TYPE, "", 0, "fake-00042", bytes(decode_envelope(template).payload))
    for seq, timestamp_ms in ((1, 0), (1_764_000_000_123_456, 1_764_700_000_123), (2**64 - 1, 2**63)):
        expected = encode_message(Status("fake-00042", state), seq=seq, timestamp=timestamp_ms / 1000)
        assert frame.encode(seq, timestamp_ms) == expected
        assert b"".join(frame.parts(seq, timestamp_ms)) == expected


def test_an_update_frame_is_encode_envelope_and_the_coordinator_decodes_it() -> None:
    payload = os.urandom(200_000)
    frame = EnvelopeFrame(5, "run-7", 3, "fake-00001", payload)
    parts = frame.parts(99, 1_764_700_000_000)
    assert parts[1] is payload  # the shared payload is not copied
    whole = b"".join(parts)
    assert whole == encode_envelope(5, "run-7", 3, "fake-00001", 99, 1_764_700_000_000, payload, None)
    env = decode_envelope(whole)  # checks the CRC
    assert (env.run_id, env.server_round, env.sender_id, env.seq, bytes(env.payload)) == (
        "run-7", 3, "fake-00001", 99, payload)


def test_invalid_identifiers_are_refused() -> None:
    with pytest.raises(ValueError, match="sender id"):
        EnvelopeFrame(2, "", 0, "bad id", b"\x01")
    with pytest.raises(ValueError, match="run id"):
        EnvelopeFrame(5, "run/1", 1, "fake-00001", b"\x01")


# 128 KiB (the agent's default: 2 chunks of a 164 KB update), and small packets whose boundaries fall inside
# the envelope's head, inside the payload and inside the CRC
@pytest.mark.parametrize("max_packet", [128 * 1024, 29, 40, 61, 100, 1000])
@pytest.mark.parametrize("version", [1, 2])
def test_chunk_pieces_are_split_into_chunks(max_packet: int, version: int) -> None:
    payload = os.urandom(3000 if max_packet < 1000 else 164_000)
    parts = EnvelopeFrame(5, "run-7", 3, "fake-00001", payload).parts(5, 6)
    whole = b"".join(parts)
    expected = split_into_chunks(whole, max_packet, version)
    got = [b"".join(chunk) for chunk in chunk_pieces(parts, max_packet, version)]
    assert got == expected
    assert transfer_id_of_parts(parts, version) == transfer_id_of(whole, version)


def test_a_message_that_fits_is_one_chunk_as_given() -> None:
    parts = EnvelopeFrame(2, "", 0, "fake-00001", b"\x01\x02").parts(1, 2)
    assert chunk_pieces(parts) == [parts]


def test_the_coordinators_reassembler_takes_the_chunks() -> None:
    msg = Status("fake-00003", "online", detail="x" * 4000)
    template = encode_message(msg, seq=1)
    frame = EnvelopeFrame(Status.MESSAGE_TYPE, "", 0, "fake-00003", bytes(decode_envelope(template).payload))
    reassembler = ChunkReassembler()
    chunks = chunk_pieces(frame.parts(8, 9), max_packet=1024)
    assert len(chunks) == 5  # 4052 bytes in pieces of 1024 - 28 = 996
    results = [reassembler.add(b"".join(chunk), source="t") for chunk in chunks]
    assert results[:-1] == [None] * 4
    assert decode_message(results[-1]) == msg
