"""The agent install proven on 64-bit ARM: an emulated Debian arm64 root (qemu-user), opt-in.

``make test-arm64`` (= ``FEDDST_TEST_ARM64=1 python -m pytest -q -s tests/arm64``; run as root). The
root is built once by ``tests/arm64/emulated_root.sh`` and cached in ``/var/cache/feddst-arm64``
(``FEDDST_ARM64_ROOT``); each run copies this tree into it and then, in order:

1. ``deploy/install_agent.sh --no-start`` runs to the end inside the root: torch 2.13.0 CPU-only
   (no ``nvidia-*`` package installed), the package with its ``[agent]`` extra, the native kernels
   built there for aarch64 and loaded, the unit and settings in place, ``systemd-analyze verify`` clean;
2. ``feddst agent run`` from the root joins a mosquitto and a ``feddst cloud serve`` running on the host
   and trains one round of digits with the native kernels; the coordinator's REST API shows its update
   accepted;
3. ``feddst predict`` in a second venv with only the ``[infer]`` packages (no torch) agrees with torch (on the
   host) within 1e-5 on 64 digits images; that venv's size is recorded.

Every step's wall time under emulation goes to ``<cache>/timings.json`` (recorded in docs/results.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "arm64" / "emulated_root.sh"
ROOT = Path(os.environ.get("FEDDST_ARM64_ROOT", "/var/cache/feddst-arm64/root"))
TIMINGS = ROOT.parent / "timings.json"
DEVICE_ID = "arm64-000"
VENV = "/opt/feddst/venv"

pytestmark = [
    pytest.mark.skipif(os.environ.get("FEDDST_TEST_ARM64") != "1",
                       reason="the emulated arm64 proof is opt-in: make test-arm64 (FEDDST_TEST_ARM64=1)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mount, debootstrap)"),
    pytest.mark.timeout(5400),
]

timings: dict[str, float | str] = {}


def root_cmd(*args: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run a command inside the arm64 root; output captured (stderr folded into stdout)."""
    result = subprocess.run(["bash", str(SCRIPT), "run", *args], capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}) in the arm64 root:\n{output[-4000:]}")
    return subprocess.CompletedProcess(result.args, result.returncode, output, "")


