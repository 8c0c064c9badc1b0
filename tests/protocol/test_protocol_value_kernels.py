"""protocol/value_kernels.py: the compiled kernels (value_kernels.c) give what the numpy forms give, bit for
bit, and without the library (not built, disabled, stale) the numpy forms run and decoding still works."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protocol import value_kernels as vk

ROOT = Path(__file__).resolve().parents[2]
needs_library = pytest.mark.skipif(not vk.compiled(), reason=f"value kernels not built: {vk.STATUS}")


@pytest.fixture
def numpy_forms() -> Iterator[None]:
    """Run the block with the compiled library switched off (the module's own fallback)."""
    lib = vk._lib
    vk._lib = None
    try:
        yield
    finally:
        vk._lib = lib


def both(call):  # noqa: ANN001, ANN201
    """(compiled result, numpy result) of ``call()``."""
    compiled = call()
    lib, vk._lib = vk._lib, None
    try:
        return compiled, call()
    finally:
        vk._lib = lib


@needs_library
@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("count", [1, vk.COMPILED_MIN_VALUES - 1, vk.COMPILED_MIN_VALUES, 40_001])
def test_unshuffle_compiled_equals_numpy_and_inverts_the_shuffle(width: int, count: int) -> None:
    values = np.random.default_rng(count * 10 + width).integers(0, 256, size=(count, width), dtype=np.uint8)
    planes = np.frombuffer(values.T.copy().tobytes(), dtype=np.uint8)  # what the encoder's shuffle writes
    compiled, numpy_form = both(lambda: vk.unshuffle(planes, width))
    assert compiled.tobytes() == values.tobytes()
    assert numpy_form.tobytes() == values.tobytes()


def special_floats(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(size) * 10.0 ** rng.integers(-40, 38, size)).astype(np.float32)
    values[::7] = np.float32(np.finfo(np.float32).max)
    values[1::11] = np.float32(np.finfo(np.float32).smallest_subnormal)
    values[2::13] = np.float32(-0.0)
    return values


@needs_library
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
@pytest.mark.parametrize("where", [0, 700, -1])
def test_all_finite_compiled_equals_numpy(bad: float | None, where: int) -> None:
    values = special_floats(2000, 3)
    if bad is not None:
        values[where] = bad
    compiled, numpy_form = both(lambda: vk.all_finite(values))
    assert compiled == numpy_form == (bad is None)


@needs_library
def test_all_finite_sees_every_nan_bit_pattern() -> None:
    values = np.ones(4096, dtype=np.float32)
    bits = values.view(np.uint32)
    for pattern in (0x7F800001, 0xFFC00000, 0x7FFFFFFF, 0xFF800000):
        bits[1234] = pattern
        assert not vk.all_finite(values)
    bits[1234] = 0x7F7FFFFF  # the largest finite float32
    assert vk.all_finite(values)


@needs_library
@pytest.mark.parametrize("weight", [1.0, 40.0, 123_457.0, 0.3, 2.0**31 - 1])
def test_add_scaled_compiled_equals_numpy_bit_for_bit(weight: float) -> None:
    values = special_floats(51_245, 5)
    values[values == np.finfo(np.float32).max] = 3.0e37  # finite sums
    start = np.random.default_rng(9).standard_normal(values.size) * 1e30

    def fold() -> np.ndarray:
        acc = start.copy()
        for _ in range(3):
            vk.add_scaled(acc, values, weight)
        return acc

    compiled, numpy_form = both(fold)
    assert compiled.tobytes() == numpy_form.tobytes()


def test_add_scaled_numpy_form_uses_the_scratch_and_leaves_values(numpy_forms) -> None:  # noqa: ANN001
    values = np.arange(1000, dtype=np.float32)
    acc = np.full(1000, 0.5)
    scratch = np.zeros(1200)
    vk.add_scaled(acc, values, 2.0, scratch)
    assert np.array_equal(acc, 0.5 + 2.0 * values.astype(np.float64))
    assert np.array_equal(scratch[:1000], 2.0 * values.astype(np.float64))
    assert np.array_equal(values, np.arange(1000, dtype=np.float32))


def test_without_a_library_the_numpy_forms_run(tmp_path: Path) -> None:
    assert vk.open_library(None)[0] is None
    not_a_library = tmp_path / "_value_kernels.so"
    not_a_library.write_bytes(b"not an ELF file")
    lib, status = vk.open_library(not_a_library)
    assert lib is None and "cannot use" in status


@needs_library
def test_a_stale_build_is_not_used(monkeypatch) -> None:  # noqa: ANN001
    path = vk.library_path()
    assert path is not None
    assert isinstance(vk.open_library(path)[0], ctypes.PyDLL)
    monkeypatch.setattr(vk, "ABI", vk.ABI + 1)
    lib, status = vk.open_library(path)
    assert lib is None and "stale build" in status


def test_protocol_decodes_with_the_kernels_disabled() -> None:
    code = ("import numpy as np, protocol.value_kernels as vk; assert not vk.compiled(), vk.STATUS; "
            "from protocol import SparseTensor, decode_tensor_set, encode_tensor_set; "
            "v = np.random.default_rng(1).standard_normal(5000).astype(np.float32); "
            "out = decode_tensor_set(encode_tensor_set({'w': SparseTensor((5000,), v)}, compression='zstd')); "
            "assert out['w'].values.tobytes() == v.tobytes()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"FEDDST_PROTOCOL_KERNELS": "0",
                                                                           "PATH": "/usr/bin:/bin",
                                                                           "PYTHONPATH": str(ROOT)})


