"""Regenerate the protocol test vectors in tests/protocol/vectors/.

Usage: ``python tests/protocol/make_vectors.py`` (from the repository root).

Each vector is ``NAME.bin`` (the encoded message, exactly as sent) and ``NAME.json``::

    {"description", "file", "key_hex" (HMAC key or null), "encode_options",
     "envelope": {...header fields...}, "message": {message_to_json form},
     "reencode_exact": true if encode(message) must reproduce the .bin byte for byte}

Messages the coordinator sends are Ed25519-signed: instead of ``key_hex`` their record has
``ed25519_public_hex`` (what devices hold, to verify) and ``ed25519_seed_hex`` (the private seed, to
re-encode: Ed25519 signatures are deterministic). Negative vectors have ``"expect_error":
"<ProtocolError subclass name>"`` instead of a message.

Chunking vectors (``"kind": "chunks"``) list ``chunk_files``, the packets of ``message_file`` split
with ``max_packet`` in ``chunking_version``; a positive one must be reproduced by the splitter and reassemble (in any
order) to the message, a negative one (``expect_error``) must fail reassembly.
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
    DeviceError,
    MaskChange,
    ModelBroadcast,
    Register,
    RunCompleted,
    SparseTensor,
    Status,
    Task,
    Update,
    decode_envelope,
    encode_message,
)
from protocol.chunking import CHUNK_HEADER_BYTES, split_into_chunks  # noqa: E402
from protocol.ed25519 import Ed25519Signer  # noqa: E402
from protocol.envelope import encode_envelope  # noqa: E402
from protocol.json_view import message_to_json  # noqa: E402

VECTOR_DIR = pathlib.Path(__file__).resolve().parent / "vectors"
KEY = bytes(range(32))
COORDINATOR_SEED = bytes(range(0x40, 0x60))
COORDINATOR = Ed25519Signer(COORDINATOR_SEED)
OTHER_COORDINATOR = Ed25519Signer(bytes(range(0x60, 0x80)))
TIMESTAMP = 1_700_000_000.0
NONCE = 0x0123456789ABCDEF
CHUNK_MAX_PACKET = 160


def worked_example_update() -> Update:
    """The update of docs/protocol.md's worked example: 3 weights on a known 2x4 mask whose
    position 1 was dropped and position 6 grown, 2 dense biases, float32, HMAC-SHA256."""
    return Update("run-1", 3, "dev-7",
                  {"w": SparseTensor((2, 4), np.array([0.5, -1.0, 2.0], np.float32)),
                   "b": SparseTensor((2,), np.array([0.25, 0.0], np.float32))},
                  {"w": MaskChange([1], [6])}, sample_count=60, train_loss=0.5, compute_s=1.5, task_nonce=NONCE)


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
    sparse_mask = np.zeros((4, 16), bool)
    sparse_mask.flat[[3, 40]] = True
    model_bf16 = {"fc.weight": SparseTensor((4, 16), np.array([0.125, -3.5], np.float32), sparse_mask)}
    int8_update = Update("run-1", 3, "dev-7", {"w": SparseTensor((8,), dense[0, :8])}, {}, 10, 1.25, 0.75, NONCE)
    big_update = Update("run-1", 3, "dev-7", {"w": SparseTensor((4, 64), rng.standard_normal(256))}, {},
                        10, 1.25, 0.75, NONCE)
    f32, exact = {"value_format": "float32", "compression": "none"}, True
    bf16 = {"value_format": "bfloat16", "compression": "none"}
    capabilities = Capabilities("aarch64", 4, 3906, {"numpy": "1.26.4", "python": "3.11.7"})
    return [
        ("register", "Register with capabilities and its last will's seq, HMAC-SHA256",
         Register("dev-7", capabilities, 600, will_seq=2), KEY, f32, exact),
        ("status_heartbeat", "Status heartbeat, unauthenticated", Status("dev-7", "online", "idle"), None,
         f32, exact),
        ("status_last_will", "Status last will (retained, offline)", Status("dev-7", "offline", "last will"),
         KEY, f32, exact),
        ("task", "Task for round 3 selecting two devices, with its nonce, Ed25519-signed", Task(
            "run-1", 3, ("dev-7", "dev-8"), 2, 1, 32, 0.01, 0.9, 0.0001, 0.0, True, 0.05, 1_700_000_600.0, 42,
            "mnist_cnn", NONCE), COORDINATOR, f32, exact),
        ("model_broadcast", "Self-contained model: ALL, BITMAP, RICE positions and a dense bias, Ed25519",
         ModelBroadcast("run-1", 3, model), COORDINATOR, f32, exact),
        ("model_broadcast_bfloat16", "Self-contained sparse model with bfloat16 values, Ed25519",
         ModelBroadcast("run-1", 3, model_bf16), COORDINATOR, bf16, exact),
        ("update_small", "docs/protocol.md worked example", worked_example_update(), KEY, f32, exact),
        ("update_int8", "Update with int8 values (per-tensor scale)", int8_update, KEY,
         {"value_format": "int8", "compression": "none"}, False),
        ("update_zstd", "Update whose values are byte-shuffled and zstd-compressed", big_update, KEY,
         {"value_format": "float32", "compression": "zstd"}, False),
        ("ack", "Ack of an update, Ed25519", Ack("run-1", 3, "dev-7", True, "accepted"), COORDINATOR, f32, exact),
        ("abort", "Abort a run, Ed25519", Abort("run-1", 4, "operator request"), COORDINATOR, f32, exact),
        ("ack_hmac", "Ack authenticated with an HMAC key (a verifier given that key accepts it)",
         Ack("run-1", 3, "dev-7", True, "accepted"), KEY, f32, exact),
        ("run_completed", "RunCompleted after 20 rounds: the final model (as model_broadcast's), accuracy, Ed25519",
         RunCompleted("run-1", 20, model, accuracy=0.875), COORDINATOR, f32, exact),
        ("run_completed_unevaluated", "RunCompleted of a run that was not evaluated (no accuracy), Ed25519",
         RunCompleted("run-1", 20, {"bias": model["bias"]}), COORDINATOR, f32, exact),
        ("device_error", "A device reports it cannot train round 3 (its data does not fit the model)",
         DeviceError("run-1", 3, "dev-7", "bad_data", "model digits_cnn takes inputs (1, 8, 8) but the local data "
                     "is (1, 28, 28)"), KEY, f32, exact),
        ("status_wire_counters", "Status schema 2: heartbeat carrying the device's cumulative MQTT wire bytes",
         Status("dev-7", "online", "", wire_sent_bytes=123456, wire_received_bytes=7890123), KEY, f32, exact),
        ("device_error_upload_cap", "A device declines round 4: its daily upload cap is used up",
         DeviceError("run-1", 4, "dev-7", "upload_cap_reached", "today's upload cap of 50 MB is used up (resets at "
                     "00:00 UTC)"), KEY, f32, exact),
    ]


def _refresh_crc(data: bytearray) -> bytes:
    """Recompute the CRC of an unauthenticated message after editing it."""
    assert data[6] == 0, "only for unauthenticated messages"
    crc_at = len(data) - 4
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    return bytes(data)


def _key_fields(key: object) -> dict:
    if isinstance(key, Ed25519Signer):
        seed = COORDINATOR_SEED if key is COORDINATOR else None
        return {"key_hex": None, "ed25519_public_hex": key.public_key_hex,
                "ed25519_seed_hex": None if seed is None else seed.hex()}
    return {"key_hex": None if key is None else key.hex()}  # type: ignore[attr-defined]


def _verifier(key: object) -> object:
    return key.verifier() if isinstance(key, Ed25519Signer) else key


def main() -> None:
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for path in VECTOR_DIR.glob("*"):
        path.unlink()
    valid: dict[str, bytes] = {}
    for seq, (name, description, msg, key, options, reencode_exact) in enumerate(_vectors(), start=1):
        data = encode_message(msg, key, seq=seq, timestamp=TIMESTAMP, **options)  # type: ignore[arg-type]
        valid[name] = data
        envelope = decode_envelope(data, _verifier(key))  # type: ignore[arg-type]
        record = {
            "description": description, "file": f"{name}.bin", **_key_fields(key),
            "encode_options": options,
            "envelope": {"version": envelope.version, "message_type": envelope.message_type,
                         "auth_algorithm": envelope.auth_algorithm, "run_id": envelope.run_id,
                         "server_round": envelope.server_round, "sender_id": envelope.sender_id,
                         "seq": envelope.seq, "timestamp_ms": envelope.timestamp_ms,
                         "payload_length": len(envelope.payload), "checksum": envelope.checksum},
            "message": message_to_json(msg if reencode_exact or options["value_format"] == "float32"
                                       else _decoded(data, _verifier(key))),
            "reencode_exact": reencode_exact,
        }
        _write(name, data, record)
    base = bytearray(valid["ack_hmac"])
    bad_version = bytearray(base)
    bad_version[4] = 2
    forged = bytearray(base)
    forged[-1] ^= 0x01
    corrupted = bytearray(base)
    corrupted[40] ^= 0x01
    forged_signature = bytearray(valid["task"])
    forged_signature[-1] ^= 0x01
    task = _decoded(valid["task"], COORDINATOR.verifier())
    hmac = KEY.hex()
    public = {"key_hex": None, "ed25519_public_hex": COORDINATOR.public_key_hex}
    negatives = [
        ("bad_version", "Protocol version 2: refused before anything else", bytes(bad_version),
         "UnsupportedVersionError", {"key_hex": hmac}),
        ("forged_tag", "Last tag byte flipped", bytes(forged), "AuthenticationError", {"key_hex": hmac}),
        ("corrupted", "A payload bit flipped, CRC not updated", bytes(corrupted), "ChecksumError", {"key_hex": hmac}),
        ("truncated", "Cut in the middle of the payload", bytes(base[:50]), "TruncatedError", {"key_hex": hmac}),
        ("trailing_bytes", "One byte after the tag", bytes(base) + b"\x00", "MalformedError", {"key_hex": hmac}),
        ("bad_state", "Status with state byte 9, CRC recomputed", _bad_state(), "MalformedError", {"key_hex": None}),
        ("forged_signature", "Ed25519-signed Task, last signature byte flipped", bytes(forged_signature),
         "AuthenticationError", public),
        ("task_other_signer", "Task signed by another Ed25519 key than the coordinator's",
         encode_message(task, OTHER_COORDINATOR, seq=1, timestamp=TIMESTAMP), "AuthenticationError", public),
        ("task_device_hmac", "Task authenticated with a device's HMAC key: devices must refuse it",
         encode_message(task, KEY, seq=1, timestamp=TIMESTAMP), "AuthenticationError", public),
        ("task_unsigned", "Unsigned Task: devices holding the coordinator's public key refuse it",
         encode_message(task, None, seq=1, timestamp=TIMESTAMP), "AuthenticationError", public),
        ("task_schema_1", "Task with schema version 1 (no nonce): refused", _task_schema_1(task),
         "UnsupportedVersionError", {"key_hex": None}),
        ("register_unsorted", "Register whose library names are not sorted", _unsorted_register(),
         "MalformedError", {"key_hex": None}),
        ("zstd_trailing", "Update whose zstd value block holds one byte after the frame", _zstd_trailing(),
         "MalformedError", {"key_hex": None}),
        ("model_delta_reserved", "ModelBroadcast with has_base_round=1, base_round=2 (deltas are not in the "
         "protocol)", _model_delta(), "MalformedError", {"key_hex": None}),
    ]
    for name, description, data, error, keys in negatives:
        _write(name, data, {"description": description, "file": f"{name}.bin", **keys, "expect_error": error})
    chunk_count = _write_chunk_vectors(valid["model_broadcast"])
    print(f"wrote {len(valid) + len(negatives)} message vectors and {chunk_count} chunking vectors to {VECTOR_DIR}")


def _reencode_payload(data: bytes, payload: bytes) -> bytes:
    """The same envelope header fields around another payload, unauthenticated."""
    env = decode_envelope(data)
    return encode_envelope(env.message_type, env.run_id, env.server_round, env.sender_id, env.seq,
                           env.timestamp_ms, payload, None)


def _task_schema_1(task: Task) -> bytes:
    data = encode_message(task, None, seq=1, timestamp=TIMESTAMP)
    payload = decode_envelope(data).payload.tobytes()
    return _reencode_payload(data, b"\x01" + payload[1:-8])  # the v1 layout: no trailing u64 nonce


def _unsorted_register() -> bytes:
    capabilities = Capabilities("aarch64", 4, 3906, {"numpy": "1.26.4", "python": "3.11.7"})
    data = encode_message(Register("dev-7", capabilities, 600, 2), None, seq=1, timestamp=TIMESTAMP)
    payload = decode_envelope(data).payload.tobytes()
    numpy_entry, python_entry = b"\x05\x00numpy\x06\x001.26.4", b"\x06\x00python\x06\x003.11.7"
    assert numpy_entry + python_entry in payload
    return _reencode_payload(data, payload.replace(numpy_entry + python_entry, python_entry + numpy_entry))


def _model_delta() -> bytes:
    broadcast = ModelBroadcast("run-1", 3, {"bias": SparseTensor((2,), np.array([0.5, -1.0], np.float32))})
    data = encode_message(broadcast, None, seq=1, timestamp=TIMESTAMP)
    payload = decode_envelope(data).payload.tobytes()
    assert payload[1:6] == bytes(5)  # schema u8, then the reserved has_base_round u8 and base_round u32
    return _reencode_payload(data, payload[:1] + b"\x01" + (2).to_bytes(4, "little") + payload[6:])


def _zstd_trailing() -> bytes:
    update = Update("run-1", 3, "dev-7", {"w": SparseTensor((64,), np.linspace(-1, 1, 64, dtype=np.float32))},
                    {}, 10, 1.25, 0.75, NONCE)
    data = encode_message(update, None, seq=1, timestamp=TIMESTAMP, compression="zstd")
    payload = bytearray(decode_envelope(data).payload.tobytes())
    # schema, sample_count, train_loss, compute_s, nonce, tensor count, name, ndim, dim, format, kind, count, codec
    at = 1 + 8 + 8 + 8 + 8 + 4 + 3 + 1 + 4 + 1 + 1 + 4 + 1
    assert payload[at - 1] == 1, "value codec zstd expected"
    (length,) = struct.unpack_from("<I", payload, at)
    end = at + 4 + length
    struct.pack_into("<I", payload, at, length + 1)
    payload[end:end] = b"\x00"
    return _reencode_payload(data, bytes(payload))


def _write_chunk_vectors(message: bytes) -> int:
    v1 = split_into_chunks(message, CHUNK_MAX_PACKET, version=1)
    v2 = split_into_chunks(message, CHUNK_MAX_PACKET, version=2)
    assert len(v1) >= 3, len(v1)
    cases = [
        ("chunks_model", "model_broadcast.bin split with max_packet 160, chunking version 1", v1, 1, None),
        ("chunks_bad_transfer_id", "Every chunk's transfer id zeroed: not the BLAKE2b-64 of the message", _with_id(v1),
         1, "MalformedError"),
        ("chunks_short_piece", "First piece one byte short: the pieces cannot tile the total length",
         [v1[0][:-1]] + v1[1:], 1, "MalformedError"),
        ("chunks_model_v2", "model_broadcast.bin split with max_packet 160, chunking version 2 (transfer id: "
         "BLAKE2b-64 of the first 64 and the last 64 bytes of the message)", v2, 2, None),
        ("chunks_v2_bad_transfer_id", "Chunking version 2, every transfer id zeroed", _with_id(v2), 2,
         "MalformedError"),
        ("chunks_v2_whole_message_id", "Chunking version 2 carrying the version-1 id (BLAKE2b-64 of the whole "
         "message): not the id of its edges", _with_id(v2, v1[0][8:16]), 2, "MalformedError"),
    ]
    for name, description, chunks, version, error in cases:
        files = [f"{name}_{i}.bin" for i in range(len(chunks))]
        for file, chunk in zip(files, chunks, strict=True):
            (VECTOR_DIR / file).write_bytes(chunk)
        record = {"description": description, "kind": "chunks", "message_file": "model_broadcast.bin",
                  "max_packet": CHUNK_MAX_PACKET, "chunk_header_bytes": CHUNK_HEADER_BYTES,
                  "chunking_version": version, "chunk_files": files}
        if error:
            record["expect_error"] = error
        (VECTOR_DIR / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return len(cases)


def _with_id(packets: list[bytes], transfer_id: bytes = bytes(8)) -> list[bytes]:
    """``packets`` with every chunk header's transfer id (bytes 8..16) replaced."""
    return [p[:8] + transfer_id + p[16:] for p in packets]


