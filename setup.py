"""Build hook for the compiled parts: the native CPU kernels (``feddst_core/native/feddst_kernels.c``) and the
protocol's value kernels (``protocol/value_kernels.c``: numpy-only callers, loaded with ctypes, optional too).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and ``feddst_core.native.available()`` reports why the torch fallback is used.
The C file is plain C11 + OpenMP (no Python or torch headers), loaded with ctypes. Compiler flags per
architecture (the NEON baseline on aarch64) live in ``feddst_core/native/build_flags.py``.
"""

import importlib.util
import platform
from pathlib import Path

from setuptools import Extension, setup

_spec = importlib.util.spec_from_file_location(
    "feddst_build_flags", Path(__file__).resolve().parent / "feddst_core" / "native" / "build_flags.py")
assert _spec is not None and _spec.loader is not None
build_flags = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_flags)  # by file: importing the package would need torch at build time

setup(
    ext_modules=[
        Extension(
            "feddst_core.native._feddst_kernels",
            sources=["feddst_core/native/feddst_kernels.c"],
            extra_compile_args=build_flags.compile_args(platform.machine()),
            extra_link_args=build_flags.link_args(platform.machine()),
            optional=True,
        ),
        Extension(  # protocol/value_kernels.py: the unshuffle of zstd value blocks etc.; numpy forms without it
            "protocol._value_kernels",
            sources=["protocol/value_kernels.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-wrapv"],
            optional=True,
        ),
    ]
)
