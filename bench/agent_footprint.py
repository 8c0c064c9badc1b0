"""The agent's footprint on a device: memory idle and in a round, cold start, installed size.

One real agent process (``feddst agent run``, one torch thread, ``--kernels auto``) holding client 0
of the paper's MNIST setting (400 clients x 2 classes x 20 images; MNIST IDX files from
``--data-dir``, else synthetic images of MNIST's shape, said in the output), a local mosquitto and
an in-process coordinator running one FedDST round (S = 0.8, 10 local epochs, batch 32: the
``feddst simulate`` defaults) with that one device:

* ``cold_start_s``: from starting the process to its ``Register`` arriving at the broker;
* ``idle_rss_mb``: the agent's resident memory once registered, before any task (median of samples);
  ``idle_torch_loaded``: whether torch's shared libraries are mapped into it then (``/proc/PID/maps``;
  the agent imports torch at its first round);
* ``round_peak_rss_mb``: the process's peak resident memory (``VmHWM``) after the round, whose
  update the coordinator must have accepted;
* ``installed_mb``: what ``pip install`` adds to a fresh venv for the ``[agent]`` extra (torch 2.13.0
  CPU included, the base package needs it) and for the ``[infer]`` extra alone (its own
  requirements plus the package without dependencies: a device that only predicts carries no
  torch), the latter also with ``pip install --no-compile`` (no ``.pyc`` files) and its largest
  packages, and ``infer_without_pillow_no_compile_installed_mb``: onnxruntime and numpy only (a device that
  predicts from arrays, IDX or CSV files, not image files); "not measured" when the package has no
  ``[infer]`` extra.

A missed target is printed with its reason (``missed_because``).

Targets: idle <= 150 MB, round peak <= 300 MB, [infer] install <= 100 MB.

    python bench/agent_footprint.py                 # table (about 3-5 minutes, most in pip)
    python bench/agent_footprint.py --json          # one JSON object on stdout
    python bench/agent_footprint.py --skip-install  # memory and cold start only (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# /work/shared next to /work/main, or two levels up from a worktree in /work/wt/NAME
MNIST_DIR = next((p / "shared" / "data" / "mnist" for p in ROOT.parents if (p / "shared" / "data" / "mnist").is_dir()),
                 ROOT.parent / "shared" / "data" / "mnist")
DEVICE_ID = "dev-000"
TARGETS_MB = {"idle_rss_mb": 150.0, "round_peak_rss_mb": 300.0, "infer_installed_mb": 100.0}
MB = 1024 * 1024
MISSED_BECAUSE = {  # printed with a missed target (the measurement is printed next to it)
    "idle_rss_mb": "the idle agent's modules and data (see idle_torch_loaded: torch should not be loaded yet)",
    "round_peak_rss_mb": "torch, imported at the round (import_torch_rss_mb in a bare interpreter), plus the "
                         "pages of its libraries and the allocations its first forward/backward passes touch",
    "infer_installed_mb": "onnxruntime's and numpy's manylinux wheels as PyPI ships them (infer_largest_mb: "
                          "onnxruntime's two shared libraries, numpy's bundled OpenBLAS): those two alone are "
                          "infer_without_pillow_no_compile_installed_mb",
}
TORCH_LIBRARIES = ("libtorch_cpu", "/torch/_C")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_mnist(path: Path) -> Path:
    """An npz with MNIST's shapes (60000/10000 x 28 x 28 uint8, labels 0-9) when the IDX files are absent."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
             y_train=np.arange(60000) % 10, x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
             y_test=np.arange(10000) % 10)
    return path


