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


def test_stage_lines_with_and_without_the_thread_usage_fields(tmp_path: Path) -> None:
    from live_overhead import agent_stage_lines

    old = ("stage timing r1 round 1: model_at=10.5 decode=0.002 train=1.25 encode=0.003 published_at=12.0 "
           "load=0.000000 train_cpu=0.150000")
    new = ("stage timing r1 round 2: model_at=20.5 decode=0.002 train=1.5 encode=0.003 published_at=22.0 "
           "load=0.000000 train_cpu=0.120000 train_faults=7100 train_vcsw=12 train_ivcsw=345")
    log = tmp_path / "dev-000.log"
    log.write_text(f"INFO x\n{old}\nINFO y\n{new}\n")
    got = agent_stage_lines(log)
    assert got[1]["train_cpu"] == 0.15 and got[1]["train_faults"] == 0.0 and got[1]["train_ivcsw"] == 0.0
    assert (got[2]["train_faults"], got[2]["train_vcsw"], got[2]["train_ivcsw"]) == (7100, 12, 345)
    assert got[2]["train"] == 1.5 and got[2]["published_at"] == 22.0


def test_stage_breakdown_gives_the_training_threads_usage_by_round() -> None:
    from live_overhead import stage_breakdown

    records = [{"round": r, "broadcast_s": 0.01, "aggregation_s": 0.02, "published_at": 100.0 * r,
                "update_received_at": {"a": 100.0 * r + 1.0, "b": 100.0 * r + 2.0}, "closed_at": 100.0 * r + 2.5,
                "seconds": 3.0} for r in (1, 2)]

    def line(r: int, faults: int, vcsw: int, ivcsw: int) -> dict[str, float]:
        return {"model_at": 100.0 * r + 0.1, "decode": 0.01, "train": 0.3, "encode": 0.01,
                "published_at": 100.0 * r + 0.5, "load": 0.0, "train_cpu": 0.1 * r, "train_faults": faults,
                "train_vcsw": vcsw, "train_ivcsw": ivcsw}

    lines = {"a": {1: line(1, 7000, 10, 100), 2: line(2, 500, 4, 50)},
             "b": {1: line(1, 7200, 20, 300), 2: line(2, 700, 6, 70)}}
    got = stage_breakdown(records, lines)
    assert got["train_faults_by_round"] == [7100, 600]
    assert got["train_vcsw_by_round"] == [15, 5]
    assert got["train_ivcsw_by_round"] == [200, 60]
    assert got["train_cpu_by_round_s"] == pytest.approx([0.1, 0.2])


def test_printed_breakdown_shows_usage_per_round_and_preemptions_per_cpu_second(capsys) -> None:  # noqa: ANN001
    from live_overhead_report import print_thread_usage

    live = {"train_cpu_by_round_s": [0.2, 0.1], "train_faults_by_round": [7100, 600], "train_vcsw_by_round": [15, 5],
            "train_ivcsw_by_round": [20, 10]}
    control = {"train_cpu_by_round_s": [0.15, 0.15], "train_faults_by_round": [580, 400]}  # an older control: no vcsw
    print_thread_usage(live, control)
    out = capsys.readouterr().out
    assert "minor page faults per device per round: live 7100, 600; control 580, 400" in out
    assert "voluntary switches per device per round: live 15, 5; control \n" in out
    assert "involuntary switches per training CPU second: live 100, control 0" in out  # 30 / 0.3; 0 / 0.3
