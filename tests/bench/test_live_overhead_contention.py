"""``bench/live_overhead.contention_estimate``: the share of a live round that is agent processes sharing cores.

The oracle is arithmetic done here by hand on round numbers, not the function's own formula re-typed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from live_overhead import contention_estimate  # noqa: E402


def test_20_agents_on_2_cores() -> None:
    # one agent alone trains 0.1 s (critical path 0.2 s: 0.1 s outside training); 20 agents on 2 cores at no
    # cost would train 20 x 0.1 / 2 = 1.0 s each; measured 1.5 s (0.5 s sharing) with 0.4 s outside (0.3 s sharing)
    stages = {"train_s": 1.5, "critical_path_s": 1.9, "alone": {"train_s": 0.1, "critical_path_s": 0.2}}
    got = contention_estimate(stages, agents=20, cores=2, live_round_s=2.0, simulated_round_s=1.6)
    assert got["time_sliced_train_s"] == pytest.approx(1.0)
    assert got["train_contention_s"] == pytest.approx(0.5)
    assert got["outside_contention_s"] == pytest.approx(0.3)
    assert got["round_without_contention_s"] == pytest.approx(1.2)  # 2.0 - 0.5 - 0.3
    assert got["ratio_without_contention"] == pytest.approx(0.75)  # 1.2 / 1.6


def test_no_contention_is_never_negative() -> None:
    # training faster than the time-sliced bound and less outside work than alone: nothing is charged to sharing
    stages = {"train_s": 0.8, "critical_path_s": 0.85, "alone": {"train_s": 0.1, "critical_path_s": 0.2}}
    got = contention_estimate(stages, agents=20, cores=2, live_round_s=1.0, simulated_round_s=1.0)
    assert got["train_contention_s"] == 0.0 and got["outside_contention_s"] == 0.0
    assert got["ratio_without_contention"] == pytest.approx(1.0)


def test_stage_breakdown_keeps_each_rounds_span_and_mean_training() -> None:
    from live_overhead import stage_breakdown

    # two rounds, two devices; each device's stage line gives its training; the per-round means are by hand
    records = [{"round": r, "broadcast_s": 0.01, "aggregation_s": 0.02, "published_at": 100.0 * r,
                "update_received_at": {"a": 100.0 * r + 1.0, "b": 100.0 * r + 2.0}, "closed_at": 100.0 * r + 2.5,
                "seconds": seconds} for r, seconds in ((1, 3.0), (2, 1.5))]

    def line(r: int, train: float) -> dict[str, float]:
        return {"model_at": 100.0 * r + 0.1, "decode": 0.01, "train": train, "encode": 0.01,
                "published_at": 100.0 * r + 0.5, "load": 0.0}

    lines = {"a": {1: line(1, 0.4), 2: line(2, 0.2)}, "b": {1: line(1, 0.8), 2: line(2, 0.3)}}
    got = stage_breakdown(records, lines)
    assert got["round_spans_s"] == [3.0, 1.5]
    assert got["train_by_round_s"] == pytest.approx([0.6, 0.25])  # (0.4 + 0.8) / 2, (0.2 + 0.3) / 2
    assert got["train_s"] == pytest.approx(0.425)  # all four updates
