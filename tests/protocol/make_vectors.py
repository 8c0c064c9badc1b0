"""Regenerate the protocol test vectors in tests/protocol/vectors/.

Usage: ``python tests/protocol/make_vectors.py`` (from the repository root).

Each vector is ``NAME.bin`` (the encoded message, exactly as sent) and ``NAME.json``::

    {"description", "file", "key_hex" (HMAC key or null), "encode_options",
     "envelope": {...header fields...}, "message": {message_to_json form},
     "reencode_exact": true if encode(message) must reproduce the .bin byte for byte}

Negative vectors have ``"expect_error": "<ProtocolError subclass name>"`` instead of a message.
``reencode_exact`` is false for zstd vectors (another zstd version may compress differently) and
for int8 (re-quantizing decoded values may move the scale by an ulp).
"""

from __future__ import annotations

import json
import pathlib
import struct
import sys
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    Abort,
    Ack,
    Capabilities,
    MaskChange,
    ModelBroadcast,
    Register,
    SparseTensor,
    Status,
    Task,
    Update,
    decode_envelope,
    encode_message,
)
from protocol.json_view import message_to_json  # noqa: E402

VECTOR_DIR = pathlib.Path(__file__).resolve().parent / "vectors"
KEY = bytes(range(32))
TIMESTAMP = 1_700_000_000.0


def worked_example_update() -> Update:
    """The update of docs/protocol.md's worked example: 3 weights on a known 2x4 mask whose
    position 1 was dropped and position 6 grown, 2 dense biases, float32, HMAC-SHA256."""
    return Update("run-1", 3, "dev-7",
                  {"w": SparseTensor((2, 4), np.array([0.5, -1.0, 2.0], np.float32)),
                   "b": SparseTensor((2,), np.array([0.25, 0.0], np.float32))},
                  {"w": MaskChange([1], [6])}, sample_count=60, train_loss=0.5, compute_s=1.5)


def _vectors() -> list[tuple[str, str, object, bytes | None, dict, bool]]:
    rng = np.random.default_rng(2024)
    dense = rng.standard_normal((4, 16)).astype(np.float32).round(3)
    all_mask = np.ones((2, 3), bool)
    bitmap_mask = rng.random((4, 16)) < 0.5
    rice_mask = np.zeros((4, 16), bool)
    rice_mask.flat[[3, 40]] = True
    model = {
        "all": SparseTensor.from_dense(np.arange(6, dtype=np.float32).reshape(2, 3), all_mask),
        "bitmap": SparseTensor.from_dense(dense, bitmap_mask),
        "rice": SparseTensor.from_dense(dense, rice_mask),
        "bias": SparseTensor.from_dense(dense[0, :4]),
    }
    delta = {"rice": SparseTensor((4, 16), np.array([0.125, -3.5], np.float32))}
    int8_update = Update("run-1", 3, "dev-7", {"w": SparseTensor((8,), dense[0, :8])}, {}, 10, 1.25, 0.75)
    big_update = Update("run-1", 3, "dev-7", {"w": SparseTensor((4, 64), rng.standard_normal(256))}, {},
                        10, 1.25, 0.75)
    f32, exact = {"value_format": "float32", "compression": "none"}, True
    bf16 = {"value_format": "bfloat16", "compression": "none"}
    capabilities = Capabilities("aarch64", 4, 3906, {"numpy": "1.26.4", "python": "3.11.7"})
    return [
        ("register", "Register with capabilities, HMAC-SHA256", Register("dev-7", capabilities, 600), KEY,
         f32, exact),
        ("status_heartbeat", "Status heartbeat, unauthenticated", Status("dev-7", "online", "idle"), None,
         f32, exact),
        ("status_last_will", "Status last will (retained, offline)", Status("dev-7", "offline", "last will"),
         KEY, f32, exact),
        ("task", "Task for round 3 selecting two devices", Task(
            "run-1", 3, ("dev-7", "dev-8"), 2, 1, 32, 0.01, 0.9, 0.0001, 0.0, True, 0.05, 1_700_000_600.0, 42,
            "mnist_cnn"), KEY, f32, exact),
        ("model_broadcast", "Self-contained model: ALL, BITMAP, RICE positions and a dense bias",
         ModelBroadcast("run-1", 3, model), KEY, f32, exact),
        ("model_delta_bfloat16", "Delta against round 2 on the known mask, bfloat16 values",
         ModelBroadcast("run-1", 3, delta, base_round=2), KEY, bf16, exact),
        ("update_small", "docs/protocol.md worked example", worked_example_update(), KEY, f32, exact),
        ("update_int8", "Update with int8 values (per-tensor scale)", int8_update, KEY,
         {"value_format": "int8", "compression": "none"}, False),
        ("update_zstd", "Update whose values are byte-shuffled and zstd-compressed", big_update, KEY,
         {"value_format": "float32", "compression": "zstd"}, False),
        ("ack", "Ack of an update", Ack("run-1", 3, "dev-7", True, "accepted"), KEY, f32, exact),
        ("abort", "Abort a run", Abort("run-1", 4, "operator request"), KEY, f32, exact),
    ]


def _refresh_crc(data: bytearray) -> bytes:
    """Recompute the CRC of an unauthenticated message after editing it."""
    assert data[6] == 0, "only for unauthenticated messages"
    crc_at = len(data) - 4
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    return bytes(data)


