"""The native kernels build for 64-bit ARM with the NEON baseline (fast, compile-only, cross compiler).

Uses exactly the flags ``setup.py`` passes on aarch64 (``build_flags.compile_args("aarch64")``) with
``aarch64-linux-gnu-gcc`` (Debian: ``apt-get install gcc-aarch64-linux-gnu``; ``make setup`` installs
it). The object's disassembly must hold 4-wide float NEON instructions: the loops really vectorise for
the baseline, not only compile. The full proof (build, load and train in an emulated arm64 Debian) is
``make test-arm64`` (``FEDDST_TEST_ARM64=1``, tests/arm64/).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from feddst_core.native import build_flags

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "feddst_core" / "native" / "feddst_kernels.c"
CROSS_GCC = shutil.which("aarch64-linux-gnu-gcc")
CROSS_OBJDUMP = shutil.which("aarch64-linux-gnu-objdump")
FLOAT4_NEON = re.compile(r"\bv\d+\.4s\b")  # an Advanced SIMD instruction on 4 x float32 lanes
EM_AARCH64 = 183

needs_cross = pytest.mark.skipif(
    CROSS_GCC is None or CROSS_OBJDUMP is None,
    reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu, or make setup)")


def cross_compile(tmp_path: Path, flags: list[str]) -> tuple[bytes, str]:
    """Compile the kernels to an aarch64 object: (its bytes, its disassembly)."""
    assert CROSS_GCC is not None and CROSS_OBJDUMP is not None
    obj = tmp_path / "feddst_kernels.o"
    subprocess.run([CROSS_GCC, *flags, "-fPIC", "-Werror", "-c", str(SOURCE), "-o", str(obj)], check=True,
                   capture_output=True, text=True)
    disassembly = subprocess.run([CROSS_OBJDUMP, "-d", str(obj)], check=True, capture_output=True,
                                 text=True).stdout
    return obj.read_bytes(), disassembly


def test_aarch64_flags_are_the_neon_baseline_never_native() -> None:
    flags = build_flags.compile_args("aarch64")
    assert "-march=armv8-a+simd" in flags and "-O3" in flags and "-fopenmp" in flags
    assert not any("native" in flag for flag in flags)
    assert build_flags.compile_args("AArch64") == flags and build_flags.compile_args("arm64") == flags
    assert not any(flag.startswith("-march") for flag in build_flags.compile_args("x86_64"))


@needs_cross
def test_kernels_cross_compile_to_neon_code(tmp_path: Path) -> None:
    obj, disassembly = cross_compile(tmp_path, build_flags.compile_args("aarch64"))
    assert obj[:4] == b"\x7fELF" and int.from_bytes(obj[18:20], "little") == EM_AARCH64
    assert "feddst_sconv_forward" in disassembly and "feddst_abi_version" in disassembly
    assert len(FLOAT4_NEON.findall(disassembly)) >= 20, "the kernels' loops did not vectorise to NEON"


@needs_cross
def test_neon_check_detects_code_without_simd(tmp_path: Path) -> None:
    """The oracle's control: the same build with SIMD switched off has no NEON float code."""
    flags = [f for f in build_flags.compile_args("aarch64") if not f.startswith("-march")]
    _, disassembly = cross_compile(tmp_path, [*flags, "-march=armv8-a+nosimd"])
    assert not FLOAT4_NEON.findall(disassembly)
