"""The native CPU kernels (``feddst_kernels.c``), loaded with ctypes, behind checked torch wrappers.

The C library is compiled by the package install (``pip install -e .`` runs ``setup.py``'s
``build_ext``; ``make setup`` does it for you). If it is absent (no C compiler on the device) or
disabled with ``FEDDST_NATIVE=0``, ``available()`` is False and callers use torch kernels instead:
results are the same math, only slower. ``status()`` says which and why.

This module loads the library and answers ``available()`` / ``status()`` without importing torch
(an idle edge agent reports its kernels and never loads torch). The torch wrappers live in
:mod:`feddst_core.native.tensor_kernels` and stay reachable here (``native.csr_matmul`` ...): the
first such attribute imports that module, and so torch.

Every wrapper checks dtypes (float32 data, int32 indices), contiguity and shapes and raises
``ValueError`` naming the problem, so the C code never sees memory it does not own. Outputs are
freshly allocated torch tensors. Kernels run on torch's own OpenMP thread pool
(``torch.get_num_threads()`` threads, or ``kernel_threads(n)``'s; see the C file's header).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feddst_core.native.tensor_kernels import (
        POOL_CLIPPED,
        csr_linear_backward,
        csr_linear_backward_sgd_,
        csr_matmul,
        csr_sddmm,
        is_batch_last,
        kernel_threads,
        max_pool2d_backward,
        max_pool2d_forward,
        sgd_step_,
        sparse_conv2d_backward_input,
        sparse_conv2d_backward_weight,
        sparse_conv2d_forward,
        sparse_conv2d_pool_backward,
        sparse_conv2d_pool_forward,
    )

ABI_VERSION = 9
_LIB_STEM = "_feddst_kernels"

_lib: ctypes.CDLL | None = None
_status = "not loaded yet"

# Pointers travel as plain addresses (c_void_p, from Tensor.data_ptr()): a ctypes.cast per argument would
# cost more than a small kernel. The C prototypes give the element types; the wrappers check the dtypes.
_f32p = _i32p = _u8p = _i16p = ctypes.c_void_p
_int = ctypes.c_int
_long = ctypes.c_long

_SIGNATURES = {
    "feddst_sconv_forward": [_f32p, _int, _int, _int, _int, _i32p, _i32p, _f32p, _f32p, _int, _int, _f32p, _int],
    "feddst_sconv_backward_input": [_f32p, _int, _int, _i32p, _i32p, _f32p, _int, _int, _int, _int, _f32p, _int],
    "feddst_sconv_backward_weight": [_f32p, _f32p, _int, _int, _int, _int, _int, _int, _i32p, _i32p, _f32p,
                                     _f32p, _int],
    "feddst_sconv_pool_forward": [_f32p, _int, _int, _int, _int, _i32p, _i32p, _f32p, _f32p, _int, _int, _int,
                                  _int, _int, _f32p, _u8p, _int],
    "feddst_sconv_pool_backward": [_f32p, _f32p, _int, _u8p, _int, _int, _int, _int, _int, _int, _int, _i32p,
                                   _i32p, _f32p, _i32p, _i32p, _i32p, _f32p, _f32p, _f32p, _int],
    "feddst_csr_matmul": [_i32p, _i32p, _i16p, _f32p, _i32p, _f32p, _int, _f32p, _int, _f32p, _int],
    "feddst_csr_sddmm": [_i32p, _i32p, _int, _f32p, _f32p, _int, _f32p, _f32p, _int],
    "feddst_csr_linear_backward": [_i32p, _i32p, _i32p, _i32p, _i16p, _i32p, _f32p, _int, _int, _f32p, _f32p, _int,
                                   _f32p, _f32p, _f32p, _int],
    "feddst_csr_linear_backward_sgd": [_i32p, _i32p, _i16p, _f32p, _int, _int, _f32p, _f32p, _int, _f32p, _f32p,
                                       _f32p, _f32p, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                                       _int, _int],
    "feddst_maxpool_forward": [_f32p, _long, _int, _int, _int, _int, _int, _f32p, _u8p, _int],
    "feddst_maxpool_backward": [_f32p, _u8p, _long, _int, _int, _int, _int, _f32p, _int],
    "feddst_sgd_step": [_f32p, _f32p, _f32p, _u8p, _f32p, _long, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                        ctypes.c_float, _int],
}


def library_path() -> Path | None:
    """The built shared library next to this file, if the install compiled it."""
    here = Path(__file__).resolve().parent
    found = sorted(here.glob(f"{_LIB_STEM}*.so")) + sorted(here.glob(f"{_LIB_STEM}*.dylib"))
    return found[0] if found else None


def torch_openmp_runtime() -> Path | None:
    """torch's own ``lib/libgomp.so.1``, found without importing torch (None: torch absent, or its wheel
    names its OpenMP runtime otherwise)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    candidate = Path(locations[0]) / "lib" / "libgomp.so.1" if locations else None
    return candidate if candidate is not None and candidate.is_file() else None


