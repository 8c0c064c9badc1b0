"""Round trips of every message type through the envelope, and the envelope's checks."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import messages

from protocol import (
    Abort,
    Ack,
    AuthenticationError,
    Capabilities,
    ChecksumError,
    DeviceError,
    InvalidMessageError,
    LimitExceededError,
    MalformedError,
    MaskChange,
    ModelBroadcast,
    ProtocolError,
    Register,
    RunCompleted,
    SparseTensor,
    Status,
    Task,
    TruncatedError,
    UnsupportedVersionError,
    Update,
    decode_envelope,
    decode_message,
    decode_message_with_envelope,
    encode_message,
    encoded_size,
)
from protocol.auth import HmacKey
from protocol.ed25519 import Ed25519Signer, Ed25519Verifier
from protocol.envelope import encode_envelope

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
COORDINATOR = Ed25519Signer(bytes(range(200, 232)))
OTHER_COORDINATOR = Ed25519Signer(bytes(range(32)))


def sample_messages():
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.eye(3, 4, dtype=bool)
    return [
        Register("dev-1", Capabilities("aarch64", 4, 3906, {"numpy": "1.26.4", "python": "3.11"}), 600, 41),
        Status("dev-1", "online", "heartbeat"),
        Status("dev-1", "offline"),
        Task("run-7", 3, ("dev-1", "dev-2"), 2, 1, 32, 0.01, 0.9, 1e-4, 0.0, True, 0.05, 1.7e9, 42,
             "mnist_cnn", 0xFEEDFACE12345678),
        ModelBroadcast("run-7", 3, {"fc.weight": SparseTensor.from_dense(weights, mask),
                                    "fc.bias": SparseTensor((3,), np.ones(3, np.float32))}),
        ModelBroadcast("run-7", 4, {"fc.bias": SparseTensor((3,), np.arange(3, dtype=np.float32))}),
        Update("run-7", 3, "dev-1", {"fc.weight": SparseTensor((3, 4), np.ones(3, np.float32)),
                                     "fc.bias": SparseTensor((3,), np.zeros(3, np.float32))},
               {"fc.weight": MaskChange([0], [1])}, 600, 0.25, 12.5, 0xFEEDFACE12345678),
        Ack("run-7", 3, "dev-1", True, "update accepted"),
        Abort("run-7", 5, "operator stopped the run"),
        RunCompleted("run-7", 20, {"fc.weight": SparseTensor.from_dense(weights, mask),
                                   "fc.bias": SparseTensor((3,), np.ones(3, np.float32))}, accuracy=0.8125),
        RunCompleted("run-7", 20, {"fc.bias": SparseTensor((3,), np.ones(3, np.float32))}),
        DeviceError("run-7", 3, "dev-1", "out_of_memory", "MemoryError while training round 3"),
        DeviceError("run-7", 3, "dev-1", "some_future_code"),
    ]


def _deployment_keys(msg):
    """(signer, verifier) a deployment uses: the device's HMAC key, or the coordinator's Ed25519 key."""
    if isinstance(msg, Register | Status | Update):
        return KEY, KEY
    return COORDINATOR, COORDINATOR.verifier()


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("authenticated", [False, True])
def test_every_message_type_round_trips(msg, authenticated):
    signer, verifier = _deployment_keys(msg) if authenticated else (None, None)
    data = encode_message(msg, signer, seq=7, timestamp=1_700_000_000.5)
    assert decode_message(data, verifier) == msg
    assert encoded_size(msg, authenticated=authenticated) == len(data)


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips_with_each_algorithm(msg):
    for signer, verifier, tag in [(KEY, KEY, 32), (HmacKey(KEY), HmacKey(KEY), 32),
                                  (COORDINATOR, COORDINATOR.verifier(), 64)]:
        data = encode_message(msg, signer, seq=7, timestamp=1.0)
        decoded = decode_message_with_envelope(data, verifier)
        assert decoded.message == msg and decoded.envelope.authenticated
        assert decoded.envelope.auth_algorithm == (1 if tag == 32 else 2)
        assert len(data) == len(encode_message(msg, None, seq=7, timestamp=1.0)) + tag


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.booleans(), st.integers(0, 2**64 - 1))
def test_random_messages_round_trip(msg, authenticated, seq):
    key = KEY if authenticated else None
    decoded = decode_message_with_envelope(encode_message(msg, key, seq=seq, timestamp=123.456), key)
    assert decoded.message == msg
    assert decoded.envelope.seq == seq
    assert decoded.envelope.timestamp_ms == 123456
    assert decoded.envelope.authenticated == authenticated


def test_envelope_carries_header_fields():
    msg = sample_messages()[6]
    envelope = decode_envelope(encode_message(msg, KEY, seq=99, timestamp=10.0), KEY)
    assert (envelope.version, envelope.message_type) == (1, 5)
    assert (envelope.run_id, envelope.server_round) == ("run-7", 3)
    assert (envelope.sender_id, envelope.seq, envelope.timestamp) == ("dev-1", 99, 10.0)
    assert envelope.authenticated


def test_key_lookup_by_sender_accepts_mapping_and_callable():
    data = encode_message(Status("dev-1", "busy"), KEY)
    keys = {"dev-1": KEY}
    assert decode_message(data, keys).state == "busy"
    assert decode_message(data, keys.get).state == "busy"
    assert decode_message(data, keys.__getitem__).state == "busy"
    with pytest.raises(AuthenticationError):
        decode_message(data, {"dev-2": KEY})
    with pytest.raises(AuthenticationError):
        decode_message(data, lambda sender: None)


def test_wrong_key_missing_tag_and_forged_tag_are_refused():
    msg = sample_messages()[6]
    with pytest.raises(AuthenticationError):
        decode_message(encode_message(msg, KEY), OTHER_KEY)
    with pytest.raises(AuthenticationError):
        decode_message(encode_message(msg, None), KEY)
    forged = bytearray(encode_message(msg, KEY))
    forged[-1] ^= 1
    with pytest.raises(AuthenticationError):
        decode_message(bytes(forged), KEY)


def test_device_cannot_claim_another_identity():
    update = sample_messages()[6]
    with pytest.raises(InvalidMessageError):
        encode_message(update, KEY, sender_id="dev-2")
    # The payload holds no device id for device messages: it is the authenticated sender.
    data = encode_message(update, {"dev-1": KEY}["dev-1"])
    assert decode_message(data, {"dev-1": KEY}).device_id == "dev-1"
    with pytest.raises(AuthenticationError):
        decode_message(data, {"dev-2": KEY})


def test_tampering_with_a_byte_is_detected_by_the_checksum():
    data = bytearray(encode_message(sample_messages()[3], None))
    data[40] ^= 0x10
    with pytest.raises(ChecksumError):
        decode_message(bytes(data))


def _reframe(data: bytes, **changes) -> bytes:
    """Rewrite fixed-header fields of an unauthenticated message and fix its CRC."""
    fields = list(struct.unpack_from("<4sBBBBIQQBBI", data, 0))
    names = ["magic", "version", "type", "auth", "flags", "round", "seq", "time", "run_len", "sender_len",
             "payload_len"]
    for name, value in changes.items():
        fields[names.index(name)] = value
    body = struct.pack("<4sBBBBIQQBBI", *fields) + data[34:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_unknown_protocol_version_is_refused_clearly():
    data = encode_message(sample_messages()[1])
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        decode_message(_reframe(data, version=2))
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        decode_message(data[:4] + b"\x02")  # refused before anything else is read


def test_unknown_schema_version_is_refused():
    data = encode_message(Abort("run-1", 1, "x"))
    payload = bytes([9]) + decode_envelope(data).payload[1:].tobytes()
    reframed = encode_envelope(7, "run-1", 1, "coordinator", 0, 0, payload, None)
    with pytest.raises(UnsupportedVersionError):
        decode_message(reframed)


def test_ed25519_signatures_verify_with_the_public_key_only():
    task = sample_messages()[3]
    data = encode_message(task, COORDINATOR, seq=5)
    public = Ed25519Verifier(COORDINATOR.public_key_hex)  # what a device holds: 64 hex characters
    decoded = decode_message_with_envelope(data, public)
    assert decoded.message == task and decoded.envelope.auth_algorithm == 2 and decoded.envelope.authenticated
    assert not decode_message_with_envelope(data, None).envelope.authenticated  # key=None: not verified


def test_a_device_cannot_forge_what_the_coordinator_signs():
    """An agent holding the coordinator's public key refuses a task signed with a device's HMAC key,
    an unsigned one, one signed with another Ed25519 key, and a signed one whose bytes were changed."""
    task = sample_messages()[3]
    public = COORDINATOR.verifier()
    with pytest.raises(AuthenticationError, match="HMAC-SHA256, expected Ed25519"):
        decode_message(encode_message(task, KEY), public)
    with pytest.raises(AuthenticationError, match="none, expected Ed25519"):
        decode_message(encode_message(task, None), public)
    with pytest.raises(AuthenticationError, match="does not verify"):
        decode_message(encode_message(task, OTHER_COORDINATOR), public)
    signed = bytearray(encode_message(task, COORDINATOR))
    signed[-1] ^= 0x01
    with pytest.raises(AuthenticationError, match="does not verify"):
        decode_message(bytes(signed), public)
    reframed = _reframe(encode_message(task, None), auth=2)  # auth byte 2 but no room for a signature
    with pytest.raises(TruncatedError):
        decode_message(reframed, public)


def test_bad_public_keys_are_refused_clearly():
    with pytest.raises(ValueError, match="64 hex characters"):
        Ed25519Verifier("abc")
    with pytest.raises(ValueError, match="non-hex"):
        Ed25519Verifier("z" * 64)
    with pytest.raises(ValueError, match="32 bytes"):
        Ed25519Verifier(b"\x01" * 31)


def test_register_library_names_must_be_sorted():
    register = Register("dev-1", Capabilities("x86_64", 2, 1024, {"zlib": "1", "numpy": "2"}), 5)
    data = encode_message(register)  # the encoder sorts: numpy before zlib
    payload = decode_envelope(data).payload.tobytes()
    assert payload.index(b"numpy") < payload.index(b"zlib")
    assert decode_message(data) == register
    in_order = b"\x05\x00numpy\x01\x002\x04\x00zlib\x01\x001"
    assert in_order in payload
    swapped = payload.replace(in_order, b"\x04\x00zlib\x01\x001\x05\x00numpy\x01\x002")
    reframed = encode_envelope(1, "", 0, "dev-1", 0, 0, swapped, None)
    with pytest.raises(MalformedError, match="sorted"):
        decode_message(reframed)


@pytest.mark.parametrize("cut", [0, 3, 4, 10, 33, 34, 40, -5, -1])
def test_truncated_messages_raise_truncated_error(cut):
    data = encode_message(sample_messages()[4], KEY)
    with pytest.raises(TruncatedError):
        decode_message(data[:cut], KEY)


def test_trailing_bytes_bad_magic_and_non_bytes_are_malformed():
    data = encode_message(sample_messages()[1])
    with pytest.raises(MalformedError):
        decode_message(data + b"\x00")
    with pytest.raises(MalformedError):
        decode_message(b"XXXX" + data[4:])
    with pytest.raises(MalformedError):
        decode_message("not bytes")  # type: ignore[arg-type]


def test_max_size_is_enforced_before_decoding():
    data = encode_message(sample_messages()[4])
    with pytest.raises(LimitExceededError):
        decode_message(data, max_size=len(data) - 1)
    assert decode_message(data, max_size=len(data)) == sample_messages()[4]


def test_declared_payload_length_is_not_trusted():
    data = encode_message(sample_messages()[1])
    with pytest.raises(TruncatedError):
        decode_message(_reframe(data, payload_len=1000))
    with pytest.raises(LimitExceededError):
        decode_message(_reframe(data, payload_len=2**32 - 1))


def test_runless_messages_must_not_carry_a_run():
    status_payload = decode_envelope(encode_message(Status("dev-1", "online"))).payload.tobytes()
    with pytest.raises(MalformedError):
        decode_message(encode_envelope(2, "run-1", 0, "dev-1", 0, 0, status_payload, None))


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "x" * 65, "-lead", "dév"])
def test_invalid_identifiers_are_refused_by_the_encoder(bad):
    with pytest.raises(InvalidMessageError):
        encode_message(Status(bad, "online"))


def test_encoder_refuses_unrepresentable_fields():
    with pytest.raises(InvalidMessageError):
        encode_message(Status("dev-1", "sleeping"))
    with pytest.raises(InvalidMessageError):
        encode_message(Abort("run-1", -1, "negative round"))
    with pytest.raises(InvalidMessageError):
        encode_message(Ack("run-1", 1, "dev-1", True), key=b"short")
    with pytest.raises(InvalidMessageError):
        encode_message("not a message")  # type: ignore[arg-type]
    update = sample_messages()[6]
    with pytest.raises(InvalidMessageError):
        encode_message(Update(update.run_id, 1, "dev-1", {}, {"ghost": MaskChange([], [])}, 1, 0.0, 0.0))


def test_update_mask_change_must_match_a_tensor_on_decode():
    update = sample_messages()[6]
    data = encode_message(update)
    assert decode_message(data).mask_changes == update.mask_changes


def test_protocol_error_hierarchy():
    for error in (TruncatedError, ChecksumError, AuthenticationError, UnsupportedVersionError,
                  LimitExceededError, MalformedError, InvalidMessageError):
        assert issubclass(error, ProtocolError)
    assert issubclass(InvalidMessageError, ValueError)


def test_quantized_update_values_within_bound():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(5000).astype(np.float32)
    update = Update("run-1", 2, "dev-9", {"w": SparseTensor((100, 50), values)}, {}, 10, 1.0, 2.0)
    for value_format in ("float16", "bfloat16", "int8"):
        decoded = decode_message(encode_message(update, KEY, value_format=value_format), KEY)
        from protocol import error_bound

        assert np.max(np.abs(decoded.tensors["w"].values - values)) <= error_bound(values, value_format)


def test_any_bytes_like_input_is_accepted_or_refused_with_protocol_errors():
    data = encode_message(sample_messages()[1])
    as_column = memoryview(np.frombuffer(data, np.uint8).reshape(-1, 1))
    assert decode_message(as_column) == sample_messages()[1]
    assert decode_message(bytearray(data)) == sample_messages()[1]
    for odd in (memoryview(np.zeros((4, 4))[:, ::2]), memoryview(data)[::2], None, 12, [1, 2]):
        with pytest.raises(ProtocolError):
            decode_message(odd)  # type: ignore[arg-type]


def test_key_lookup_returning_non_bytes_is_an_authentication_error():
    data = encode_message(Status("dev-1", "online"), KEY)
    with pytest.raises(AuthenticationError):
        decode_message(data, lambda sender: "not-bytes")  # type: ignore[arg-type,return-value]


def _with_payload(data: bytes, payload: bytes) -> bytes:
    """The same envelope header fields around another payload, unauthenticated."""
    from protocol.envelope import encode_envelope

    env = decode_envelope(data)
    return encode_envelope(env.message_type, env.run_id, env.server_round, env.sender_id, env.seq,
                           env.timestamp_ms, payload, None)


@pytest.mark.parametrize("accuracy", [-0.1, 1.5, float("nan"), float("inf")])
def test_run_completed_accuracy_outside_zero_one_is_refused(accuracy):
    bias = {"b": SparseTensor((2,), np.ones(2, np.float32))}
    with pytest.raises(InvalidMessageError, match="accuracy"):
        encode_message(RunCompleted("run-7", 3, bias, accuracy), None, seq=1)
    good = encode_message(RunCompleted("run-7", 3, bias, 0.5), None, seq=1, timestamp=1.0)
    payload = bytes(decode_envelope(good).payload)
    bad = payload[:2] + struct.pack("<d", accuracy) + payload[10:]  # u8 schema, u8 has_accuracy, f64 accuracy
    with pytest.raises(MalformedError, match="accuracy"):
        decode_message(_with_payload(good, bad))
    absent_but_set = payload[:1] + b"\x00" + payload[2:]  # has_accuracy 0 with accuracy 0.5
    with pytest.raises(MalformedError, match="accuracy"):
        decode_message(_with_payload(good, absent_but_set))


def test_device_error_codes_must_be_identifiers_on_both_ends():
    with pytest.raises(InvalidMessageError, match="DeviceError.code"):
        encode_message(DeviceError("run-1", 3, "dev-1", "bad data", "x"))
    with pytest.raises(InvalidMessageError, match="sender_id must equal device_id"):
        encode_message(DeviceError("run-1", 3, "dev-1", "bad_data"), sender_id="dev-2")
    data = bytearray(encode_message(DeviceError("run-1", 3, "dev-1", "bad_data", "detail")))
    at = bytes(data).index(b"bad_data")
    data[at:at + 8] = b"bad/data"  # a topic separator: not an identifier
    crc_at = len(data) - 4
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    with pytest.raises(MalformedError, match="DeviceError.code"):
        decode_message(bytes(data))
