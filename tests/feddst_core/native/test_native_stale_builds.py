"""Loading the native library: a stale or foreign build falls back to torch with a one-line status, never a crash.

The stale build is real: main's previous kernel source (ABI 4, from git history) compiled with gcc, the
situation after pulling this branch without re-running ``pip install -e .``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from feddst_core import native

REPO = Path(__file__).resolve().parents[3]
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="no gcc (apt-get install gcc)")


def build_so(tmp_path: Path, name: str, source: str) -> Path:
    """Compile C source text to a shared library tmp_path/name (no optimisation: only loading is tested)."""
    assert GCC is not None
    c_file, so = tmp_path / f"{name}.c", tmp_path / f"{name}.so"
    c_file.write_text(source)
    subprocess.run([GCC, "-O0", "-shared", "-fPIC", "-fopenmp", str(c_file), "-o", str(so)], check=True,
                   capture_output=True, text=True)
    return so


def abi4_source() -> str | None:
    """The last kernel source that declared ABI 4 (before the fused conv + pool), from git history."""
    log = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "-S", "return 4; }", "--",
                          "feddst_core/native/feddst_kernels.c"], capture_output=True, text=True)
    for commit in log.stdout.split():
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:feddst_core/native/feddst_kernels.c"],
                               capture_output=True, text=True)
        if shown.returncode == 0 and "feddst_abi_version(void) { return 4; }" in shown.stdout:
            return shown.stdout
    return None


@needs_gcc
def test_stale_abi4_build_is_refused_with_a_rebuild_hint(tmp_path: Path) -> None:
    source = abi4_source()
    if source is None:
        pytest.skip("no ABI 4 kernel source in this checkout's git history")
    lib, status = native.open_library(build_so(tmp_path, "_feddst_kernels_abi4", source))
    assert lib is None
    assert f"stale build (ABI 4, this code needs ABI {native.ABI_VERSION})" in status
    assert "pip install -e ." in status
    assert "\n" not in status


@needs_gcc
def test_library_without_abi_symbol_or_a_kernel_is_refused(tmp_path: Path) -> None:
    lib, status = native.open_library(build_so(tmp_path, "foreign", "int something_else(void) { return 1; }\n"))
    assert lib is None and "no feddst_abi_version" in status
    half = build_so(tmp_path, "half", f"int feddst_abi_version(void) {{ return {native.ABI_VERSION}; }}\n")
    lib, status = native.open_library(half)
    assert lib is None and "lacks feddst_" in status


def test_unloadable_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "_feddst_kernels.so"
    junk.write_bytes(b"not an ELF file")
    lib, status = native.open_library(junk)
    assert lib is None and status.startswith("cannot load _feddst_kernels.so")


@needs_gcc
def test_load_logs_the_stale_build_once_and_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    stale = build_so(tmp_path, "_feddst_kernels", "int feddst_abi_version(void) { return 4; }\n")
    monkeypatch.setattr(native, "library_path", lambda: stale)
    monkeypatch.setattr(native, "_status", native._status)  # restored after the test
    with caplog.at_level(logging.WARNING, logger="feddst_core.native"):
        assert native._load() is None
    assert "ABI 4" in native._status
    assert [r.getMessage() for r in caplog.records] == [f"native CPU kernels: {native._status}"]


def test_this_checkout_loads_its_own_build() -> None:
    path = native.library_path()
    if path is None:
        pytest.skip(f"native kernels not built: {native.status()}")
    lib, status = native.open_library(path)
    assert lib is not None, status
    assert status == f"loaded {path.name}"