def _decoded(data: bytes, key: object):
    from protocol import decode_message

    return decode_message(data, key)  # type: ignore[arg-type]


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
    (1, "sender id length 5"), (4, "payload length 119 (u32)"), (5, "run id \"run-1\""),
    (5, "sender id \"dev-7\" (= Update.device_id)"),
    (1, "payload: schema version 2"), (8, "sample_count 60 (u64)"), (8, "train_loss 0.5 (f64)"),
    (8, "compute_s 1.5 (f64)"), (8, "task_nonce 0x0123456789abcdef (u64), echoed from the Task"),
    (4, "tensor set: 2 tensors (u32)"),
    (2, "tensor 0: name length 1"), (1, "name \"w\""), (1, "ndim 2"), (4, "dim 2"), (4, "dim 4"),
    (1, "value format 0 = float32"), (1, "position kind 0 = NONE (values on the known mask)"),
    (4, "value count 3"), (1, "value codec 0 = raw"), (12, "values 0.5, -1.0, 2.0 (f32)"),
    (2, "tensor 1: name length 1"), (1, "name \"b\""), (1, "ndim 1"), (4, "dim 2"),
    (1, "value format 0 = float32"), (1, "position kind 0 = NONE (dense: count == 2 elements)"),
    (4, "value count 2"), (1, "value codec 0 = raw"), (8, "values 0.25, 0.0 (f32)"),
    (4, "mask changes: 1 entry (u32)"), (2, "entry 0: name length 1"), (1, "name \"w\""), (1, "ndim 2"),
    (4, "dim 2"), (4, "dim 4"), (1, "dropped: kind 2 = BITMAP"), (4, "dropped: count 1"),
    (1, "dropped bitmap 0b01000000: position 1"), (1, "grown: kind 2 = BITMAP"), (4, "grown: count 1"),
    (1, "grown bitmap 0b00000010: position 6"), (4, "CRC-32 of bytes 0x0000-0x00a2"),
    (32, "HMAC-SHA256 tag of bytes 0x0000-0x00a6, key 00 01 02 ... 1f"),
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
