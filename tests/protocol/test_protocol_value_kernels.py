"""protocol/value_kernels.py: the compiled kernels (value_kernels.c) give what the numpy forms give, bit for
bit, and without the library (not built, disabled, stale) the numpy forms run and decoding still works."""

from __future__ import annotations

import ctypes
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


def _scaled_sums_case() -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]:
    """Accumulators of several sizes (under and over COMPILED_MIN_VALUES) and one update's values for them, one
    strided (not contiguous: it must take the per-tensor path) and one key left out."""
    rng = np.random.default_rng(21)
    sizes = {"conv.w": 7_203, "conv.b": 32, "fc.w": 40_001, "fc.b": 10, "skip": 600, "strided": 900}
    start = {key: rng.standard_normal(n) * 1e3 for key, n in sizes.items()}
    values = {key: special_floats(n, len(key)) for key, n in sizes.items()}
    for v in values.values():
        v[v == np.finfo(np.float32).max] = 3.0e37
    values["strided"] = special_floats(1800, 4)[::2]
    return start, [(key, values[key]) for key in sizes if key != "skip"]


@pytest.mark.parametrize("weight", [1.0, 40.0, 0.3, 2.0**31 - 1])
def test_scaled_sums_equal_add_scaled_per_tensor_bit_for_bit(weight: float) -> None:
    start, pairs = _scaled_sums_case()

    def per_tensor() -> dict[str, np.ndarray]:
        accs = {key: acc.copy() for key, acc in start.items()}
        for _ in range(3):
            for key, values in pairs:
                vk.add_scaled(accs[key], values, weight)
        return accs

    def many() -> dict[str, np.ndarray]:
        accs = {key: acc.copy() for key, acc in start.items()}
        sums = vk.ScaledSums(accs)
        for _ in range(3):
            sums.add(pairs, weight)
        return accs

    lib = vk._lib
    vk._lib = None
    try:  # the oracle: numpy's multiply into float64 then add, tensor by tensor
        expected = per_tensor()
    finally:
        vk._lib = lib
    for got in (many(), per_tensor(), both(many)[1]):
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].tobytes() == expected[key].tobytes(), key
    assert many()["skip"].tobytes() == start["skip"].tobytes()  # not in the update: untouched


@needs_library
def test_scaled_sums_make_one_compiled_call_per_update(monkeypatch) -> None:  # noqa: ANN001
    start, pairs = _scaled_sums_case()
    calls: list[int] = []
    real = vk._lib

    class Counting:
        def __getattr__(self, name: str):  # noqa: ANN204
            fn = getattr(real, name)
            return (lambda *args: (calls.append(args[3]), fn(*args))[1]) if name == "feddst_add_scaled_many_f32" else fn

    monkeypatch.setattr(vk, "_lib", Counting())
    vk.ScaledSums({key: acc.copy() for key, acc in start.items()}).add(pairs, 3.0)
    assert calls == [4]  # conv.w, conv.b, fc.w, fc.b in one call; the strided values on their own


def test_scaled_sums_refuse_an_accumulator_they_cannot_write() -> None:
    with pytest.raises(ValueError, match="float64"):
        vk.ScaledSums({"a": np.zeros(10, dtype=np.float32)})
    with pytest.raises(ValueError, match="C-contiguous"):
        vk.ScaledSums({"a": np.zeros(20)[::2]})
