"""Array kernels for decoded values: the byte unshuffle of zstd value blocks, a finiteness test and a scaled
float64 accumulation; compiled when the install built ``value_kernels.c``, numpy otherwise. With the library and
a libzstd of the version ``zstandard`` bundles (:func:`open_zstd`), :func:`zstd_unshuffle` decodes a whole zstd
value block (decompress + unshuffle) in one call; without libzstd the caller decompresses with ``zstandard``.

The compiled library (``protocol/_value_kernels*.so``, built by ``setup.py`` as an optional extension, plain C
with no Python or numpy headers) is loaded with ``ctypes.PyDLL``, so its calls keep the GIL: each takes a few
microseconds, where numpy releases the GIL for any loop over more than 500 elements and the calling thread
then waits to get it back behind the coordinator's other threads. Both forms give the same results bit for
bit (tested). Without the library, a stale build, or with ``FEDDST_PROTOCOL_KERNELS=0`` the numpy forms run;
:data:`STATUS` says which and why. Importing this module needs numpy only.

Measured (docs/results.md, branch ``ingest3``): the unshuffle of a 160 KB block 48-100 us (numpy) -> ~10 us.

The exception to keeping the GIL: :func:`zstd_unshuffle` of a block of at least :data:`RELEASE_GIL_MIN_BYTES`
(the fleet update's fc1 block: 205 KB, ~100 us of decompression and unshuffle) runs through a ``ctypes.CDLL``
handle of the same library, which releases the GIL for the whole call: one coarse stretch per update in which the
coordinator's other threads run Python, instead of ``zstandard`` releasing it for each block's decompression
alone (three hand-offs per update, two of them around 3 us of work) and the unshuffle then holding it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
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
    "feddst_zstd_unshuffle": ([_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i32, _ptr], _i32),
}
RELEASE_GIL_MIN_BYTES = 64 * 1024
"""zstd value blocks of at least this many decoded bytes are decoded with the GIL released (see the docstring)."""
LIBZSTD_ENV = "FEDDST_LIBZSTD"
"""Path of the libzstd to decode zstd value blocks with (default: the system's; empty: none), see :func:`open_zstd`."""
SCRATCH_MAX_BYTES = 4 * 1024 * 1024
"""Each thread keeps a scratch buffer for the byte planes of blocks up to this size (larger ones get their own)."""


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


class _Zstd:
    """libzstd's entry points for ``feddst_zstd_unshuffle`` and the kernel itself through a GIL-releasing handle."""

    def __init__(self, libzstd: ctypes.CDLL, kernels_path: Path):
        self.create_dctx = libzstd.ZSTD_createDCtx
        self.create_dctx.restype, self.create_dctx.argtypes = _ptr, []
        self.free_dctx = libzstd.ZSTD_freeDCtx
        self.free_dctx.restype, self.free_dctx.argtypes = ctypes.c_size_t, [_ptr]
        self.functions = [ctypes.cast(getattr(libzstd, name), _ptr).value for name in
                          ("ZSTD_decompressDCtx", "ZSTD_findFrameCompressedSize", "ZSTD_isError")]
        released = ctypes.CDLL(str(kernels_path)).feddst_zstd_unshuffle  # CDLL: the call releases the GIL
        argtypes, restype = _SIGNATURES["feddst_zstd_unshuffle"]
        released.argtypes, released.restype = argtypes, restype  # type: ignore[assignment]
        self.released = released
        self.local = threading.local()  # per thread: dctx (a _DCtx) and scratch (uint8 array)


class _DCtx:
    """One thread's ZSTD_DCtx (a context must not be used by two threads at once), freed with the thread's data."""

    def __init__(self, zstd: _Zstd):
        self.zstd, self.pointer = zstd, zstd.create_dctx()
        if not self.pointer:
            raise MemoryError("ZSTD_createDCtx failed")

    def __del__(self) -> None:
        self.zstd.free_dctx(self.pointer)


def open_zstd(lib: ctypes.PyDLL | None, kernels_path: Path | None) -> tuple[_Zstd | None, str]:
    """(libzstd for :func:`zstd_unshuffle`, status line), or (None, why the caller decompresses with zstandard).

    The library is ``$FEDDST_LIBZSTD`` (a path; empty: none) or the system's (``ctypes.util.find_library``), and it
    is used only when its version is the one ``zstandard`` bundles: zstd versions differ in which damaged frames
    they detect (1.5.4 decodes some that 1.5.7 reports as corrupt), so only the same version refuses exactly the
    frames the ``zstandard`` path refuses (valid frames decode to the same bytes with any version)."""
    if lib is None or kernels_path is None:
        return None, "no value kernels: zstandard decompresses"
    name = os.environ.get(LIBZSTD_ENV, None)
    if name is None:
        name = ctypes.util.find_library("zstd")
    if not name:
        return None, "libzstd not found: zstandard decompresses"
    try:
        libzstd = ctypes.CDLL(name)
        version_number = libzstd.ZSTD_versionNumber
        version_number.restype, version_number.argtypes = ctypes.c_uint, []
        found = version_number()
        wanted = _zstandard_version()
        if found != wanted:
            return None, (f"{name} is zstd {_dotted(found)}, zstandard bundles {_dotted(wanted)}: "
                          "zstandard decompresses")
        return _Zstd(libzstd, kernels_path), f"{name} (zstd {_dotted(found)}): one call per zstd value block"
    except (OSError, AttributeError) as exc:
        return None, f"cannot use {name}: {exc}: zstandard decompresses"


def _zstandard_version() -> int:
    import zstandard  # the protocol's dependency; imported here so this module's import needs numpy only

    major, minor, patch = zstandard.ZSTD_VERSION
    return major * 10000 + minor * 100 + patch


def _dotted(version: int) -> str:
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


_zstd, ZSTD_STATUS = open_zstd(_lib, library_path())


def zstd_unshuffle(frame: memoryview | bytes, count: int, width: int) -> np.ndarray | None:
    """The ``count * width`` decoded bytes (uint8, a new array, values unshuffled) of the zstd value block ``frame``
    (one frame filling it exactly, content size ``count * width`` declared and checked by the caller), or None when
    the kernels or libzstd are not in use or the frame does not decode (the caller then decodes it with zstandard,
    which says why)."""
    zstd = _zstd
    if zstd is None or count < 1:
        return None
    local = zstd.local
    dctx = getattr(local, "dctx", None)
    if dctx is None:
        dctx = local.dctx = _DCtx(zstd)
    size = count * width
    out = np.empty(size, dtype=np.uint8)
    scratch: np.ndarray = out
    if width > 1:
        kept = getattr(local, "scratch", None)
        if size > SCRATCH_MAX_BYTES:
            scratch = np.empty(size, dtype=np.uint8)
        elif kept is None or kept.size < size:
            scratch = local.scratch = np.empty(max(size, 256 * 1024), dtype=np.uint8)
        else:
            scratch = kept
    source = np.frombuffer(frame, dtype=np.uint8)
    call = zstd.released if size >= RELEASE_GIL_MIN_BYTES else _lib.feddst_zstd_unshuffle  # type: ignore[union-attr]
    if call(*zstd.functions, dctx.pointer, source.ctypes.data, source.size, scratch.ctypes.data, count, width,
            out.ctypes.data) != 0:
        return None
    return out


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
