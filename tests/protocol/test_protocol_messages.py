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
    InvalidMessageError,
    LimitExceededError,
    MalformedError,
    MaskChange,
    ModelBroadcast,
    ProtocolError,
    Register,
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
from protocol.envelope import encode_envelope

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def sample_messages():
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.eye(3, 4, dtype=bool)
    return [
        Register("dev-1", Capabilities("aarch64", 4, 3906, {"numpy": "1.26.4", "python": "3.11"}), 600),
        Status("dev-1", "online", "heartbeat"),
        Status("dev-1", "offline"),
        Task("run-7", 3, ("dev-1", "dev-2"), 2, 1, 32, 0.01, 0.9, 1e-4, 0.0, True, 0.05, 1.7e9, 42,
             "mnist_cnn"),
        ModelBroadcast("run-7", 3, {"fc.weight": SparseTensor.from_dense(weights, mask),
                                    "fc.bias": SparseTensor((3,), np.ones(3, np.float32))}),
        ModelBroadcast("run-7", 4, {"fc.weight": SparseTensor((3, 4), np.ones(3, np.float32))}, base_round=3),
        Update("run-7", 3, "dev-1", {"fc.weight": SparseTensor((3, 4), np.ones(3, np.float32)),
                                     "fc.bias": SparseTensor((3,), np.zeros(3, np.float32))},
               {"fc.weight": MaskChange([0], [1])}, 600, 0.25, 12.5),
        Ack("run-7", 3, "dev-1", True, "update accepted"),
        Abort("run-7", 5, "operator stopped the run"),
    ]


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("key", [None, KEY])
def test_every_message_type_round_trips(msg, key):
    data = encode_message(msg, key, seq=7, timestamp=1_700_000_000.5)
    assert decode_message(data, key) == msg
    assert encoded_size(msg, authenticated=key is not None) == len(data)


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


def test_ed25519_is_reserved_but_unsupported():
    with pytest.raises(UnsupportedVersionError):
        decode_message(_reframe(encode_message(sample_messages()[1]), auth=2))


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
