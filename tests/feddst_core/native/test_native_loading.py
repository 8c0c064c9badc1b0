"""Loading the native kernels does not import torch, and torch and the kernels share one OpenMP runtime
whichever is loaded first (the idle agent loads the kernels long before its first round imports torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feddst_core import native

ROOT = Path(__file__).resolve().parents[3]
MAPPED_OPENMP = ("import json; print(json.dumps(sorted({l.split()[-1] for l in open('/proc/self/maps') "
                 "if 'libgomp' in l})))")

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.status()}")


def mapped_openmp(first: str, then: str) -> list[str]:
    """The libgomp files mapped into a fresh interpreter after ``import FIRST; import THEN``."""
    code = f"import {first}; import {then}; {MAPPED_OPENMP}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_loading_the_kernels_does_not_import_torch() -> None:
    code = "import sys, feddst_core.native as n; assert n.available(), n.status(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "False"


def test_kernels_first_or_torch_first_map_the_same_single_openmp_runtime() -> None:
    torch_first = mapped_openmp("torch", "feddst_core.native")
    kernels_first = mapped_openmp("feddst_core.native", "torch")
    assert len(torch_first) == 1, torch_first  # the oracle: what torch alone resolves libgomp.so.1 to
    assert kernels_first == torch_first
    runtime = native.torch_openmp_runtime()
    if runtime is not None:
        assert Path(kernels_first[0]).resolve() == runtime.resolve()