def torch_loaded(pid: int) -> bool:
    """Whether torch's shared libraries are mapped into process ``pid`` (they are once torch is imported)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return any(name in maps for name in TORCH_LIBRARIES)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A line of /proc/PID/status in MiB (VmRSS: now; VmHWM: the peak so far; RssAnon / RssFile: the
    private heap vs file-backed pages such as torch's shared libraries, clean and shared between processes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


class RegisterWatch:
    """Subscribes to the device's register topic; ``arrived`` is set when its Register reaches the broker."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        from protocol import topics

        self.arrived = threading.Event()
        self.at = 0.0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="footprint-watch")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        result, _ = self.client.subscribe(topics.register(DEVICE_ID), qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"subscribe failed: {mqtt.error_string(result)}")
        self.client.loop_start()
        time.sleep(0.5)  # the SUBACK is in before the agent starts

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:  # noqa: ANN401
        if not self.arrived.is_set():
            self.at = time.perf_counter()
            self.arrived.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def measure_memory(data: tuple[str, str], workdir: Path) -> dict[str, Any]:
    """Cold start, idle RSS and round peak RSS of one agent process in one live FedDST round."""
    from brokers import MosquittoBroker

    from cloud.coordinator import Coordinator
    from cloud.run_config import RunConfig
    from cloud.settings import CloudSettings

    broker = MosquittoBroker(workdir / "mosquitto").start()
    coordinator = Coordinator(CloudSettings(broker_url=broker.url, state_dir=workdir / "state", heartbeat_s=2.0,
                                            mqtt_username=None))
    if not coordinator.start():
        raise RuntimeError(f"coordinator cannot connect to {broker.url}")
    watch = RegisterWatch(broker.port)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    dataset, data_dir = data
    t0 = time.perf_counter()
    agent = subprocess.Popen(
        [sys.executable, "-m", "feddst_cli.main", "agent", "run", "--broker", broker.url, "--device-id", DEVICE_ID,
         "--dataset", dataset, "--data-dir", data_dir, "--partition", "0/400", "--seed", "0", "--threads", "1",
         "--heartbeat-s", "2", "--log-level", "warning", "--coordinator-public-key", coordinator.public_key_hex],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        if not watch.arrived.wait(120):
            raise RuntimeError(f"the agent did not register within 120 s: {agent.poll()=}; its stderr: "
                               f"{agent.stderr.read()[-2000:] if agent.poll() is not None and agent.stderr else ''}")
        cold_start = watch.at - t0
        time.sleep(3.0)  # settle: connection up, heartbeats running, data loaded
        samples = []
        for _ in range(10):
            samples.append(rss_mb(agent.pid))
            time.sleep(0.2)
        idle = statistics.median(samples)
        idle_anon, idle_file = rss_mb(agent.pid, "RssAnon"), rss_mb(agent.pid, "RssFile")
        idle_torch = torch_loaded(agent.pid)
        startup_peak = rss_mb(agent.pid, "VmHWM")  # includes loading the whole dataset before partitioning
        Path(f"/proc/{agent.pid}/clear_refs").write_text("5")  # resets VmHWM: the peak from here is the round's
        deadline = time.monotonic() + 60
        while DEVICE_ID not in coordinator.registry.online_ids():
            if time.monotonic() > deadline:
                raise RuntimeError("the coordinator never saw the agent online")
            time.sleep(0.1)
        config = RunConfig(model="mnist_cnn", algorithm="feddst", sparsity=0.8, clients_per_round=1, rounds=1,
                           local_epochs=10, batch_size=32, lr=0.01, momentum=0.9, weight_decay=0.001,
                           readjust_ratio=0.01, readjust_every=10, seed=0, round_timeout_s=600, quorum=1,
                           min_devices=1)
        run = coordinator.create_run(config)
        t_round = time.perf_counter()
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 900)
        round_s = time.perf_counter() - t_round
        peak = rss_mb(agent.pid, "VmHWM")
        row, rounds = coordinator.get_run(run.id)
        if final.status != "completed" or not rounds or rounds[0].get("accepted") != [DEVICE_ID]:
            raise RuntimeError(f"the round did not complete with the agent's update: {final.status} {final.error}")
        return {"cold_start_s": round(cold_start, 2), "idle_rss_mb": round(idle, 1),
                "idle_rss_anon_mb": round(idle_anon, 1), "idle_rss_file_mb": round(idle_file, 1),
                "idle_torch_loaded": idle_torch, "round_torch_loaded": torch_loaded(agent.pid),
                "startup_peak_rss_mb": round(startup_peak, 1), "round_peak_rss_mb": round(peak, 1),
                "round_s": round(round_s, 2)}
    finally:
        agent.terminate()
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
        watch.close()
        coordinator.close()
        broker.stop()