def timed(name: str, fn: Any, *args: Any) -> Any:  # noqa: ANN401
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        timings[name] = round(time.perf_counter() - t0, 1)
        TIMINGS.write_text(json.dumps(timings, indent=1) + "\n")
        print(f"[arm64] {name}: {timings[name]} s", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def arm64_root() -> Iterator[Path]:
    def ensure() -> None:
        subprocess.run(["bash", str(SCRIPT), "ensure"], check=True, timeout=3600)

    timed("prepare root (cached after the first run)", ensure)
    saved = ROOT.parent / "debootstrap.seconds"
    if saved.exists():
        timings["debootstrap (first run only)"] = float(saved.read_text())
    subprocess.run(["bash", str(SCRIPT), "sync-source", str(REPO)], check=True)
    try:
        yield ROOT
    finally:
        subprocess.run(["bash", str(SCRIPT), "umount"], check=False)


@pytest.fixture(scope="module")
def installed(arm64_root: Path) -> str:
    """install_agent.sh --no-start inside the root (the test of step 1 and the base of the others)."""
    result = timed("install_agent.sh --no-start", root_cmd, "/src/feddst-edge/deploy/install_agent.sh",
                   "--device-id", DEVICE_ID, "--broker", "mqtt://127.0.0.1:1883", "--partition", "0/8", "--no-start")
    return result.stdout


def test_install_agent_runs_to_the_end(installed: str) -> None:
    assert "==> systemd unit feddst-agent.service" in installed, installed[-3000:]
    assert "installed; start with: systemctl start feddst-agent.service" in installed
    assert "native kernels: loaded" in installed, installed[-3000:]
    arch = root_cmd("uname", "-m").stdout.strip()
    assert arch == "aarch64"
    probe = root_cmd(f"{VENV}/bin/python", "-c", (
        "import importlib.metadata as md, platform, torch, feddst_core.native as n;"
        "print('PROBE', platform.machine(), torch.__version__, torch.cuda.is_available(), n.available(),"
        "sorted(d.metadata['Name'] for d in md.distributions() if d.metadata['Name'].lower().startswith('nvidia')))"))
    line = next(line for line in probe.stdout.splitlines() if line.startswith("PROBE "))  # stderr is mixed in
    machine, version, cuda, native, nvidia = line.split(" ", 5)[1:]
    assert (machine, version.split("+")[0], cuda, native, nvidia) == ("aarch64", "2.13.0", "False", "True", "[]")
    so = root_cmd("sh", "-c", f"ls {VENV}/lib/python3*/site-packages/feddst_core/native/_feddst_kernels*.so").stdout
    assert "aarch64" in so
    for path in ("/etc/feddst/agent.toml", "/etc/systemd/system/feddst-agent.service",
                 "/etc/systemd/system/multi-user.target.wants/feddst-agent.service", f"{VENV}/bin/feddst"):
        assert os.path.lexists(ROOT / path.lstrip("/")), path  # lexists: the wants link is absolute inside the root
    assert 'device_id = "arm64-000"' in (ROOT / "etc/feddst/agent.toml").read_text()
    verify = root_cmd("systemd-analyze", "verify", "/etc/systemd/system/feddst-agent.service", check=False)
    problems = [line for line in verify.stdout.splitlines() if line.strip() and "qemu" not in line.lower()]
    assert verify.returncode == 0 and not problems, verify.stdout
    size = root_cmd("du", "-sm", VENV).stdout.split()[0]
    timings["venv size MB"] = float(size)
    TIMINGS.write_text(json.dumps(timings, indent=1) + "\n")


def http_json(method: str, url: str, token: str, body: dict | None = None) -> Any:  # noqa: ANN401
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:  # noqa: ANN401
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_agent_in_root_trains_a_round_for_the_host_coordinator(installed: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from brokers import MosquittoBroker, free_port, wait_for_port

    broker = MosquittoBroker(tmp_path / "broker", extra_config=["user root"]).start()
    api_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    token = subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "token", "create", "--role", "operator",
                            "--name", "arm64-test", "--state-dir", str(tmp_path / "state")], capture_output=True,
                           text=True, check=True, env=env, cwd=REPO).stdout.strip().splitlines()[-1]
    public_key = subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "keys", "public", "--state-dir",
                                 str(tmp_path / "state")], capture_output=True, text=True, check=True, env=env,
                                cwd=REPO).stdout.strip().splitlines()[-1]
    assert len(public_key) == 64, public_key
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--broker", broker.url, "--username", "coordinator",
         "--state-dir", str(tmp_path / "state"), "--api-port", str(api_port), "--heartbeat-s", "10"],
        stdout=(tmp_path / "coordinator.log").open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    agent = None
    try:
        wait_for_port(api_port, 60)
        api = f"http://127.0.0.1:{api_port}"
        t0 = time.perf_counter()
        agent_log = (tmp_path / "agent.log").open("w")
        agent = subprocess.Popen(
            ["bash", str(SCRIPT), "run", f"{VENV}/bin/feddst", "agent", "run", "--broker", broker.url,
             "--device-id", DEVICE_ID, "--dataset", "digits", "--partition", "0/8", "--threads", "1",
             "--heartbeat-s", "10", "--log-level", "info", "--coordinator-public-key", public_key],
            stdout=agent_log, stderr=subprocess.STDOUT)
        wait_for(lambda: any(d["id"] == DEVICE_ID and d["status"] == "online"
                             for d in http_json("GET", f"{api}/api/devices", token)), 900, "the arm64 agent online")
        timings["agent start to online (emulated)"] = round(time.perf_counter() - t0, 1)
        run = http_json("POST", f"{api}/api/runs", token, {"model": "digits_cnn", "rounds": 1, "clients_per_round": 1,
                                                    "min_devices": 1, "quorum": 1, "round_timeout_s": 3000,
                                                    "local_epochs": 1, "seed": 0})
        t1 = time.perf_counter()
        http_json("POST", f"{api}/api/runs/{run['id']}/start", token)
        final = wait_for(lambda: (r := http_json("GET", f"{api}/api/runs/{run['id']}", token))["status"] not in
                         ("created", "running") and r, 3300, "the run to finish")
        timings["one digits round, 1 local epoch (emulated)"] = round(time.perf_counter() - t1, 1)
        TIMINGS.write_text(json.dumps(timings, indent=1) + "\n")
        log = (tmp_path / "agent.log").read_text()
        assert final["status"] == "completed", (final, log[-3000:])
        rounds = final["rounds"]
        assert len(rounds) == 1 and rounds[0]["accepted"] == [DEVICE_ID], rounds
        assert "native CPU kernels loaded" in log, log[-3000:]
        capabilities = {d["id"]: d for d in http_json("GET", f"{api}/api/devices", token)}[DEVICE_ID]["capabilities"]
        assert capabilities["arch"] == "aarch64", capabilities
        assert capabilities["library_versions"]["native-kernels"].startswith("abi-"), capabilities
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
        coordinator.terminate()
        coordinator.wait(30)
        broker.stop()


