"""onnxruntime vs torch running the same exported global model on the same inputs, as a device would.

    python bench/inference.py [--model mnist_cnn] [--json]

The model is the strategy's seeded sparse initial model (ERK, S = 0.8; mnist_cnn by default, the
realistic device model), exported by ``feddst_core.onnx_export`` for onnxruntime and saved as a torch
state dict for torch. Each runtime runs in its own fresh subprocess (so RSS and cold start are its own):
the onnxruntime worker imports only onnxruntime and numpy; the torch worker imports only torch and runs
the layers with plain ``torch.nn.functional`` ops (what a torch-based device app would do), not FedDST.

Per runtime and thread count (1, and all cores): single-image latency p50/p99 (ms), batch-64 throughput
(images/s), the process's peak RSS (MB, ``VmHWM``), and cold start: process start to the first
prediction (s; median of ``--cold-repeats`` separate processes). The two runtimes' logits on the same
batch are compared (max abs difference) as a sanity check. Printed ratios onnxruntime / torch against the
targets: single-image p50 <= 0.7x, peak RSS <= 0.5x, cold start <= 0.5x.

``--json`` prints one object ``{"rows": [{"runtime", "threads", "p50_ms", "p99_ms", "batch_per_s",
"peak_rss_mb", "cold_start_s"}], "ratios": [...], "max_abs_logit_diff": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"p50_ms": 0.7, "peak_rss_mb": 0.5, "cold_start_s": 0.5}
BATCH = 64


# --- workers (run in fresh subprocesses; import only their runtime) ---------------------------------------

def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM of its address space; ``ru_maxrss`` would also count the parent's
    peak, which Linux carries across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ort_worker(workdir: Path, threads: int):  # -> (predict(x) -> logits)
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(workdir / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def run(x):
        return session.run(["logits"], {"input": x})[0]

    return run, lambda: np.load(workdir / "inputs.npz")


def _torch_worker(workdir: Path, threads: int):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    weights = torch.load(workdir / "weights.pt")
    layers = json.loads((workdir / "layers.json").read_text())

    @torch.inference_mode()
    def forward(x):
        act = torch.from_numpy(x)
        for kind, arg in layers:
            if kind == "conv":
                act = F.conv2d(act, weights[f"{arg}.weight"], weights[f"{arg}.bias"])
            elif kind == "pool":
                act = F.max_pool2d(act, arg[0], arg[1])
            elif kind == "relu":
                act = F.relu(act)
            elif kind == "flatten":
                act = act.flatten(1)
            else:
                act = F.linear(act, weights[f"{arg}.weight"], weights[f"{arg}.bias"])
        return act.numpy()

    def inputs():
        data = torch.load(workdir / "inputs.pt")
        return {k: v.numpy() for k, v in data.items()}

    return forward, inputs


def worker(runtime: str, workdir: Path, threads: int, cold_only: bool, spawned_at: float) -> None:
    run, load_inputs = (_ort_worker if runtime == "onnxruntime" else _torch_worker)(workdir, threads)
    inputs = load_inputs()
    single, batch = inputs["single"], inputs["batch"]
    run(single)
    cold = time.time() - spawned_at
    if cold_only:
        print(json.dumps({"cold_start_s": cold}))
        return
    for _ in range(20):
        run(single)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        run(single)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    run(batch)
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        logits = run(batch)
    batch_per_s = reps * len(batch) / (time.perf_counter() - t0)
    print(json.dumps({"runtime": runtime, "threads": threads, "p50_ms": times[len(times) // 2],
                      "p99_ms": times[int(len(times) * 0.99) - 1], "batch_per_s": batch_per_s,
                      "peak_rss_mb": peak_rss_mb(),
                      "cold_start_s": cold, "logits": logits[:4].tolist()}))


# --- parent ---------------------------------------------------------------------------------------------

def prepare(workdir: Path, model_name: str) -> None:
    """The model as .onnx (onnxruntime) and as a state dict + layer list (torch); the same inputs for both."""
    import torch

    from feddst_core.models import Conv, Flatten, Linear, MaxPool, ReLU, get_model_spec
    from feddst_core.onnx_export import export_model, pruned_weights
    from feddst_core.strategies import FedStrategy, StrategyConfig

    spec = get_model_spec(model_name)
    state = FedStrategy(spec, StrategyConfig(sparsity=0.8)).initialize(0)
    (workdir / "model.onnx").write_bytes(export_model(spec, state.params, state.masks))
    weights = {n: torch.from_numpy(v) for n, v in pruned_weights(spec, state.params, state.masks).items()}
    torch.save(weights, workdir / "weights.pt")
    layers = []
    for layer in spec.layers:
        if isinstance(layer, Conv):
            layers.append(("conv", layer.name))
        elif isinstance(layer, MaxPool):
            layers.append(("pool", [layer.kernel, layer.stride]))
        elif isinstance(layer, ReLU):
            layers.append(("relu", None))
        elif isinstance(layer, Flatten):
            layers.append(("flatten", None))
        elif isinstance(layer, Linear):
            layers.append(("linear", layer.name))
    (workdir / "layers.json").write_text(json.dumps(layers))
    g = torch.Generator().manual_seed(0)
    inputs = {"single": torch.randn((1, *spec.input_shape), generator=g),
              "batch": torch.randn((BATCH, *spec.input_shape), generator=g)}
    torch.save(inputs, workdir / "inputs.pt")
    import numpy as np

    np.savez(workdir / "inputs.npz", **{k: v.numpy() for k, v in inputs.items()})


def spawn(runtime: str, workdir: Path, threads: int, cold_only: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.time()
    out = subprocess.run([sys.executable, __file__, "--worker", runtime, "--workdir", str(workdir),
                          "--threads", str(threads), "--spawned-at", repr(started)]
                         + (["--cold-only"] if cold_only else []),
                         env=env, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(model_name: str, cold_repeats: int) -> dict:
    rows, logits = [], {}
    thread_counts = sorted({1, os.cpu_count() or 1})
    with tempfile.TemporaryDirectory(prefix="feddst-bench-inference-") as tmp:
        workdir = Path(tmp)
        prepare(workdir, model_name)
        for threads in thread_counts:
            for runtime in ("onnxruntime", "torch"):
                row = spawn(runtime, workdir, threads, cold_only=False)
                colds = [row["cold_start_s"]] + [spawn(runtime, workdir, threads, True)["cold_start_s"]
                                                 for _ in range(cold_repeats - 1)]
                row["cold_start_s"] = statistics.median(colds)
                logits[(runtime, threads)] = row.pop("logits")
                rows.append(row)
    import numpy as np

    diff = max(float(np.abs(np.asarray(logits[("onnxruntime", t)]) - np.asarray(logits[("torch", t)])).max())
               for t in thread_counts)
    ratios = []
    for threads in thread_counts:
        ort_row, torch_row = (next(r for r in rows if r["runtime"] == rt and r["threads"] == threads)
                              for rt in ("onnxruntime", "torch"))
        for key, target in TARGETS.items():
            ratio = ort_row[key] / torch_row[key]
            ratios.append({"threads": threads, "metric": key, "ratio": ratio, "target": target,
                           "met": ratio <= target})
    return {"model": model_name, "rows": rows, "ratios": ratios, "max_abs_logit_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--cold-repeats", type=int, default=3, help="processes per cold-start median")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", choices=("onnxruntime", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cold-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir, args.threads, args.cold_only, args.spawned_at)
        return
    sys.path.insert(0, str(ROOT))
    result = measure(args.model, max(1, args.cold_repeats))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']}: onnxruntime vs torch (max |logit diff| {result['max_abs_logit_diff']:.2e})")
    print(f"{'runtime':<12} {'threads':>7} {'p50 ms':>8} {'p99 ms':>8} {'batch64 img/s':>14} {'peak RSS MB':>12} "
          f"{'cold start s':>13}")
    for r in result["rows"]:
        print(f"{r['runtime']:<12} {r['threads']:>7} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['batch_per_s']:>14.0f} {r['peak_rss_mb']:>12.1f} {r['cold_start_s']:>13.3f}")
    for q in result["ratios"]:
        print(f"threads {q['threads']}: onnxruntime/torch {q['metric']} = {q['ratio']:.2f}x "
              f"(target <= {q['target']}x: {'met' if q['met'] else 'NOT met'})")


if __name__ == "__main__":
    main()
