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
from protocol import decode_message_with_envelope, encode_message
from protocol.json_view import message_from_json, message_to_json

VECTOR_DIR = pathlib.Path(__file__).resolve().parent / "vectors"
RECORDS = sorted(VECTOR_DIR.glob("*.json"))
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _load(path: pathlib.Path) -> tuple[dict, bytes]:
    record = json.loads(path.read_text())
    return record, (VECTOR_DIR / record["file"]).read_bytes()


def test_there_are_positive_and_negative_vectors():
    kinds = [("expect_error" in _load(path)[0]) for path in RECORDS]
    assert kinds.count(False) >= 10 and kinds.count(True) >= 5


@pytest.mark.parametrize("path", RECORDS, ids=lambda path: path.stem)
def test_vector(path):
    record, data = _load(path)
    key = None if record["key_hex"] is None else bytes.fromhex(record["key_hex"])
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
        again = encode_message(message, key, sender_id=envelope.sender_id, seq=envelope.seq,
                               timestamp=envelope.timestamp_ms / 1000, **record["encode_options"])
        assert again == data


def test_docs_worked_example_is_the_update_small_vector():
    hex_block = re.search(r"<!-- worked-example-hex -->\s*```text\n(.*?)```", DOC.read_text(), re.S)
    assert hex_block, "docs/protocol.md must contain the worked example hex block"
    hex_digits = "".join(re.findall(r"^[0-9a-f]{4}: ((?:[0-9a-f]{2} ?)+)", hex_block.group(1), re.M))
    assert bytes.fromhex(hex_digits.replace(" ", "")) == (VECTOR_DIR / "update_small.bin").read_bytes()
