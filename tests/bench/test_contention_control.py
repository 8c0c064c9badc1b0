"""``bench/contention_control.py``: worker processes released together, with no product around them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from contention_control import measure_contention_control  # noqa: E402

MNIST = Path(__file__).resolve().parents[3] / "shared/data/mnist"


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"needs MNIST at {MNIST}")
def test_two_workers_two_rounds() -> None:
    got = measure_contention_control(agents=2, rounds=2, data_dir=str(MNIST), kernels="auto")
    assert got["agents"] == 2 and got["rounds"] == 2
    assert len(got["round_spans_s"]) == 2
    # a round spans from the first start to the last end, so it is at least as long as a worker's mean training
    assert got["round_s"] >= got["train_s"] > 0
    assert got["round_s"] == pytest.approx(sum(got["round_spans_s"]) / 2)
    # each worker's training thread reports its usage as the agents' stage line does: its first training faults
    # pages in (later rounds reuse them: ~1 fault)
    assert len(got["train_faults_by_round"]) == len(got["train_vcsw_by_round"]) == 2
    assert got["train_faults_by_round"][0] > 100 and all(c > 0 for c in got["train_cpu_by_round_s"])
    assert all(n >= 0 for n in got["train_ivcsw_by_round"])


def test_a_worker_that_cannot_start_is_named_with_its_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-mnist-here"
    with pytest.raises(RuntimeError, match=r"worker 0 exited .*printing 'ready'") as caught:
        measure_contention_control(agents=1, rounds=1, data_dir=str(missing), kernels="auto")
    assert "no-mnist-here" in str(caught.value)  # the worker's own error, from its stderr
