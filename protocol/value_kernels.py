"""Array kernels for decoded values: the byte unshuffle of zstd value blocks, a finiteness test and a scaled
float64 accumulation; compiled when the install built ``value_kernels.c``, numpy otherwise.

The compiled library (``protocol/_value_kernels*.so``, built by ``setup.py`` as an optional extension, plain C
with no Python or numpy headers) is loaded with ``ctypes.PyDLL``, so its calls keep the GIL: each takes a few
microseconds, where numpy releases the GIL for any loop over more than 500 elements and the calling thread
then waits to get it back behind the coordinator's other threads. Both forms give the same results bit for
bit (tested). Without the library, a stale build, or with ``FEDDST_PROTOCOL_KERNELS=0`` the numpy forms run;
:data:`STATUS` says which and why. Importing this module needs numpy only.

Measured (docs/results.md, branch ``ingest3``): the unshuffle of a 160 KB block 48-100 us (numpy) -> ~10 us.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

ABI = 2
"""``feddst_value_kernels_abi()`` of the ``value_kernels.c`` this code was written for (a stale build is not used)."""
COMPILED_MIN_VALUES = 512
"""Arrays shorter than this take the numpy forms (which keep the GIL below 500 elements): a ctypes call's own
cost (~1 us) is then not worth it."""
_STEM = "_value_kernels"
_ptr, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_SIGNATURES = {
    "feddst_unshuffle": ([_ptr, _i64, _i32, _ptr], None),
    "feddst_all_finite_f32": ([_ptr, _i64], _i32),
    "feddst_add_scaled_f32": ([_ptr, _ptr, _i64, ctypes.c_double], None),
    "feddst_add_scaled_many_f32": ([_ptr, _ptr, _ptr, _i64, ctypes.c_double], None),
}


def library_path() -> Path | None:
    """The built library next to this file, if the install compiled it."""
    here = Path(__file__).resolve().parent
    found = [path for suffix in (".so", ".dylib", ".pyd") for path in sorted(here.glob(f"{_STEM}*{suffix}"))]
    return found[0] if found else None


def open_library(path: Path | None) -> tuple[ctypes.PyDLL | None, str]:
    """(the library with its prototypes set, status line), or (None, why the numpy forms are used). Never raises."""
    if os.environ.get("FEDDST_PROTOCOL_KERNELS", "1") == "0":
        return None, "disabled by FEDDST_PROTOCOL_KERNELS=0: numpy forms"
    if path is None:
        return None, "not built (python setup.py build_ext --inplace, or pip install -e .): numpy forms"
    try:
        lib = ctypes.PyDLL(str(path))
        abi = lib.feddst_value_kernels_abi
    except (OSError, AttributeError) as exc:
        return None, f"cannot use {path.name}: {exc}: numpy forms"
    abi.restype, abi.argtypes = ctypes.c_int, []
    if abi() != ABI:
        return None, f"{path.name} is a stale build (ABI {abi()}, this code needs {ABI}); rebuild it: numpy forms"
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            return None, f"{path.name} lacks {name}; rebuild it: numpy forms"
        fn.argtypes, fn.restype = argtypes, restype
    return lib, f"loaded {path.name}"


_lib, STATUS = open_library(library_path())


def compiled() -> bool:
    """Whether the compiled kernels are in use."""
    return _lib is not None


def unshuffle(planes: np.ndarray, width: int) -> np.ndarray:
    """Undo the byte shuffle: ``width`` planes of ``count`` bytes (1-D uint8) -> a new uint8 array of
    ``count`` values of ``width`` bytes each (value ``i`` is byte ``i`` of every plane)."""
    if width == 1:
        return planes
    count = planes.size // width
    out = np.empty(count * width, dtype=np.uint8)
    if _lib is not None and count >= COMPILED_MIN_VALUES and planes.dtype == np.uint8 and planes.flags.c_contiguous:
        _lib.feddst_unshuffle(planes.ctypes.data, count, width, out.ctypes.data)
        return out
    # One contiguous read and one stride-``width`` write per plane; the transpose copy
    # (``planes.reshape(width, count).T.copy()``) reads with stride ``count`` and was 6x slower here.
    grid = out.reshape(count, width)
    for i, plane in enumerate(planes.reshape(width, count)):
        grid[:, i] = plane
    return out


def _fits(values: np.ndarray) -> bool:
    return (_lib is not None and values.size >= COMPILED_MIN_VALUES and values.dtype == np.float32
            and values.flags.c_contiguous)


def all_finite(values: np.ndarray) -> bool:
    """Whether every value (a float32 array) is finite: no NaN, no +-Inf."""
    if _fits(values):
        return bool(_lib.feddst_all_finite_f32(values.ctypes.data, values.size))  # type: ignore[union-attr]
    return bool(np.isfinite(values).all())


def add_scaled(acc: np.ndarray, values: np.ndarray, weight: float, scratch: np.ndarray | None = None) -> None:
    """``acc += weight * values`` in float64: ``acc`` 1-D float64 (contiguous, written in place), ``values``
    float32 of the same size; each product and each sum rounded to float64 (numpy's ``multiply`` into float64,
    then ``add``). ``scratch`` (optional, float64, at least ``values.size``) holds the products on the numpy path."""
    if _fits(values) and acc.dtype == np.float64 and acc.flags.c_contiguous and acc.size == values.size:
        _lib.feddst_add_scaled_f32(acc.ctypes.data, values.ctypes.data, values.size, float(weight))  # type: ignore[union-attr]
        return
    out = scratch[:values.size] if scratch is not None else None
    acc += np.multiply(values, weight, out=out, dtype=np.float64)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]  # a third cheaper than ``array.ctypes.data`` (no ctypes object)


class ScaledSums:
    """:func:`add_scaled` into a fixed set of float64 accumulators, all of one update's tensors in one compiled
    call (``feddst_add_scaled_many_f32``) instead of one per tensor: the same sums bit for bit.

    ``accumulators``: key -> 1-D float64 C-contiguous array, written in place; they must stay alive and unmoved
    while this object is used (their addresses are taken once, here). Values that do not fit the compiled call
    (not float32, not contiguous, another size) and every value without the library take :func:`add_scaled`."""

    def __init__(self, accumulators: Mapping[str, np.ndarray]):
        for key, acc in accumulators.items():
            if acc.dtype != np.float64 or acc.ndim != 1 or not acc.flags.c_contiguous:
                raise ValueError(f"{key}: an accumulator must be 1-D C-contiguous float64")
        self.accumulators = dict(accumulators)
        self._acc_address = {key: _address(acc) for key, acc in self.accumulators.items()}
        self._scratch = {key: np.empty(acc.size, dtype=np.float64) for key, acc in self.accumulators.items()}
        slots = max(1, len(self.accumulators))
        self._accs = np.zeros(slots, dtype=np.uintp)  # the call's three arrays, refilled per call
        self._values = np.zeros(slots, dtype=np.uintp)
        self._sizes = np.zeros(slots, dtype=np.int64)
        self._pointers = (_address(self._accs), _address(self._values), _address(self._sizes))

    def add(self, pairs: Iterable[tuple[str, np.ndarray]], weight: float) -> None:
        """``accumulators[key] += weight * values`` for every ``(key, values)`` (each key at most once)."""
        weight = float(weight)
        if _lib is None:
            for key, values in pairs:
                add_scaled(self.accumulators[key], values, weight, self._scratch[key])
            return
        accs, vals, sizes, f32 = self._accs, self._values, self._sizes, _F32
        count = 0
        for key, values in pairs:
            acc = self.accumulators[key]
            if values.dtype is not f32 or values.size != acc.size or not values.flags.c_contiguous:
                add_scaled(acc, values, weight, self._scratch[key])
                continue
            accs[count], vals[count], sizes[count] = self._acc_address[key], _address(values), values.size
            count += 1
        if count:
            _lib.feddst_add_scaled_many_f32(*self._pointers, count, weight)


_F32 = np.dtype(np.float32)
