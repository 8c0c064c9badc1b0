"""Sparse vs masked-dense local training on CPU: time and peak memory per density, side by side.

Cases (2 threads, densities 1.0, 0.5, 0.2, 0.1, 0.05, uniform per-layer density, random masks):

* ``fc_heavy_step``: one training step (forward + backward + SGD with momentum) of the paper's MNIST
  CNN with fc1 widened to 5120 -> 512 (``FC_HEAVY_MNIST_CNN``), batch 32. Dense = LocalTrainer's
  own step (K = 1); sparse = ``SparseLocalTrainer(kernels="auto")``'s step (its autograd-free direct
  step when every layer is on the native path), or LocalTrainer's own step when the auto policy keeps
  every layer dense (what ``SparseLocalTrainer.train`` runs then; ``extra.sparse_path`` says which).
* ``paper_round``: one local round of the paper's MNIST CNN (40 images, 10 epochs, batch 32).
  Dense = ``LocalTrainer`` (K = 1); sparse = ``SparseLocalTrainer(kernels="auto")``.

Times: dense and sparse run in pairs in this process (another job may share the CPU), the order
alternating pair by pair (sparse then dense, dense then sparse, ...); ``time_ratio`` is the median of
the per-pair sparse / dense ratios (robust to load that changes between pairs), ``dense_s`` /
``sparse_s`` the medians of each side's times, and ``extra.ratio_of_medians`` = sparse_s / dense_s
(the figure ``time_ratio`` was before 2026-12-04, printed as "(old)"). Peak memory: each (case, density, kernels) runs
in a fresh subprocess; peak = VmHWM after the work minus VmRSS before the model state existed,
with the high-water mark reset (``/proc/self/clear_refs``) once the state is built and temporaries
freed, and glibc's mmap threshold pinned so freed blocks go back to the OS (see docs/sparse_kernels.md).

    python bench/sparse_kernels.py               # table
    python bench/sparse_kernels.py --json        # {"rows": [...]}
    python bench/sparse_kernels.py --calibrate   # per-layer break-even densities for the auto policy
    python bench/sparse_kernels.py --calibrate --write-thresholds kernel_thresholds.json
                                                 # ... and this device's auto-policy table, for the agent
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feddst_core import native  # noqa: E402
from feddst_core.models import MNIST_CNN, ModelSpec, init_params  # noqa: E402
from feddst_core.sparse import FC_HEAVY_MNIST_CNN, SparseLocalTrainer  # noqa: E402
from feddst_core.sparse.direct_step import supports_direct_step  # noqa: E402
from feddst_core.sparse.kernels import CsrPattern, sparse_conv2d, sparse_linear  # noqa: E402
from feddst_core.sparse.policy import (  # noqa: E402
    CalibrationPoint,
    describe_thresholds,
    thresholds_from_calibration,
    thresholds_to_dict,
)
from feddst_core.training import ClientData, LocalTrainer, TrainConfig  # noqa: E402

DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
THREADS = 2
BATCH = 32


def uniform_masks(spec: ModelSpec, density: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random masks with round(density * numel) active weights in every masked layer."""
    masks = {}
    for name in spec.masked_names():
        shape = spec.parameter_shapes()[name]
        numel = int(torch.tensor(shape).prod())
        keep = torch.randperm(numel, generator=generator)[:max(1, round(density * numel))]
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[keep] = True
        masks[name] = flat.reshape(shape)
    return masks


def make_problem(spec: ModelSpec, density: float, n: int):
    g = torch.Generator().manual_seed(0)
    params = init_params(spec, g)
    masks = uniform_masks(spec, density, g)
    c, h, w = spec.input_shape
    data = ClientData(torch.rand(n, c, h, w, generator=g), torch.randint(0, spec.num_classes, (n,), generator=g))
    return params, masks, data


# --- one training step -------------------------------------------------------------------------


def dense_step_runner(spec: ModelSpec, params, masks, data) -> Callable[[], None]:
    """LocalTrainer's own step (its _loss and _sgd_step) for K = 1."""
    trainer = LocalTrainer(spec, TrainConfig(batch_size=BATCH))
    p = {nm: (t * masks[nm] if nm in masks else t.clone()).unsqueeze(0).requires_grad_() for nm, t in params.items()}
    m = {nm: t.unsqueeze(0) for nm, t in masks.items()}
    buffers: dict[str, torch.Tensor] = {}
    xb, yb = data.x[:BATCH].unsqueeze(0), data.y[:BATCH].unsqueeze(0)
    names = list(p)

    def step() -> None:
        loss = trainer._loss(p, xb, yb).sum()
        grads = torch.autograd.grad(loss, [p[nm] for nm in names])
        trainer._sgd_step(p, dict(zip(names, grads, strict=True)), m, buffers)
    return step


