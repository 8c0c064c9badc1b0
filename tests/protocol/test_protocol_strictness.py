"""Strictness fixes found by an independent implementation written from docs/protocol.md alone.

Each test fails on the code before the fix: a zstd block with bytes after its frame was accepted,
bfloat16 turned finite values >= 3.3961775e38 into inf, error_bound under-reported the error of
subnormal inputs (bfloat16) and of int8 tensors whose scale underflows, and the chunk reassembler
accepted pieces that cannot come from the splitter and a transfer id that is not the message's hash.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from protocol import (
    ChunkReassembler,
    MalformedError,
    SparseTensor,
    Update,
    decode_envelope,
    decode_message,
    encode_message,
    error_bound,
    split_into_chunks,
)
from protocol.envelope import encode_envelope

F32_MAX = float(np.finfo(np.float32).max)
BF16_MAX = 3.3895313892515355e38  # 0x7F7F


def _round_trip(values: np.ndarray, value_format: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    update = Update("run-1", 1, "dev-1", {"w": SparseTensor((values.size,), values)}, {}, 1, 0.0, 0.0)
    data = encode_message(update, value_format=value_format, compression="none")
    return decode_message(data).tensors["w"].values


def _max_error(values: np.ndarray, decoded: np.ndarray) -> float:
    return float(np.max(np.abs(decoded.astype(np.float64) - np.asarray(values, np.float64))))


def test_bfloat16_saturates_finite_values_instead_of_making_them_infinite():
    values = np.array([3.3961775e38, -3.3961775e38, F32_MAX, -F32_MAX, 3.3e38, 1.0], np.float32)
    decoded = _round_trip(values, "bfloat16")
    assert np.all(np.isfinite(decoded))
    assert decoded[0] == BF16_MAX and decoded[1] == -BF16_MAX and decoded[2] == BF16_MAX
    assert _max_error(values, decoded) <= error_bound(values, "bfloat16")
    specials = _round_trip(np.array([np.inf, -np.inf, np.nan], np.float32), "bfloat16")
    assert specials[0] == np.inf and specials[1] == -np.inf and np.isnan(specials[2])  # non-finite kept


@pytest.mark.parametrize("peak", [2.0**-149, 3e-45, 1e-40, 5.9e-39, 1.1754942e-38, 1e-30])
def test_bfloat16_error_bound_holds_for_subnormal_inputs(peak):
    values = np.float32(peak) * np.linspace(-1, 1, 41, dtype=np.float32)
    decoded = _round_trip(values, "bfloat16")
    assert _max_error(values, decoded) <= error_bound(values, "bfloat16")


@pytest.mark.parametrize("peak", [1e-45, 1e-43, 1e-40, 1e-38, 1.5e-36, 1e-30, 1.0, 3e38])
def test_int8_error_bound_holds_when_the_scale_underflows(peak):
    rng = np.random.default_rng(0)
    values = (np.float32(peak) * rng.uniform(-1, 1, 257).astype(np.float32)).astype(np.float32)
    values[0] = np.float32(peak)
    decoded = _round_trip(values, "int8")
    assert _max_error(values, decoded) <= error_bound(values, "int8")


def _zstd_update() -> bytes:
    values = np.linspace(-1, 1, 512, dtype=np.float32)
    update = Update("run-1", 1, "dev-1", {"w": SparseTensor((512,), values)}, {}, 1, 0.0, 0.0)
    return encode_message(update, compression="zstd")


def test_a_zstd_block_with_bytes_after_its_frame_is_rejected():
    data = _zstd_update()
    env = decode_envelope(data)
    payload = bytearray(env.payload.tobytes())
    at = 1 + 8 + 8 + 8 + 8 + 4 + 3 + 1 + 4 + 1 + 1 + 4 + 1  # the u32 C of the only value block
    (length,) = struct.unpack_from("<I", payload, at)
    assert decode_message(data).tensors["w"].values.size == 512
    for extra in (b"\x00", b"\x28\xb5\x2f\xfd"):  # one junk byte; the start of a second frame
        bad = bytearray(payload)
        struct.pack_into("<I", bad, at, length + len(extra))
        bad[at + 4 + length : at + 4 + length] = extra
        reframed = encode_envelope(5, "run-1", 1, "dev-1", 0, 0, bytes(bad), None)
        with pytest.raises(MalformedError, match="after the frame"):
            decode_message(reframed)


def test_chunks_must_tile_the_message_and_carry_its_transfer_id():
    message = bytes(range(256)) * 8
    chunks = split_into_chunks(message, 600)
    assert len(chunks) == 4
    assert ChunkReassembler().add(chunks[0]) is None
    wrong_id = [c[:8] + bytes(8) + c[16:] for c in chunks]
    reassembler = ChunkReassembler()
    with pytest.raises(MalformedError, match="transfer id"):
        for chunk in wrong_id:
            reassembler.add(chunk)
    # Same total and count, but pieces resized so they still add up: the splitter never does this.
    header = chunks[0][:28]
    pieces = [c[28:] for c in chunks]
    moved = [pieces[0][:-1], pieces[0][-1:] + pieces[1], pieces[2], pieces[3]]
    resized = [header[:24] + struct.pack("<I", i) + p for i, p in enumerate(moved)]
    reassembler = ChunkReassembler()
    with pytest.raises(MalformedError, match="chunk sizes"):
        for chunk in resized:
            reassembler.add(chunk)
    last_first = ChunkReassembler()  # the last piece first, then a middle piece that contradicts it
    last_first.add(chunks[3])
    with pytest.raises(MalformedError, match="chunk sizes"):
        last_first.add(header[:24] + struct.pack("<I", 1) + pieces[1][:-1])


def test_the_envelope_crc_is_zlibs_crc32_whichever_implementation_computes_it():
    """protocol.checksum may use zlib-ng: its CRC must be zlib's (ISO-HDLC), whole and continued, on any view."""
    import zlib

    from protocol.checksum import crc32

    rng = np.random.default_rng(3)
    for size in (0, 1, 15, 64, 1000, 163_000):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32(data) == zlib.crc32(data)
        assert crc32(memoryview(data)[size // 3:]) == zlib.crc32(data[size // 3:])
        assert crc32(data[size // 2:], crc32(data[: size // 2])) == zlib.crc32(data)


@pytest.mark.parametrize("size", [0, 1, 5119, 5120, 5121, 10_240, 162_969])
def test_the_envelope_check_s_crc_in_pieces_is_the_crc32(size: int) -> None:
    import zlib

    from protocol.checksum import crc32_keeping_gil

    data = np.random.default_rng(size).integers(0, 256, size=size + 3, dtype=np.uint8).tobytes()
    view = memoryview(data)[3:]  # an offset view, as the envelope check passes
    assert crc32_keeping_gil(view) == zlib.crc32(view)  # the oracle: zlib's CRC in one call


def _other_thread_progress(call) -> int:  # noqa: ANN001
    """How far a Python thread that wants the GIL got while ``call()`` ran on this one (0: the GIL was held)."""
    import sys
    import threading

    progress, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            progress[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)  # no forced switch away from this thread during the call
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        while progress[0] == 0:
            time.sleep(0.001)  # the spinner runs; this thread then waits for the GIL
        before = progress[0]
        for _ in range(10):  # ~1 ms of CRC each: ample time for a woken thread to run if the GIL was let go
            call()
        return progress[0] - before
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)


def test_the_envelope_check_s_crc_keeps_the_gil() -> None:
    """zlib-ng releases the GIL for inputs over 5120 bytes; the envelope check's CRC must not (the coordinator's
    decoder would wait up to a switch interval to get it back after a few microseconds of work)."""
    from protocol import checksum

    if checksum.SOURCE != "zlib-ng":
        pytest.skip("zlib-ng not installed: zlib's CRC releases the GIL and is not split")
    from protocol.envelope import decode_envelope, encode_envelope

    payload = np.random.default_rng(1).integers(0, 256, 32 * 1024 * 1024, dtype=np.uint8).tobytes()
    message = encode_envelope(Update.MESSAGE_TYPE, "run-1", 1, "dev-1", 1, 1, payload, None)
    assert _other_thread_progress(lambda: checksum.crc32(message)) > 0  # the probe works: one call lets it run
    assert _other_thread_progress(lambda: checksum.crc32_keeping_gil(memoryview(message))) == 0
    assert _other_thread_progress(lambda: decode_envelope(message)) == 0
