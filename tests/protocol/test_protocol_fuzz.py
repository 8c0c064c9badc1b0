"""Fuzzing: arbitrary and mutated bytes must only ever raise ProtocolError, with bounded memory.

Mutating a whole message mostly exercises the CRC, so the deeper tests mutate the *payload* and
re-frame it with a correct CRC and HMAC tag: the payload decoders then see the hostile bytes.
Memory is measured with tracemalloc (numpy reports its buffers to it) under tight limits.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_messages import sample_messages

from protocol import (
    LimitExceededError,
    Limits,
    MalformedError,
    MaskChange,
    ProtocolError,
    SparseTensor,
    decode_envelope,
    decode_mask_changes,
    decode_message,
    decode_tensor_set,
    encode_mask_changes,
    encode_message,
    encode_tensor_set,
)
from protocol.envelope import encode_envelope

KEY = bytes(range(32))
TIGHT = Limits(max_elements=1 << 16, max_message_bytes=1 << 20)
MEMORY_ALLOWANCE = 8 * (1 << 16) + (1 << 20)
"""Decoding may use a few bytes per allowed element (mask, values, unpacked bits) plus slack."""


def _rich_messages():
    rng = np.random.default_rng(5)
    values = rng.standard_normal((20, 30)).astype(np.float32)
    masks = [rng.random((20, 30)) < density for density in (0.03, 0.5, 1.0)]
    model = {f"w{i}": SparseTensor.from_dense(values, mask) for i, mask in enumerate(masks)}
    model["b"] = SparseTensor.from_dense(values[0])
    from protocol import ModelBroadcast, Update

    update = Update("run-1", 4, "dev-3", {"w0": SparseTensor((20, 30), values[masks[0]]),
                                          "b": SparseTensor((30,), values[1])},
                    {"w0": MaskChange([int(np.flatnonzero(masks[0])[0])],
                                      [int(np.flatnonzero(~masks[0])[0])])},
                    10, 0.5, 1.0)
    built = [ModelBroadcast("run-1", 4, model), update]
    encoded = []
    for msg in [*sample_messages(), *built]:
        for value_format, compression in (("float32", "none"), ("int8", "zstd"), ("bfloat16", "auto")):
            encoded.append(encode_message(msg, KEY, value_format=value_format, compression=compression))
    return encoded


VALID = _rich_messages()


def _decode_measured(data: bytes, key=KEY) -> int:
    """Decode, require success or ProtocolError, and return the peak traced memory in bytes."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        decode_message(data, key, limits=TIGHT)
    except ProtocolError:
        pass
    return tracemalloc.get_traced_memory()[1] - before


@pytest.fixture(scope="module", autouse=True)
def traced_memory():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        position = rng.randrange(len(buffer)) if buffer else 0
        if choice == 0 and buffer:
            buffer[position] ^= 1 << rng.randrange(8)
        elif choice == 1 and buffer:
            buffer[position] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif choice == 2:
            buffer[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice == 3 and buffer:
            del buffer[position : position + rng.randint(1, 8)]
        elif choice == 4 and len(buffer) >= 4:
            position = rng.randrange(len(buffer) - 3)
            buffer[position : position + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x80",
                                                          rng.randbytes(4)])
        else:
            del buffer[position:]
    return bytes(buffer)


def _reframe_with_payload(original: bytes, payload: bytes) -> bytes:
    envelope = decode_envelope(original, KEY)
    return encode_envelope(envelope.message_type, envelope.run_id, envelope.server_round, envelope.sender_id,
                           envelope.seq, envelope.timestamp_ms, payload, KEY)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_protocol_errors(data):
    assert _decode_measured(data) <= MEMORY_ALLOWANCE
    assert _decode_measured(data, None) <= MEMORY_ALLOWANCE
    assert _decode_measured(b"FDST\x01" + data, None) <= MEMORY_ALLOWANCE


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.randoms(use_true_random=False))
def test_mutated_messages_raise_only_protocol_errors(data, rng):
    assert _decode_measured(_mutate(data, rng)) <= MEMORY_ALLOWANCE


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.randoms(use_true_random=False))
def test_mutated_payloads_with_valid_framing_raise_only_protocol_errors(data, rng):
    payload = decode_envelope(data, KEY).payload.tobytes()
    hostile = _reframe_with_payload(data, _mutate(payload, rng))
    assert _decode_measured(hostile) <= MEMORY_ALLOWANCE


def test_seeded_mutation_sweep():
    rng = random.Random(1234)
    for _ in range(3000):
        data = rng.choice(VALID)
        payload = decode_envelope(data, KEY).payload.tobytes()
        hostile = _reframe_with_payload(data, _mutate(payload, rng))
        assert _decode_measured(hostile) <= MEMORY_ALLOWANCE


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_tensor_set_and_mask_change_decoders_raise_only_protocol_errors(data):
    for decoder in (decode_tensor_set, decode_mask_changes):
        try:
            decoder(data, TIGHT)
        except ProtocolError:
            pass


def test_huge_declared_shapes_are_refused_before_allocation():
    tensors = {"w": SparseTensor((4, 4), np.ones(2, np.float32), np.arange(16).reshape(4, 4) < 2)}
    data = bytearray(encode_tensor_set(tensors, compression="none"))
    # name length (2) + name (1) + ndim (1): dims start at offset 4 + 4 = 8
    data[8:16] = (65535).to_bytes(4, "little") * 2
    with pytest.raises(LimitExceededError):
        decode_tensor_set(bytes(data))
    changes = bytearray(encode_mask_changes({"w": MaskChange([1], [2])}, {"w": (4, 4)}))
    changes[8:16] = (65535).to_bytes(4, "little") * 2
    with pytest.raises(LimitExceededError):
        decode_mask_changes(bytes(changes))


def test_zstd_bomb_is_refused_before_decompressing():
    tensor = SparseTensor((64,), np.zeros(64, np.float32))
    data = encode_tensor_set({"w": tensor}, compression="zstd")
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (1 << 24))
    start = data.index(b"\x28\xb5\x2f\xfd")  # zstd frame magic
    hostile = data[: start - 4] + len(bomb).to_bytes(4, "little") + bomb
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    with pytest.raises(MalformedError):
        decode_tensor_set(hostile)
    assert tracemalloc.get_traced_memory()[1] - before < 1 << 20
