"""deploy/ install helpers: wheel requirements, CUDA stub libraries, and the scripts' argument checks.

The full install runs in an emulated arm64 Debian (``make test-arm64``); here the pieces it is built
from are checked on the host: requirement selection against hand-written metadata, stub libraries
against a real library whose dependency was removed (the same situation as PyPI's CUDA torch without
its nvidia-* wheels), and every bad-argument path of the scripts (which stop before changing anything).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def load(name: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wheel_requirements = load("wheel_requirements")
torch_cuda_stubs = load("torch_cuda_stubs")

METADATA = """Metadata-Version: 2.1
Name: feddst-edge
Version: 0.1.0
Requires-Dist: numpy>=1.26
Requires-Dist: torch==2.13.0
Requires-Dist: tomli; python_version < "3.0"
Provides-Extra: cloud
Requires-Dist: fastapi>=0.110; extra == "cloud"
Requires-Dist: paho-mqtt>=2.0; extra == "cloud"
Provides-Extra: agent
Requires-Dist: paho-mqtt>=2.0; extra == "agent"
Requires-Dist: psutil>=5.9; extra == "agent"
Provides-Extra: all
Requires-Dist: feddst-edge[agent,cloud]; extra == "all"
"""


def make_wheel(path: Path, metadata: str = METADATA) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("feddst_edge-0.1.0.dist-info/METADATA", metadata)
        wheel.writestr("feddst_core/__init__.py", "")
    return path


def test_wheel_requirements_pick_the_extra_and_leave_out_torch(tmp_path: Path) -> None:
    text = wheel_requirements.wheel_metadata(make_wheel(tmp_path / "x.whl"))
    assert wheel_requirements.requirements(text, ["agent"], ["torch"]) == ["numpy>=1.26", "paho-mqtt>=2.0",
                                                                          "psutil>=5.9"]
    assert wheel_requirements.requirements(text, [], []) == ["numpy>=1.26", "torch==2.13.0"]
    # a self-referencing extra expands to the extras it names, each requirement once
    assert wheel_requirements.requirements(text, ["all"], ["Torch"]) == ["numpy>=1.26", "fastapi>=0.110",
                                                                        "paho-mqtt>=2.0", "psutil>=5.9"]


def test_wheel_requirements_cli_refuses_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"\x00not a zip")
    assert wheel_requirements.main([str(junk), "--extra", "agent"]) == 2
    assert "not a readable wheel" in capsys.readouterr().err
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as wheel:
        wheel.writestr("README", "x")
    assert wheel_requirements.main([str(empty)]) == 2
    assert "found 0 *.dist-info/METADATA" in capsys.readouterr().err
    bad = make_wheel(tmp_path / "bad.whl", METADATA + "Requires-Dist: ???\n")
    assert wheel_requirements.main([str(bad)]) == 2
    assert "bad Requires-Dist '???'" in capsys.readouterr().err


needs_toolchain = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("readelf") is None,
                                     reason="needs gcc and readelf (apt-get install gcc binutils)")


def build_lib(out: Path, source: str, *flags: str) -> Path:
    c_file = out.with_suffix(".c")
    c_file.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(c_file), *flags], check=True)
    return out


@needs_toolchain
def test_stubs_replace_a_missing_versioned_library(tmp_path: Path) -> None:
    """A library linked against a versioned 'libgpu.so.13' that is then removed: it no longer loads;
    after torch_cuda_stubs.py it loads, the stubbed calls say "no device" (100) or return the message."""
    lib_dir, build = tmp_path / "torch" / "lib", tmp_path / "build"
    lib_dir.mkdir(parents=True)
    build.mkdir()
    (build / "gpu.map").write_text("libgpu.so.13 { global: gpuGetCount; gpuGetErrorString; };\n")
    build_lib(build / "libgpu.so.13", "int gpuGetCount(int *n) { *n = 1; return 0; }\n"
              "const char *gpuGetErrorString(int e) { return \"real\"; }\n",
              "-Wl,-soname,libgpu.so.13", f"-Wl,--version-script={build / 'gpu.map'}")
    build_lib(lib_dir / "libuser.so",
              "int gpuGetCount(int *n); const char *gpuGetErrorString(int e);\n"
              "int user_count(void) { int n = -1; return gpuGetCount(&n); }\n"
              "const char *user_error(void) { return gpuGetErrorString(100); }\n"
              "int user_cpu(int x) { return 2 * x; }\n",
              f"-L{build}", "-l:libgpu.so.13", "-Wl,-rpath,$ORIGIN")
    with pytest.raises(OSError, match="libgpu.so.13"):
        ctypes.CDLL(str(lib_dir / "libuser.so"))

    assert torch_cuda_stubs.main(["--torch-lib", str(lib_dir)]) == 0
    assert (lib_dir / torch_cuda_stubs.MARKER).read_text().split() == ["libgpu.so.13"]
    verneed = subprocess.run(["readelf", "-W", "-V", str(lib_dir / "libgpu.so.13")], capture_output=True,
                             text=True, check=True).stdout
    assert "libgpu.so.13" in verneed  # the version node the user library asks for exists
    # load in a fresh process: this one may not load the same path twice cleanly after a failure
    probe = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.user_error.restype = ctypes.c_char_p;"
             "print(lib.user_cpu(21), lib.user_count(), lib.user_error().decode())")
    out = subprocess.run([sys.executable, "-c", probe, str(lib_dir / "libuser.so")], capture_output=True,
                         text=True, check=True).stdout.strip()
    cpu, count, message = out.split(" ", 2)
    assert (cpu, count) == ("42", "100") and message.startswith("no CUDA")
    # idempotent: a second run rebuilds the same stub, it does not take it for a real library
    assert torch_cuda_stubs.main(["--torch-lib", str(lib_dir)]) == 0
    assert (lib_dir / torch_cuda_stubs.MARKER).read_text().split() == ["libgpu.so.13"]


@needs_toolchain
def test_stubs_do_nothing_for_a_complete_library_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_lib(tmp_path / "libplain.so", "int plain(void) { return 1; }\n")
    assert torch_cuda_stubs.main(["--torch-lib", str(tmp_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (tmp_path / torch_cuda_stubs.MARKER).exists()


def test_stubs_refuse_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("gcc") is None or shutil.which("readelf") is None:
        assert torch_cuda_stubs.main(["--torch-lib", str(tmp_path / "nope")]) == 2
        assert "apt-get install" in capsys.readouterr().err
        return
    assert torch_cuda_stubs.main(["--torch-lib", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the install scripts check for root first")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY / name), *args], capture_output=True, text=True, timeout=60)


@as_root
@pytest.mark.parametrize(("args", "message"), [
    ((), "--device-id is required"),
    (("--device-id", "a/b", "--broker", "mqtt://h:1"), "use 1-64 of"),
    (("--device-id", "d", "--broker", "http://h"), "must start with mqtt://"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--torch", "cuda"), "--torch 'cuda': use auto, cpu-index"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--source", "/nonexistent/x"), "no such file or directory"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--source", "/etc/hostname"), "expected a .whl, a .tar.gz"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--source", "/tmp"), "no pyproject.toml of feddst-edge"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--torch-wheel", "/etc/hostname"), "is not a .whl file"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--password-file", "/nonexistent"), "cannot read it"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--coordinator-public-key", "abc123"),
     "--coordinator-public-key 'abc123': neither 64 hex characters nor a readable file"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--coordinator-public-key", "/etc/hostname"),
     "the file does not hold a key of 64 hex characters"),
    (("--device-id", "d", "--broker", "mqtt://h:1", "--coordinator-public-key", "ab" * 31 + "zz"),
     "neither 64 hex characters nor a readable file"),
    (("--bundle", "/etc/hostname", "--coordinator-public-key", "ab" * 32),
     "--bundle already holds the coordinator public key: drop --coordinator-public-key"),
    (("--device-id", "d", "--coordinator-public-key"), "--coordinator-public-key needs a value"),
    (("--device-id",), "--device-id needs a value"),
    (("--bogus",), "unknown option --bogus"),
])
def test_install_agent_refuses_bad_arguments(args: tuple[str, ...], message: str) -> None:
    result = run_script("install_agent.sh", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@as_root
@pytest.mark.parametrize(("args", "message"), [
    ((), "--broker is required"),
    (("--broker", "mqtt://h:1/x"), "must look like mqtt://HOST:PORT"),
    (("--broker", "mqtt://h:1", "--api-port", "99999"), "is not a port number"),
    (("--broker", "mqtt://h:1", "--api-host", "a b"), "is not a host name"),
    (("--broker", "mqtt://h:1", "--device-keys", "/etc/hostname"), "not a JSON object {device id: hex key}"),
    (("--broker", "mqtt://h:1", "--torch", "x"), "use auto, cpu-index, pypi-cpu or pypi"),
])
def test_install_coordinator_refuses_bad_arguments(args: tuple[str, ...], message: str) -> None:
    result = run_script("install_coordinator.sh", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_scripts_are_executable() -> None:
    # the install scripts themselves are run: in full in test_install_agent_sandbox.py, up to their
    # argument checks above, and in the emulated arm64 root (make test-arm64)
    for name in ("install_agent.sh", "install_coordinator.sh", "torch_cuda_stubs.py", "wheel_requirements.py"):
        assert (DEPLOY / name).stat().st_mode & 0o111, name
    subprocess.run(["bash", "-n", str(REPO / "tests" / "arm64" / "emulated_root.sh")], check=True)
