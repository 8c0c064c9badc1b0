#!/usr/bin/env python3
"""Make PyPI's CUDA build of torch import and train on the CPU without its NVIDIA libraries.

On aarch64, ``pip install torch==2.13.0`` from PyPI resolves to the CUDA 13 build: the torch wheel
(~0.9 GB installed) plus ~2.9 GB of ``nvidia-*`` / ``cuda-*`` wheels. Installed with ``--no-deps``,
``import torch`` fails, because torch's own shared libraries (even ``libtorch_cpu.so``) are linked
against ``libcudart.so.13``, ``libcupti.so.13``, ``libcublas.so.13``, ... This tool writes one tiny
stub library per missing NVIDIA library into ``torch/lib`` (found there through torch's
``$ORIGIN`` rpath, after the ``nvidia/*`` directories, so real NVIDIA libraries installed later
win). Each stub defines exactly the symbols and symbol versions torch's libraries import from that
library; every stubbed function returns 100 (``cudaErrorNoDevice`` / ``CUDA_ERROR_NO_DEVICE``), the
``...String``/``...Name`` ones a message, so ``torch.cuda.is_available()`` is False and the CPU
paths are untouched (the fat-binary registration calls ``__cuda*`` get a dummy handle). torch's own
CUDA libraries (``libtorch_cuda.so``, 0.4 GB) stay: replacing them by stubs as well was measured to
crash in ``libtorch_python.so``'s static initialisation.

Usage (with the venv's python, after ``pip install --no-deps torch==...``; needs gcc and readelf,
which ``apt-get install gcc`` brings)::

    python deploy/torch_cuda_stubs.py [--torch-lib DIR] [--dry-run]

Exit codes: 0 done (or nothing to do: a CPU build of torch), 2 a tool or torch is missing (message
says what to do). It never touches torch's CPU libraries. Re-running is idempotent.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "FEDDST_CUDA_STUBS.txt"
STRING_RESULT = re.compile(r"(String|Name)$")
SYSTEM_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64")


class StubError(Exception):
    """A tool is missing or torch is not where it was expected (the message says what to do)."""


@dataclass
class ElfInfo:
    """What one shared library needs and offers (from ``readelf``)."""

    needed: list[str] = field(default_factory=list)
    # (symbol, version name or "", type) of every non-weak undefined dynamic symbol
    undefined: list[tuple[str, str, str]] = field(default_factory=list)
    defined: set[str] = field(default_factory=set)
    version_files: dict[str, str] = field(default_factory=dict)  # version name -> file it comes from


def readelf(path: Path) -> ElfInfo:
    """Parse ``readelf -W -d --dyn-syms -V`` of one library."""
    out = subprocess.run(["readelf", "-W", "-d", "--dyn-syms", "-V", str(path)], capture_output=True,
                         text=True, check=True).stdout
    info = ElfInfo()
    current_file = ""
    for line in out.splitlines():
        needed = re.search(r"\(NEEDED\)\s+Shared library: \[(.+)\]", line)
        if needed:
            info.needed.append(needed.group(1))
            continue
        verneed_file = re.search(r"Version: \d+\s+File: (\S+)\s+Cnt:", line)
        if verneed_file:
            current_file = verneed_file.group(1)
            continue
        verneed_name = re.search(r"^\s+0x[0-9a-f]+:\s+Name: (\S+)\s+Flags:", line)
        if verneed_name and current_file:
            info.version_files[verneed_name.group(1)] = current_file
            continue
        parts = line.split()
        if len(parts) >= 8 and parts[0].endswith(":") and parts[0][:-1].isdigit():
            kind, bind, ndx, name = parts[3], parts[4], parts[6], parts[7]
            symbol, _, version = name.partition("@")
            version = version.lstrip("@").split(" ")[0]
            if ndx == "UND":
                if symbol and bind != "WEAK":
                    info.undefined.append((symbol, version, kind))
            elif symbol:
                info.defined.add(symbol)
    return info


def system_libraries() -> dict[str, Path]:
    """soname -> path of the libraries the dynamic loader finds (``ldconfig -p``)."""
    found: dict[str, Path] = {}
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    result = subprocess.run([ldconfig, "-p"], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        match = re.match(r"\s+(\S+) \(.*\) => (\S+)", line)
        if match:
            found.setdefault(match.group(1), Path(match.group(2)))
    return found


def torch_lib_dir() -> Path:
    spec = importlib.util.find_spec("torch")  # finds the package without importing it (that would fail)
    if spec is None or not spec.submodule_search_locations:
        raise StubError("torch is not installed in this Python: pip install --no-deps torch==VERSION first")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


@dataclass
class StubPlan:
    """The stubs to write: soname -> {version name ("" = unversioned): {symbol: type}}."""

    stubs: dict[str, dict[str, dict[str, str]]]


def plan_stubs(lib_dir: Path, system: dict[str, Path]) -> StubPlan:
    """Which stub libraries torch's libraries need, and which symbols each must define."""
    marker = lib_dir / MARKER
    earlier = set(marker.read_text().split()) if marker.exists() else set()
    real = {p.name: p for p in sorted(lib_dir.glob("*.so*")) if p.is_file() and p.name not in earlier}
    infos = {name: readelf(path) for name, path in real.items()}
    defined: set[str] = set().union(*(info.defined for info in infos.values())) if infos else set()
    missing: set[str] = set()
    for info in infos.values():
        missing.update(n for n in info.needed if n not in real and (n in earlier or n not in system))
    needing_system = {n for info in infos.values() for n in info.needed if n not in real and n not in missing}
    for soname in sorted(needing_system):
        defined |= readelf(system[soname]).defined
    defined |= readelf(Path(sys.executable).resolve()).defined  # the interpreter's Py* API
    stubs: dict[str, dict[str, dict[str, str]]] = {soname: {} for soname in missing}
    # unversioned imports nobody defines go to the CUDA runtime's stub (every torch library needs it)
    catch_all = sorted(n for n in missing if n.startswith("libcudart.so")) or sorted(missing)[:1]
    for info in infos.values():
        for symbol, version, kind in info.undefined:
            owner = info.version_files.get(version, "")
            if owner in stubs:
                stubs[owner].setdefault(version, {})[symbol] = kind
            elif not version and symbol not in defined:
                for soname in catch_all:
                    stubs[soname].setdefault("", {})[symbol] = kind
    return StubPlan(stubs=stubs)