needs_zstd = pytest.mark.skipif(vk._zstd is None, reason=f"libzstd path not in use: {vk.ZSTD_STATUS}")


def zstd_block(values: np.ndarray, width: int) -> tuple[bytes, bytes]:
    """(frame, unshuffled bytes) of ``values`` (count x width uint8) as the encoder writes a zstd value block."""
    import zstandard

    planes = values.T.copy().tobytes()
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(planes)
    return frame, values.tobytes()


@needs_zstd
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("count", [1, 700, vk.RELEASE_GIL_MIN_BYTES // 4 - 1, vk.RELEASE_GIL_MIN_BYTES, 300_001])
def test_zstd_unshuffle_gives_the_zstandard_decode(width: int, count: int) -> None:
    rng = np.random.default_rng(count + width)
    values = (rng.standard_normal(count * width) * 1e-3).astype(np.float32).view(np.uint8)[:count * width]
    values = values.reshape(count, width)
    frame, expected = zstd_block(values, width)
    import zstandard

    oracle = np.frombuffer(zstandard.ZstdDecompressor().decompress(frame), np.uint8)
    assert oracle.reshape(width, count).T.tobytes() == expected  # the oracle: zstandard + a numpy transpose
    got = vk.zstd_unshuffle(memoryview(frame), count, width)
    assert got is not None and got.dtype == np.uint8 and got.tobytes() == expected


@needs_zstd
def test_zstd_unshuffle_refuses_what_is_not_exactly_one_good_frame() -> None:
    values = np.random.default_rng(4).integers(0, 8, size=(40_000, 4), dtype=np.uint8)
    frame, _ = zstd_block(values, 4)
    assert vk.zstd_unshuffle(frame, 40_000, 4) is not None
    assert vk.zstd_unshuffle(frame + b"\0", 40_000, 4) is None  # a byte after the frame
    assert vk.zstd_unshuffle(frame + frame, 40_000, 4) is None  # two frames
    assert vk.zstd_unshuffle(frame[:-9], 40_000, 4) is None  # truncated
    assert vk.zstd_unshuffle(frame, 40_001, 4) is None  # another content size
    assert vk.zstd_unshuffle(frame, 39_999, 4) is None
    assert vk.zstd_unshuffle(b"", 40_000, 4) is None


@needs_zstd
def test_large_blocks_release_the_gil_small_ones_keep_it() -> None:
    assert vk._zstd is not None
    pythonapi = ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    assert not vk._zstd.released._flags_ & pythonapi  # CDLL: the call releases the GIL
    assert vk._lib is not None and vk._lib.feddst_zstd_unshuffle._flags_ & pythonapi  # PyDLL: keeps it


@needs_zstd
def test_zstd_unshuffle_from_many_threads_at_once() -> None:
    import threading

    blocks = []
    for seed in range(6):
        values = np.random.default_rng(seed).integers(0, 4, size=(50_000 + seed, 4), dtype=np.uint8)
        blocks.append((*zstd_block(values, 4), 50_000 + seed))
    failures: list[int] = []

    def decode_all(offset: int) -> None:
        for i in range(30):
            frame, expected, count = blocks[(i + offset) % len(blocks)]
            got = vk.zstd_unshuffle(frame, count, 4)
            if got is None or got.tobytes() != expected:
                failures.append(offset)

    threads = [threading.Thread(target=decode_all, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_without_libzstd_zstandard_decodes(monkeypatch) -> None:  # noqa: ANN001
    from protocol import SparseTensor, decode_tensor_set, encode_tensor_set

    monkeypatch.delenv(vk.LIBZSTD_ENV, raising=False)
    monkeypatch.setattr(vk.ctypes.util, "find_library", lambda name: None)
    zstd, status = vk.open_zstd(vk._lib, vk.library_path())
    assert zstd is None and "not found" in status
    monkeypatch.setenv(vk.LIBZSTD_ENV, "")
    assert vk.open_zstd(vk._lib, vk.library_path())[0] is None
    monkeypatch.setattr(vk, "_zstd", None)
    values = np.random.default_rng(2).standard_normal(70_000).astype(np.float32)
    out = decode_tensor_set(encode_tensor_set({"w": SparseTensor((70_000,), values)}, compression="zstd"))
    assert out["w"].values.tobytes() == values.tobytes()


def decode_outcome(data: bytes) -> tuple[str, str]:
    """("ok", the values' bytes) or (error type, message) of decoding the tensor set ``data``."""
    from protocol import ProtocolError, decode_tensor_set

    try:
        return "ok", decode_tensor_set(data)["w"].values.tobytes().hex()
    except ProtocolError as exc:
        return type(exc).__name__, str(exc)


@needs_zstd
def test_damaged_blocks_decode_or_fail_as_with_zstandard(monkeypatch) -> None:  # noqa: ANN001
    """Flip bytes all over an encoded zstd block (frame header, blocks, end): the libzstd path gives what the
    zstandard path gives, the same values or the same error."""
    from protocol import SparseTensor, encode_tensor_set

    values = (np.random.default_rng(6).standard_normal(20_000) * 1e-2).astype(np.float32)
    data = encode_tensor_set({"w": SparseTensor((20_000,), values)}, compression="zstd")
    frame_start = data.index(b"\x28\xb5\x2f\xfd")  # zstd's magic number
    damaged = [data]
    for at in [*range(frame_start, frame_start + 24), *range(frame_start + 24, len(data), 97), len(data) - 1]:
        for flip in (0x01, 0x80, 0xFF):
            copy = bytearray(data)
            copy[at] ^= flip
            damaged.append(bytes(copy))
    with_libzstd = [decode_outcome(d) for d in damaged]
    monkeypatch.setattr(vk, "_zstd", None)
    with_zstandard = [decode_outcome(d) for d in damaged]
    assert with_libzstd == with_zstandard
    assert with_libzstd[0] == ("ok", values.tobytes().hex())
    assert sum(kind != "ok" for kind, _ in with_libzstd) > 50  # (zstd frames carry no checksum: most decode)


@needs_library
def test_a_libzstd_of_another_version_than_zstandard_bundles_is_not_used(monkeypatch) -> None:  # noqa: ANN001
    """zstd 1.5.4 decodes damaged frames that 1.5.7 reports as corrupt (found by the test above): only the
    version zstandard bundles may decode, so the refused frames stay the same."""
    import zstandard

    name = os.environ.get(vk.LIBZSTD_ENV) or vk.ctypes.util.find_library("zstd")
    if not name:
        pytest.skip("no libzstd on this machine")
    major, minor, patch = zstandard.ZSTD_VERSION
    monkeypatch.setattr(vk, "_zstandard_version", lambda: major * 10000 + minor * 100 + patch + 1)
    zstd, status = vk.open_zstd(vk._lib, vk.library_path())
    assert zstd is None and "zstandard bundles" in status


@pytest.mark.parametrize("size", [0, 1, 5119, 5120, 5121, 10_240, 162_969])
def test_crc32_keeping_gil_is_the_crc32(size: int) -> None:
    import zlib

    from protocol.checksum import crc32_keeping_gil

    data = np.random.default_rng(size).integers(0, 256, size=size + 3, dtype=np.uint8).tobytes()
    view = memoryview(data)[3:]  # an offset view, as the envelope check passes
    assert crc32_keeping_gil(view) == zlib.crc32(view)  # the oracle: zlib's CRC in one call