SPARSE_PATHS = ("local_trainer", "direct_step", "autograd")
"""``extra.sparse_path``: what the sparse side ran. local_trainer: the policy kept every layer dense, so
SparseLocalTrainer.train would run LocalTrainer (and the bench runs LocalTrainer's step); direct_step: the
autograd-free step (``feddst_core.sparse.direct_step``); autograd: SparseLocalTrainer's autograd step."""


def sparse_path(trainer: SparseLocalTrainer, params, masks) -> str:
    """Which of ``SPARSE_PATHS`` this trainer's steps take for these masks."""
    if all(choice == "dense" for choice in trainer.layer_choice(masks).values()):
        return "local_trainer"
    state = trainer.start(params, masks)
    direct = trainer.use_direct_step and supports_direct_step(trainer.spec, state.leaves, state.patterns,
                                                              trainer._fused_sgd(state))
    return "direct_step" if direct else "autograd"


def sparse_step_runner(spec: ModelSpec, params, masks, data, kernels: str = "auto") -> Callable[[], None]:
    """SparseLocalTrainer's step, or LocalTrainer's (``dense_step_runner``) when the policy keeps every layer
    dense: what a round would run (``sparse_path``)."""
    trainer = SparseLocalTrainer(spec, TrainConfig(batch_size=BATCH), kernels=kernels)
    if sparse_path(trainer, params, masks) == "local_trainer":
        return dense_step_runner(spec, params, masks, data)
    state = trainer.start(params, masks)
    xb, yb = data.x[:BATCH], data.y[:BATCH]
    return lambda: trainer.step(state, xb, yb) and None


# --- one local round -----------------------------------------------------------------------------

ROUND_CFG = TrainConfig(batch_size=32, local_epochs=10)


def dense_round_runner(spec, params, masks, data) -> Callable[[], None]:
    trainer = LocalTrainer(spec, ROUND_CFG)
    return lambda: trainer.train(params, masks, [data], [1]) and None


def sparse_round_runner(spec, params, masks, data, kernels: str = "auto") -> Callable[[], None]:
    trainer = SparseLocalTrainer(spec, ROUND_CFG, kernels=kernels)
    return lambda: trainer.train(params, masks, [data], [1]) and None


CASES = {
    "fc_heavy_step": (FC_HEAVY_MNIST_CNN, BATCH, dense_step_runner, sparse_step_runner),
    "paper_round": (MNIST_CNN, 40, dense_round_runner, sparse_round_runner),
}


def paired_times(dense: Callable[[], None], sparse: Callable[[], None], repeats: int, warmup: int = 3,
                 clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float], list[float]]:
    """``repeats`` pairs of one dense and one sparse run, sparse first in even pairs and dense first in odd ones
    (so neither side always runs right after the other, in a warmer cache): (dense times, sparse times,
    per-pair sparse / dense ratios), in pair order. Each runner is first called ``warmup`` times."""
    for run in (dense, sparse):
        for _ in range(warmup):
            run()
    dense_t: list[float] = []
    sparse_t: list[float] = []
    for pair in range(repeats):
        for side in ((sparse, sparse_t), (dense, dense_t)) if pair % 2 == 0 else ((dense, dense_t), (sparse, sparse_t)):
            t0 = clock()
            side[0]()
            side[1].append(clock() - t0)
    return dense_t, sparse_t, [s / d for s, d in zip(sparse_t, dense_t, strict=True)]


def interleaved_medians(runners: list[Callable[[], None]], repeats: int, warmup: int = 3) -> list[float]:
    for run in runners:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, run in enumerate(runners):
            t0 = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


# --- peak memory (fresh subprocess per measurement) --------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(case: str, density: float, kernels: str) -> int:
    """Run in a fresh process: bytes of peak RSS above the pre-model baseline for one case."""
    spec, n, dense_runner, sparse_runner = CASES[case]
    warm = torch.randn(8, 8, requires_grad=True)
    (warm @ warm).sum().backward()  # load autograd machinery before the baseline
    baseline_kib = _status_kib("VmRSS")  # interpreter, torch, autograd: before any model or data exists
    params, masks, data = make_problem(spec, density, n)
    run = dense_runner(spec, params, masks, data) if kernels == "dense" else sparse_runner(
        spec, params, masks, data)
    if case == "fc_heavy_step":  # a step holds its own state only: drop the dense global model
        del params, masks  # (a round's contract takes and returns dense models: kept for both there)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(3):
        run()
    peak_kib = _status_kib("VmHWM")
    return max(0, peak_kib - baseline_kib) * 1024


