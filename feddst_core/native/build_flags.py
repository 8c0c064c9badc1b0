"""Compiler and linker flags for the native kernels (``feddst_kernels.c``), per CPU architecture.

Read by ``setup.py`` (loaded from its file: the build must not import torch) and by the fast NEON
cross-compile test. Code is built for the architecture's *baseline*, never ``-march=native``: a wheel
or a device image built on one machine must run on every machine of its architecture.

* aarch64: ``-march=armv8-a+simd`` -- Armv8-A with Advanced SIMD (NEON), which every 64-bit ARM CPU
  has (Raspberry Pi 3/4/5: Cortex-A53/A72/A76). The loops are written for auto-vectorisation, so
  ``-O3`` turns them into 4-wide float NEON code; nothing newer (SVE, dotprod) is assumed.
* x86-64: the compiler's default baseline (SSE2).
"""

from __future__ import annotations

# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS (the kernels never rely on signed overflow wrapping):
# with it, the fused conv + pool backward measured 1.3-1.6x slower (2026-12-03, one thread).
COMMON_COMPILE_ARGS = ("-O3", "-std=gnu11", "-fopenmp", "-Wno-psabi", "-fno-wrapv")
LINK_ARGS = ("-fopenmp",)
ARCH_COMPILE_ARGS = {
    "aarch64": ("-march=armv8-a+simd",),
    "arm64": ("-march=armv8-a+simd",),  # macOS / some BSDs spell it arm64
}


def compile_args(machine: str) -> list[str]:
    """Flags to compile ``feddst_kernels.c`` for ``machine`` (``platform.machine()``, e.g. ``aarch64``)."""
    return [*COMMON_COMPILE_ARGS, *ARCH_COMPILE_ARGS.get(machine.lower(), ())]


def link_args(machine: str) -> list[str]:
    """Flags to link the shared library for ``machine`` (the same on every architecture today)."""
    return list(LINK_ARGS)