def _preload_torch_openmp() -> None:
    """Load torch's OpenMP runtime before the kernels: they need ``libgomp.so.1`` by soname, and the dynamic
    loader reuses a loaded library of that soname. Loaded first (this module no longer imports torch), the
    kernels would otherwise bind the system's libgomp and torch, imported later, would reuse that one
    instead of its own; this way both use torch's, as when torch is imported first: one thread pool."""
    runtime = torch_openmp_runtime()
    if runtime is not None:
        try:
            ctypes.CDLL(str(runtime))
        except OSError:
            pass  # the kernels then load the system's libgomp, as they would without torch


def open_library(path: Path) -> tuple[ctypes.CDLL | None, str]:
    """Load the shared library at ``path`` if it is a build of this ABI: (library with its prototypes set,
    status line), or (None, the reason in one line and what to do). Never raises: a library that cannot
    be loaded, lacks a kernel or is a stale build (an older ``feddst_kernels.c``) means the torch fallback."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"cannot load {path.name}: {exc}; rebuild with `pip install -e .`; torch kernels are used"
    rebuild = ("rebuild with `pip install -e .` (or `python setup.py build_ext --inplace`); "
               "torch kernels are used until then")
    try:
        version_fn = lib.feddst_abi_version
    except AttributeError:
        return None, f"{path.name} has no feddst_abi_version (not a FedDST kernel build); {rebuild}"
    version_fn.restype = ctypes.c_int
    version_fn.argtypes = []
    found = version_fn()
    if found != ABI_VERSION:
        return None, f"{path.name} is a stale build (ABI {found}, this code needs ABI {ABI_VERSION}); {rebuild}"
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            return None, f"{path.name} (ABI {found}) lacks {name}; {rebuild}"
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int  # 0 = ok, 1 = a scratch allocation failed
    return lib, f"loaded {path.name}"


def _load() -> ctypes.CDLL | None:
    global _status
    if os.environ.get("FEDDST_NATIVE", "1") == "0":
        _status = "disabled by FEDDST_NATIVE=0"
        return None
    path = library_path()
    if path is None:
        _status = ("not built: run `pip install -e .` (or `make setup`) on a machine with a C compiler "
                   "(Debian: apt-get install -y gcc); torch kernels are used instead")
        return None
    _preload_torch_openmp()
    lib, _status = open_library(path)
    if lib is None:  # built but unusable: say so once (a missing compiler is the documented quiet case)
        logging.getLogger(__name__).warning("native CPU kernels: %s", _status)
    return lib


_lib = _load()


def available() -> bool:
    """True when the native kernels are built, loadable and enabled."""
    return _lib is not None


def status() -> str:
    """One line: loaded, or why not (and what to do)."""
    return _status


def _require() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError(f"native kernels unavailable: {_status}")
    return _lib


TENSOR_KERNELS = ("POOL_CLIPPED", "csr_linear_backward", "csr_linear_backward_sgd_", "csr_matmul", "csr_sddmm",
                  "max_pool2d_backward", "max_pool2d_forward",
                  "sparse_conv2d_backward_input", "sparse_conv2d_backward_weight", "sparse_conv2d_forward",
                  "sparse_conv2d_pool_backward", "sparse_conv2d_pool_forward", "sgd_step_", "is_batch_last",
                  "kernel_threads")
"""The names :mod:`feddst_core.native.tensor_kernels` provides through this module."""
__all__ = ["ABI_VERSION", "POOL_CLIPPED", "available", "csr_linear_backward", "csr_linear_backward_sgd_", "csr_matmul",
           "csr_sddmm", "library_path",
           "max_pool2d_backward", "max_pool2d_forward", "sparse_conv2d_backward_input",
           "sparse_conv2d_backward_weight", "sparse_conv2d_forward", "sparse_conv2d_pool_backward",
           "sparse_conv2d_pool_forward", "sgd_step_", "is_batch_last", "kernel_threads", "status"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - PEP 562: the torch wrappers, imported on first use
    if name in TENSOR_KERNELS:
        wrappers = importlib.import_module("feddst_core.native.tensor_kernels")
        # bound here once: later look-ups (a dozen per training step) are plain module attributes, not this hook
        globals().update({n: getattr(wrappers, n) for n in TENSOR_KERNELS})
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