def measure_memory(case: str, density: float, kernels: str) -> int:
    threads = torch.get_num_threads()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--memory-child", case, str(density),
                          kernels],
                         capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1])


# --- per-layer calibration of the auto policy's thresholds -----------------------------------------

CALIBRATION_LAYERS = {  # name: (kind, weight shape, input shape)
    "fc 5120x512": ("linear", (512, 5120), (BATCH, 5120)),
    "fc 5120x50": ("linear", (50, 5120), (BATCH, 5120)),
    "fc 512x10": ("linear", (10, 512), (BATCH, 512)),
    "conv 10->20 k5 @22": ("conv", (20, 10, 5, 5), (BATCH, 10, 22, 22)),
    "conv 1->10 k5 @28": ("conv", (10, 1, 5, 5), (BATCH, 1, 28, 28)),
    "conv 3->6 k5 @32 (cifar)": ("conv", (6, 3, 5, 5), (BATCH, 3, 32, 32)),
    "conv 6->16 k5 @26 (cifar)": ("conv", (16, 6, 5, 5), (BATCH, 6, 26, 26)),
}


def calibrate(repeats: int, log: Callable[[str], None]) -> list[dict]:
    """Forward + backward of one layer, masked dense vs CSR, per density: the break-even table
    (each row logged as soon as it is measured: the whole table takes minutes)."""
    import torch.nn.functional as F

    rows = []
    g = torch.Generator().manual_seed(0)
    for label, (kind, w_shape, x_shape) in CALIBRATION_LAYERS.items():
        for density in (0.5, 0.3, 0.2, 0.1, 0.05):
            mask = torch.rand(w_shape, generator=g) < density
            weight = (torch.randn(w_shape, generator=g) * mask).requires_grad_()
            bias = torch.zeros(w_shape[0], requires_grad=True)
            x = torch.randn(x_shape, generator=g, requires_grad=True)
            pattern = CsrPattern.from_mask(mask)
            values = pattern.gather(weight.detach()).requires_grad_()
            dense_op = F.linear if kind == "linear" else F.conv2d
            sparse_op = sparse_linear if kind == "linear" else sparse_conv2d

            def dense_run(op=dense_op, w=weight, b=bias, x=x, m=mask) -> None:
                out = op(x, w, b)
                gx, gw, gb = torch.autograd.grad(out.sum(), [x, w, b])
                gw.mul_(m)

            def sparse_run(op=sparse_op, v=values, b=bias, x=x, p=pattern) -> None:
                out = op(x, v, b, p)
                torch.autograd.grad(out.sum(), [x, v, b])

            dense_s, sparse_s = interleaved_medians([dense_run, sparse_run], repeats)
            rows.append({"layer": label, "kind": kind, "weights": mask.numel(), "density": density,
                         "dense_s": dense_s, "sparse_s": sparse_s, "time_ratio": sparse_s / dense_s})
            log(f"{label:<26} density {density:.2f}  dense {dense_s * 1e3:7.2f} ms  "
                f"sparse {sparse_s * 1e3:7.2f} ms  ratio {sparse_s / dense_s:.2f}")
    return rows