INFER_VENV = "/opt/feddst/infer-venv"


def digits_model_and_inputs() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A seeded sparse digits_cnn as ONNX, 64 digits test images (model-ready) and torch's probabilities."""
    import torch

    from datasources.loaders import load_digits_builtin
    from feddst_core.models import forward_single, get_model_spec
    from feddst_core.onnx_export import export_model
    from feddst_core.strategies import FedStrategy, StrategyConfig

    spec = get_model_spec("digits_cnn")
    state = FedStrategy(spec, StrategyConfig(sparsity=0.8)).initialize(3)
    x = load_digits_builtin().x_test[:64].astype(np.float32)
    with torch.no_grad():
        logits = forward_single(spec, state.params, torch.from_numpy(x))
    return export_model(spec, state.params, state.masks, dataset="digits"), x, torch.softmax(logits, 1).numpy()


def test_predict_with_only_the_infer_extra(installed: str) -> None:
    """A second venv with the [infer] packages only (no torch): feddst predict on aarch64 agrees with torch."""
    model, x, expected = digits_model_and_inputs()
    work = ROOT / "tmp" / "feddst-infer"
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.onnx").write_bytes(model)
    np.savez(work / "digits.npz", x=x)
    infer_packages = [line.strip().strip('",') for line in
                      (REPO / "pyproject.toml").read_text().split("\ninfer = [", 1)[1].split("]", 1)[0].splitlines()
                      if line.strip().startswith('"')]

    def make_venv() -> None:
        root_cmd("rm", "-rf", INFER_VENV)
        root_cmd("python3", "-m", "venv", INFER_VENV)
        root_cmd(f"{INFER_VENV}/bin/pip", "install", "-q", "--no-compile", "--no-deps", "/src/feddst-edge")
        root_cmd(f"{INFER_VENV}/bin/pip", "install", "-q", "--no-compile", *infer_packages, "typer")

    timed("[infer]-only venv (pip install, no torch)", make_venv)
    probe = root_cmd(f"{INFER_VENV}/bin/python", "-c", (
        "import importlib.util as u, importlib.metadata as md;"
        "print('PROBE', u.find_spec('torch') is None, md.version('onnxruntime'))")).stdout
    no_torch, ort_version = next(line for line in probe.splitlines() if line.startswith("PROBE ")).split()[1:]
    assert no_torch == "True", probe
    timings["[infer] onnxruntime version"] = ort_version
    sizes = root_cmd("sh", "-c", f"du -sm {INFER_VENV} {INFER_VENV}/lib/python3*/site-packages/* | sort -rn").stdout
    timings["[infer] venv size MB"] = float(sizes.split()[0])
    TIMINGS.write_text(json.dumps(timings, indent=1) + "\n")
    print(f"[arm64] [infer] venv sizes (MB):\n{sizes}", file=sys.stderr, flush=True)
    # QEMU_CPU=cortex-a72: qemu emulates the Raspberry Pi 4's CPU (no dot product, atomics, SVE...), so an
    # onnxruntime wheel using instructions the Pi 4 lacks dies here with SIGILL, as onnxruntime 1.21.0 does.
    result = timed("feddst predict (64 digits, emulated Cortex-A72)", root_cmd, "/usr/bin/env", "QEMU_CPU=cortex-a72",
                   f"{INFER_VENV}/bin/feddst", "predict",
                   "--model", "/tmp/feddst-infer/model.onnx", "--json", "--threads", "1",
                   "/tmp/feddst-infer/digits.npz")
    payload = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    predictions = payload["predictions"]
    assert len(predictions) == len(x)
    probabilities = np.array([p["probabilities"] for p in predictions])
    assert np.abs(probabilities - expected).max() <= 1e-5
    labels = [int(p["label"]) for p in predictions]
    assert labels == expected.argmax(1).tolist()