def main() -> None:
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for path in VECTOR_DIR.glob("*"):
        path.unlink()
    valid: dict[str, bytes] = {}
    for seq, (name, description, msg, key, options, reencode_exact) in enumerate(_vectors(), start=1):
        data = encode_message(msg, key, seq=seq, timestamp=TIMESTAMP, **options)  # type: ignore[arg-type]
        valid[name] = data
        envelope = decode_envelope(data, key)
        record = {
            "description": description, "file": f"{name}.bin", "key_hex": None if key is None else key.hex(),
            "encode_options": options,
            "envelope": {"version": envelope.version, "message_type": envelope.message_type,
                         "auth_algorithm": envelope.auth_algorithm, "run_id": envelope.run_id,
                         "server_round": envelope.server_round, "sender_id": envelope.sender_id,
                         "seq": envelope.seq, "timestamp_ms": envelope.timestamp_ms,
                         "payload_length": len(envelope.payload), "checksum": envelope.checksum},
            "message": message_to_json(msg if reencode_exact or options["value_format"] == "float32"
                                       else _decoded(data, key)),
            "reencode_exact": reencode_exact,
        }
        _write(name, data, record)
    base = bytearray(valid["ack"])
    bad_version = bytearray(base)
    bad_version[4] = 2
    forged = bytearray(base)
    forged[-1] ^= 0x01
    corrupted = bytearray(base)
    corrupted[40] ^= 0x01
    negatives = [
        ("bad_version", "Protocol version 2: refused before anything else", bytes(bad_version),
         "UnsupportedVersionError"),
        ("forged_tag", "Last tag byte flipped", bytes(forged), "AuthenticationError"),
        ("corrupted", "A payload bit flipped, CRC not updated", bytes(corrupted), "ChecksumError"),
        ("truncated", "Cut in the middle of the payload", bytes(base[:50]), "TruncatedError"),
        ("trailing_bytes", "One byte after the tag", bytes(base) + b"\x00", "MalformedError"),
        ("bad_state", "Status with state byte 9, CRC recomputed", _bad_state(), "MalformedError"),
    ]
    for name, description, data, error in negatives:
        key_hex = None if name == "bad_state" else KEY.hex()  # bad_state is unauthenticated
        _write(name, data, {"description": description, "file": f"{name}.bin", "key_hex": key_hex,
                            "expect_error": error})
    print(f"wrote {len(valid) + len(negatives)} vectors to {VECTOR_DIR}")


def _decoded(data: bytes, key: bytes | None):
    from protocol import decode_message

    return decode_message(data, key)


def _bad_state() -> bytes:
    data = bytearray(encode_message(Status("dev-7", "online"), None, seq=1, timestamp=TIMESTAMP))
    data[34 + 5 + 1] = 9  # header, sender "dev-7", schema byte, then the state byte
    return _refresh_crc(data)


def _write(name: str, data: bytes, record: dict) -> None:
    (VECTOR_DIR / f"{name}.bin").write_bytes(data)
    (VECTOR_DIR / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


WORKED_EXAMPLE_FIELDS: list[tuple[int, str]] = [
    (4, "magic \"FDST\""), (1, "protocol version 1"), (1, "message type 5 = Update"),
    (1, "auth algorithm 1 = HMAC-SHA256"), (1, "flags 0"), (4, "server round 3 (u32)"),
    (8, "sequence number 7 (u64)"), (8, "timestamp 1700000000000 ms (u64)"), (1, "run id length 5"),
    (1, "sender id length 5"), (4, "payload length 111 (u32)"), (5, "run id \"run-1\""),
    (5, "sender id \"dev-7\" (= Update.device_id)"),
    (1, "payload: schema version 1"), (8, "sample_count 60 (u64)"), (8, "train_loss 0.5 (f64)"),
    (8, "compute_s 1.5 (f64)"), (4, "tensor set: 2 tensors (u32)"),
    (2, "tensor 0: name length 1"), (1, "name \"w\""), (1, "ndim 2"), (4, "dim 2"), (4, "dim 4"),
    (1, "value format 0 = float32"), (1, "position kind 0 = NONE (values on the known mask)"),
    (4, "value count 3"), (1, "value codec 0 = raw"), (12, "values 0.5, -1.0, 2.0 (f32)"),
    (2, "tensor 1: name length 1"), (1, "name \"b\""), (1, "ndim 1"), (4, "dim 2"),
    (1, "value format 0 = float32"), (1, "position kind 0 = NONE (dense: count == 2 elements)"),
    (4, "value count 2"), (1, "value codec 0 = raw"), (8, "values 0.25, 0.0 (f32)"),
    (4, "mask changes: 1 entry (u32)"), (2, "entry 0: name length 1"), (1, "name \"w\""), (1, "ndim 2"),
    (4, "dim 2"), (4, "dim 4"), (1, "dropped: kind 2 = BITMAP"), (4, "dropped: count 1"),
    (1, "dropped bitmap 0b01000000: position 1"), (1, "grown: kind 2 = BITMAP"), (4, "grown: count 1"),
    (1, "grown bitmap 0b00000010: position 6"), (4, "CRC-32 of bytes 0x0000-0x009a"),
    (32, "HMAC-SHA256 tag of bytes 0x0000-0x009e, key 00 01 02 ... 1f"),
]


def worked_example_listing() -> str:
    """Annotated hex of update_small.bin, one field (or 16 bytes) per line."""
    data = encode_message(worked_example_update(), KEY, seq=7, timestamp=TIMESTAMP)
    lines, offset = [], 0
    for size, meaning in WORKED_EXAMPLE_FIELDS:
        for start in range(offset, offset + size, 16):
            chunk = data[start : min(start + 16, offset + size)]
            label = meaning if start == offset else "  (continued)"
            lines.append(f"{start:04x}: {chunk.hex(' '):<48}| {label}")
        offset += size
    assert offset == len(data), (offset, len(data))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worked-example"]:
        print(worked_example_listing())
    else:
        main()
