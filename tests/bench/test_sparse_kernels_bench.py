"""``bench/sparse_kernels.py``: the paired, order-alternating timing behind ``time_ratio``, the sparse path it
reports, and its --json rows (field names kept, the new figures under ``extra``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT / "bench"))

from sparse_kernels import (  # noqa: E402
    FC_HEAVY_MNIST_CNN,
    SparseLocalTrainer,
    make_problem,
    paired_times,
    sparse_path,
)

from feddst_core import native  # noqa: E402
from feddst_core.training import TrainConfig  # noqa: E402


class _Clock:
    """A clock that only moves when a runner runs: each runner advances it by its own next duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pairs_alternate_order_and_ratios_are_per_pair() -> None:
    clock = _Clock()
    order: list[str] = []
    dense_durations = iter([9.0] * 3 + [2.0, 4.0, 8.0, 10.0])  # 3 warm-up calls, then 4 timed ones
    sparse_durations = iter([9.0] * 3 + [1.0, 1.0, 2.0, 6.0])

    def runner(name: str, durations):
        def run() -> None:
            order.append(name)
            clock.now += next(durations)
        return run

    dense_t, sparse_t, ratios = paired_times(runner("d", dense_durations), runner("s", sparse_durations), 4,
                                             warmup=3, clock=clock)
    assert order == ["d"] * 3 + ["s"] * 3 + ["s", "d", "d", "s", "s", "d", "d", "s"]
    assert dense_t == [2.0, 4.0, 8.0, 10.0] and sparse_t == [1.0, 1.0, 2.0, 6.0]
    assert ratios == [0.5, 0.25, 0.25, 0.6]


def test_sparse_path_names_what_the_sparse_side_runs() -> None:
    trainer = SparseLocalTrainer(FC_HEAVY_MNIST_CNN, TrainConfig())
    params, masks, _ = make_problem(FC_HEAVY_MNIST_CNN, 1.0, 4)
    assert sparse_path(trainer, params, masks) == "local_trainer"  # auto keeps every layer dense at density 1
    params, masks, _ = make_problem(FC_HEAVY_MNIST_CNN, 0.1, 4)
    assert sparse_path(trainer, params, masks) == ("direct_step" if native.available() else "autograd")
    trainer.use_direct_step = False
    assert sparse_path(trainer, params, masks) == "autograd"


@pytest.mark.skipif(not native.available(), reason=native.status())
def test_json_rows_keep_their_fields_and_add_the_new_figures() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sparse_kernels.py"), "--json", "--cases",
                          "fc_heavy_step", "--densities", "1.0,0.1", "--no-memory", "--step-repeats", "3",
                          "--threads", "1"], capture_output=True, text=True, check=True, cwd=ROOT)
    doc = json.loads(out.stdout)
    rows = doc["rows"]
    assert [r["density"] for r in rows] == [1.0, 0.1]
    for r in rows:
        assert {"case", "density", "dense_s", "sparse_s", "time_ratio", "mem_ratio", "extra"} <= set(r)
        assert r["time_ratio"] > 0 and r["extra"]["ratio_of_medians"] == pytest.approx(r["sparse_s"] / r["dense_s"])
        assert {"floor_fraction", "sparse_layers"} <= set(r["extra"])
    assert [r["extra"]["sparse_path"] for r in rows] == ["local_trainer", "direct_step"]
