"""The test vectors in tests/protocol/vectors/ (see make_vectors.py for their format).

Other implementations can run the same checks: decode each ``.bin`` and compare with the
``.json``; where ``reencode_exact`` is true, encoding the JSON message must give the ``.bin``.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

import protocol
from protocol import ChunkReassembler, decode_message_with_envelope, encode_message, split_into_chunks
from protocol.ed25519 import Ed25519Signer, Ed25519Verifier
from protocol.json_view import message_from_json, message_to_json

VECTOR_DIR = pathlib.Path(__file__).resolve().parent / "vectors"
ALL_RECORDS = sorted(VECTOR_DIR.glob("*.json"))
RECORDS = [p for p in ALL_RECORDS if json.loads(p.read_text()).get("kind") != "chunks"]
CHUNK_RECORDS = [p for p in ALL_RECORDS if p not in RECORDS]
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _load(path: pathlib.Path) -> tuple[dict, bytes]:
    record = json.loads(path.read_text())
    return record, (VECTOR_DIR / record["file"]).read_bytes()


def _keys(record: dict):
    """(verifier, signer) of a vector: its HMAC key for both, or the Ed25519 public key / private seed."""
    if record.get("ed25519_public_hex"):
        seed = record.get("ed25519_seed_hex")
        return Ed25519Verifier(record["ed25519_public_hex"]), Ed25519Signer(bytes.fromhex(seed)) if seed else None
    key = None if record["key_hex"] is None else bytes.fromhex(record["key_hex"])
    return key, key


def test_there_are_positive_and_negative_vectors():
    kinds = [("expect_error" in _load(path)[0]) for path in RECORDS]
    assert kinds.count(False) >= 10 and kinds.count(True) >= 5
    assert any(_load(path)[0].get("ed25519_public_hex") for path in RECORDS)
    assert len(CHUNK_RECORDS) >= 3


@pytest.mark.parametrize("path", RECORDS, ids=lambda path: path.stem)
def test_vector(path):
    record, data = _load(path)
    key, signer = _keys(record)
    if "expect_error" in record:
        with pytest.raises(getattr(protocol, record["expect_error"])):
            decode_message_with_envelope(data, key)
        return
    decoded = decode_message_with_envelope(data, key)
    assert json.loads(json.dumps(message_to_json(decoded.message))) == record["message"]
    envelope = decoded.envelope
    for field, expected in record["envelope"].items():
        actual = len(envelope.payload) if field == "payload_length" else getattr(envelope, field)
        assert actual == expected, field
    if record["reencode_exact"]:
        message = message_from_json(record["message"])
        assert message == decoded.message
        again = encode_message(message, signer, sender_id=envelope.sender_id, seq=envelope.seq,
                               timestamp=envelope.timestamp_ms / 1000, **record["encode_options"])
        assert again == data


def test_docs_worked_example_is_the_update_small_vector():
    hex_block = re.search(r"<!-- worked-example-hex -->\s*```text\n(.*?)```", DOC.read_text(), re.S)
    assert hex_block, "docs/protocol.md must contain the worked example hex block"
    hex_digits = "".join(re.findall(r"^[0-9a-f]{4}: ((?:[0-9a-f]{2} ?)+)", hex_block.group(1), re.M))
    assert bytes.fromhex(hex_digits.replace(" ", "")) == (VECTOR_DIR / "update_small.bin").read_bytes()


@pytest.mark.parametrize("path", CHUNK_RECORDS, ids=lambda path: path.stem)
def test_chunk_vector(path):
    record = json.loads(path.read_text())
    message = (VECTOR_DIR / record["message_file"]).read_bytes()
    chunks = [(VECTOR_DIR / name).read_bytes() for name in record["chunk_files"]]
    if "expect_error" in record:
        reassembler = ChunkReassembler()
        with pytest.raises(getattr(protocol, record["expect_error"])):
            for chunk in chunks:
                reassembler.add(chunk)
        return
    assert split_into_chunks(message, record["max_packet"], version=record["chunking_version"]) == chunks
    for order in (chunks, chunks[::-1], chunks[1:] + chunks[:1]):
        reassembler = ChunkReassembler()
        results = [reassembler.add(chunk) for chunk in order]
        assert results[:-1] == [None] * (len(order) - 1) and results[-1] == message