def stub_source(symbols: dict[str, dict[str, str]]) -> tuple[str, str]:
    """C source and linker version script for one stub library."""
    lines = ['static const char feddst_no_cuda[] = "no CUDA: this torch runs CPU-only (CUDA libraries are '
             'FedDST stubs)";',
             "static void *feddst_handle[64];"]
    for index, (symbol, kind) in enumerate(sorted({s: k for v in symbols.values() for s, k in v.items()}.items())):
        if kind == "OBJECT":
            lines.append(f'__attribute__((aligned(64))) char feddst_obj{index}[4096] __asm__("{symbol}");')
        elif symbol.startswith("__cuda"):  # the fat-binary registration ABI: returns a handle (void **)
            lines.append(f'void *feddst_fn{index}(void) __asm__("{symbol}");')
            lines.append(f"void *feddst_fn{index}(void) {{ return feddst_handle; }}")
        elif STRING_RESULT.search(symbol):
            lines.append(f'const char *feddst_fn{index}(void) __asm__("{symbol}");')
            lines.append(f"const char *feddst_fn{index}(void) {{ return feddst_no_cuda; }}")
        else:
            lines.append(f'long feddst_fn{index}(void) __asm__("{symbol}");')
            lines.append(f"long feddst_fn{index}(void) {{ return 100; }}")
    nodes = []
    for version, names in sorted(symbols.items()):
        body = " ".join(f"{name};" for name in sorted(names))
        nodes.append(f"{version} {{ global: {body} }};" if version else f"{{ global: {body} }};")
    if not any(symbols):
        nodes = []
    elif "" in symbols and len(symbols) > 1:
        # an anonymous node cannot be combined with named ones: unversioned symbols join the first name
        named = sorted(v for v in symbols if v)
        merged = {**symbols[named[0]], **symbols[""]}
        rest = {v: symbols[v] for v in named[1:]}
        return stub_source({named[0]: merged, **rest})
    return "\n".join(lines) + "\n", "\n".join(nodes) + "\n"


def build_stub(lib_dir: Path, soname: str, symbols: dict[str, dict[str, str]], work: Path) -> None:
    source, script = stub_source(symbols)
    c_file, map_file = work / f"{soname}.c", work / f"{soname}.map"
    c_file.write_text(source)
    map_file.write_text(script)
    tmp = lib_dir / f".{soname}.tmp"
    command = ["gcc", "-shared", "-fPIC", "-O1", "-o", str(tmp), str(c_file), f"-Wl,-soname,{soname}"]
    if script.strip():
        command.append(f"-Wl,--version-script={map_file}")
    subprocess.run(command, check=True)
    tmp.replace(lib_dir / soname)  # atomic: a crash never leaves a half-written library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-lib", type=Path, help="torch/lib of the venv (default: this Python's torch)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    args = parser.parse_args(argv)
    try:
        for tool in ("readelf", "gcc"):
            if shutil.which(tool) is None:
                raise StubError(f"{tool} not found: apt-get install -y gcc binutils")
        lib_dir = args.torch_lib or torch_lib_dir()
        if not lib_dir.is_dir():
            raise StubError(f"{lib_dir} is not a directory (torch's lib folder)")
        plan = plan_stubs(lib_dir, system_libraries())
    except (StubError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not plan.stubs:
        print(f"torch in {lib_dir.parent} needs no CUDA libraries (a CPU build): nothing to do")
        return 0
    for soname, symbols in sorted(plan.stubs.items()):
        print(f"stub {soname}: {sum(len(v) for v in symbols.values())} symbols")
    if args.dry_run:
        return 0
    with tempfile.TemporaryDirectory() as work:
        for soname, symbols in sorted(plan.stubs.items()):
            build_stub(lib_dir, soname, symbols, Path(work))
    marker = lib_dir / MARKER
    earlier = set(marker.read_text().split()) if marker.exists() else set()
    marker.write_text("\n".join(sorted(earlier | set(plan.stubs))) + "\n")
    print(f"wrote {len(plan.stubs)} stub libraries into {lib_dir} (listed in {MARKER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