def import_torch_rss_mb() -> float:
    """RSS of a bare interpreter after ``import torch`` (the floor under any torch-based agent), same machine."""
    code = ("import torch; torch.set_num_threads(1); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(int(out) / 1024, 1)


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / MB


def clean_env() -> dict[str, str]:
    """The environment for a fresh venv's pip: without PYTHONPATH (a source tree on it looks installed)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=clean_env())
    return path / "bin" / "pip"


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def build_wheel(workdir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(workdir), str(ROOT)],
                   check=True, stdout=subprocess.DEVNULL)
    return next(workdir.glob("feddst_edge-*.whl"))


def extra_requirements(wheel: Path, extra: str) -> list[str] | None:
    """The extra's own requirements (those only it selects), or None when the wheel has no such extra."""
    from packaging.requirements import Requirement

    spec_path = ROOT / "deploy" / "wheel_requirements.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("wheel_requirements", spec_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metadata = module.wheel_metadata(wheel)
    if f"Provides-Extra: {extra}" not in metadata:
        return None
    base = {Requirement(r).name for r in module.requirements(metadata, [], [])}
    return [r for r in module.requirements(metadata, [extra], []) if Requirement(r).name not in base]


def measure_install(workdir: Path) -> dict[str, Any]:
    """MB a fresh venv grows by when the [agent] extra (with torch) or the [infer] extra alone is installed."""
    wheel = build_wheel(workdir / "wheel")
    empty = dir_mb(site_packages(Path(fresh_venv(workdir / "empty")).parents[1]))
    out: dict[str, Any] = {}
    pip = fresh_venv(workdir / "agent")
    t0 = time.perf_counter()
    # torch==2.13.0: on this machine pip takes the local CPU wheel
    subprocess.run([str(pip), "install", "-q", "torch==2.13.0"], check=True, env=clean_env())
    subprocess.run([str(pip), "install", "-q", f"{wheel}[agent]"], check=True, env=clean_env())
    sp = site_packages(pip.parents[1])
    out["agent_installed_mb"] = round(dir_mb(sp) - empty, 1)
    out["agent_torch_mb"] = round(dir_mb(sp / "torch"), 1)
    out["agent_install_s"] = round(time.perf_counter() - t0, 1)
    infer = extra_requirements(wheel, "infer")
    if infer is None:
        out["infer_installed_mb"] = "not measured: the package has no [infer] extra yet"
        return out
    without_pillow = [r for r in infer if not r.lower().startswith("pillow")]
    for label, flags, requirements in (("infer", [], infer), ("infer_no_compile", ["--no-compile"], infer),
                                       ("infer_without_pillow_no_compile", ["--no-compile"], without_pillow)):
        pip = fresh_venv(workdir / label)
        t0 = time.perf_counter()
        if requirements:
            subprocess.run([str(pip), "install", "-q", *flags, *requirements], check=True, env=clean_env())
        subprocess.run([str(pip), "install", "-q", *flags, "--no-deps", str(wheel)], check=True, env=clean_env())
        sp = site_packages(pip.parents[1])
        out[f"{label}_installed_mb"] = round(dir_mb(sp) - empty, 1)
        out[f"{label}_install_s"] = round(time.perf_counter() - t0, 1)
        if label == "infer":
            out["infer_has_torch"] = (sp / "torch").exists()
            out["infer_largest_mb"] = largest_entries(sp, 5)
    return out


def largest_entries(site: Path, count: int) -> dict[str, float]:
    """The ``count`` largest top-level entries of a site-packages directory, MB each."""
    sizes = {p.name: dir_mb(p) if p.is_dir() else p.stat().st_size / MB for p in site.iterdir()}
    return {name: round(mb, 1) for name, mb in sorted(sizes.items(), key=lambda kv: -kv[1])[:count]}


def main() -> None:
    parser = argparse.ArgumentParser(description="The agent's memory, cold start and installed size.")
    parser.add_argument("--data-dir", default=str(MNIST_DIR), help="MNIST IDX directory (synthetic if absent)")
    parser.add_argument("--skip-install", action="store_true", help="skip the installed-size part (pip, minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="feddst-footprint-") as tmp:
        workdir = Path(tmp)
        if Path(args.data_dir).is_dir():
            data, data_note = ("mnist", args.data_dir), f"MNIST IDX files in {args.data_dir}"
        else:
            data = ("npz", str(synthetic_mnist(workdir / "mnist.npz")))
            data_note = "synthetic images of MNIST's shape (no IDX files found)"
        log(f"agent round: paper setting, client 0/400, {data_note}")
        result: dict[str, Any] = {"data": data_note, "threads": 1, **measure_memory(data, workdir),
                                  "import_torch_rss_mb": import_torch_rss_mb()}
        if not args.skip_install:
            log("installed sizes: fresh venvs (pip install; minutes)")
            result.update(measure_install(workdir))
    result["targets_mb"] = TARGETS_MB
    result["meets"] = {key: (result[key] <= limit if isinstance(result.get(key), float) else None)
                       for key, limit in TARGETS_MB.items()}
    result["missed_because"] = {key: MISSED_BECAUSE[key] for key, met in result["meets"].items() if met is False}
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