def write_thresholds(rows: list[dict], path: Path, log: Callable[[str], None]) -> None:
    """Derive the per-device auto-policy table from calibration rows and write it as JSON (atomically)."""
    import platform

    points = [CalibrationPoint(r["kind"], r["weights"], r["density"], r["time_ratio"]) for r in rows]
    table = thresholds_from_calibration(points)
    doc = thresholds_to_dict(table) | {"measured_on": {
        "machine": platform.machine(), "processor": platform.processor() or platform.platform(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": BATCH,
        "native_kernels": native.status(), "date": time.strftime("%Y-%m-%d")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    log(describe_thresholds(table))
    log(f"wrote {path}; use it with: feddst agent run --kernel-thresholds {path}")


# --- main ------------------------------------------------------------------------------------------


def run_cases(cases: list[str], densities: list[float], repeats: dict[str, int], with_memory: bool,
              log: Callable[[str], None]) -> list[dict]:
    rows = []
    for case in cases:
        spec, n, dense_runner, sparse_runner = CASES[case]
        for density in densities:
            params, masks, data = make_problem(spec, density, n)
            sparse_trainer = SparseLocalTrainer(spec, TrainConfig(), kernels="auto")
            sparse_layers = [ly for ly, k in sparse_trainer.layer_choice(masks).items() if k == "sparse"]
            dense_t, sparse_t, ratios = paired_times(dense_runner(spec, params, masks, data),
                                                     sparse_runner(spec, params, masks, data), repeats[case])
            dense_s, sparse_s = statistics.median(dense_t), statistics.median(sparse_t)
            mem_ratio = None
            dense_mem = sparse_mem = None
            if with_memory:
                dense_mem = measure_memory(case, density, "dense")
                sparse_mem = measure_memory(case, density, "auto")
                mem_ratio = sparse_mem / dense_mem if dense_mem else None
            time_ratio = statistics.median(ratios)
            row = {"case": case, "density": density, "dense_s": dense_s, "sparse_s": sparse_s,
                   "time_ratio": time_ratio, "mem_ratio": mem_ratio,
                   "dense_peak_bytes": dense_mem, "sparse_peak_bytes": sparse_mem,
                   "floor_fraction": density / time_ratio, "sparse_layers": sparse_layers,
                   "ratio_of_medians": sparse_s / dense_s,
                   "sparse_path": sparse_path(sparse_trainer, params, masks)}
            rows.append(row)
            log(format_row(row))
    return rows


HEADER = (f"{'case':<14} {'density':>7} {'dense ms':>9} {'sparse ms':>9} {'time x':>7} {'(old)':>6} {'mem x':>6} "
          f"{'dense MiB':>9} {'sparse MiB':>10} {'floor %':>7}  sparse layers (auto), sparse path")


def format_row(r: dict) -> str:
    def mib(v: int | None) -> str:
        return f"{v / 2**20:9.1f}" if v is not None else f"{'-':>9}"
    mem = f"{r['mem_ratio']:6.2f}" if r["mem_ratio"] is not None else f"{'-':>6}"
    return (f"{r['case']:<14} {r['density']:>7.2f} {r['dense_s'] * 1e3:>9.2f} {r['sparse_s'] * 1e3:>9.2f} "
            f"{r['time_ratio']:>7.2f} {r['ratio_of_medians']:>6.2f} {mem} {mib(r['dense_peak_bytes'])} "
            f"{mib(r['sparse_peak_bytes']):>10} {100 * r['floor_fraction']:>6.0f}%  "
            f"{','.join(r['sparse_layers']) or '-'}, {r['sparse_path']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help='print one JSON object {"rows": [...]} only')
    parser.add_argument("--cases", default="fc_heavy_step,paper_round", help="comma-separated cases")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    parser.add_argument("--step-repeats", type=int, default=60, help="repeats per step measurement")
    parser.add_argument("--round-repeats", type=int, default=30, help="repeats per round measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--calibrate", action="store_true", help="per-layer break-even table instead")
    parser.add_argument("--write-thresholds", metavar="FILE", type=Path,
                        help="with --calibrate: derive the auto policy's table from this machine's measurements and "
                             "write it as JSON (pass it to `feddst agent run --kernel-thresholds FILE`)")
    parser.add_argument("--allow-torch-only", action="store_true",
                        help="with --write-thresholds: write a table even though the native kernels are not loaded "
                             "(only right for a device that will run without them)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch / native threads (default {THREADS}, the issue's setting; calibrate with the "
                             "agent's --threads to get that device's table)")
    parser.add_argument("--memory-child", nargs=3, metavar=("CASE", "DENSITY", "KERNELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        case, density, kernels = args.memory_child
        print(memory_child(case, float(density), kernels))
        return
    log = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
    if args.calibrate:
        log(f"torch {torch.__version__}, {args.threads} threads; native CPU kernels: {native.status()}")
        if args.write_thresholds and not native.available() and not args.allow_torch_only:
            parser.error(f"the native kernels are not loaded ({native.status()}), so this calibration would describe "
                         "the slower torch kernels. This script imports the source tree next to it: build the kernels "
                         "there (`pip install -e .` or `python setup.py build_ext --inplace`), or pass "
                         "--allow-torch-only for a device that runs without them")
        rows = calibrate(args.step_repeats, log)
        if args.json:
            print(json.dumps({"calibration": rows}))
        if args.write_thresholds:
            write_thresholds(rows, args.write_thresholds, log)
        return
    log(f"torch {torch.__version__}, {args.threads} threads; native CPU kernels: {native.status()}")
    log("time x: median of per-pair sparse/dense ratios (pairs in alternating order); (old): ratio of the medians; "
        "floor % = density / time x (100% = time falls exactly with density)")
    log(HEADER)
    rows = run_cases(args.cases.split(","), [float(d) for d in args.densities.split(",")],
                     {"fc_heavy_step": args.step_repeats, "paper_round": args.round_repeats},
                     not args.no_memory, log)
    if args.json:
        keys = ("case", "density", "dense_s", "sparse_s", "time_ratio", "mem_ratio")
        print(json.dumps({"rows": [{k: r[k] for k in keys} | {"extra": {k: v for k, v in r.items()
                                                                         if k not in keys}} for r in rows],
                          "native_kernels": native.status()}))


if __name__ == "__main__":
    main()
