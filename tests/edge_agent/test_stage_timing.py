"""The agent's per-round ``stage timing`` line (read by ``bench/live_overhead.py``): one per trained round,
its train time equal to the update's own ``compute_s``, its timestamps ordered within what the test saw; and
``--preload-training`` imports the training modules at start-up (logged), before any task."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest
from agent_harness import RUN, agent_settings, global_model, is_update_for, make_task, send_round, wait_until

from protocol import Register, Update, topics

LINE = re.compile(r"stage timing (\S+) round (\d+): model_at=(\S+) decode=(\S+) train=(\S+) encode=(\S+) "
                  r"published_at=(\S+) load=(\S+) train_cpu=(\S+) train_faults=(\d+) train_vcsw=(\d+) "
                  r"train_ivcsw=(\d+)$")


def bench_stage_line() -> re.Pattern:
    """``bench/live_overhead.py``'s parser of this line (the bench is a script, not a package)."""
    bench = Path(__file__).parents[2] / "bench" / "live_overhead.py"
    spec = importlib.util.spec_from_file_location("live_overhead", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STAGE_LINE


def _stage_lines(caplog) -> list[re.Match]:  # type: ignore[no-untyped-def]
    return [m for r in caplog.records if (m := LINE.match(r.getMessage()))]


def test_one_stage_timing_line_per_trained_round(mosquitto, coordinator, start_agent, caplog) -> None:
    caplog.set_level("INFO", logger="feddst.agent")
    start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    task = make_task(1)
    sent_at = time.time()
    send_round(coordinator, task, params, masks)
    got = coordinator.expect(Update, is_update_for(1))
    received_at = time.time()
    assert wait_until(lambda: len(_stage_lines(caplog)) == 1)
    (line,) = _stage_lines(caplog)
    run, server_round = line.group(1), int(line.group(2))
    model_at, decode, train, encode, published_at, load, train_cpu = (float(line.group(i)) for i in range(3, 10))
    assert (run, server_round) == (RUN, 1)
    assert train == pytest.approx(got.message.compute_s, abs=1e-5)  # the update's own field
    assert sent_at <= model_at < published_at <= received_at  # the model came after it was sent, etc.
    assert published_at - model_at >= train + load  # loading and training happened in between
    assert decode > 0 and encode > 0 and load >= 0
    assert 0 < train_cpu <= published_at - model_at  # a thread's CPU time within the wall time it ran in
    faults, vcsw, ivcsw = (int(line.group(i)) for i in range(10, 13))
    assert faults > 0 and vcsw >= 0 and ivcsw >= 0  # training allocates: its thread faults pages in

    parsed = bench_stage_line().search(line.group(0))  # the bench reads the same line to the same values
    assert parsed is not None and float(parsed["load"]) == load and float(parsed["encode"]) == encode
    assert float(parsed["train_cpu"]) == train_cpu
    assert (int(parsed["train_faults"]), int(parsed["train_vcsw"]), int(parsed["train_ivcsw"])) == (faults, vcsw, ivcsw)

    coordinator.send(task, topics.task(RUN))  # a repeated Task: the update is re-sent, not re-timed
    coordinator.expect(Update, is_update_for(1))
    time.sleep(0.3)
    assert len(_stage_lines(caplog)) == 1


def test_preload_training_loads_before_any_task(mosquitto, coordinator, start_agent, caplog) -> None:
    caplog.set_level("INFO", logger="feddst.agent")
    start_agent(agent_settings(mosquitto.url, preload_training=True))
    coordinator.expect(Register)
    assert wait_until(lambda: any("training modules loaded ahead of the first round" in r.getMessage()
                                  for r in caplog.records))
    assert not _stage_lines(caplog)  # no task was sent: the load came from start-up alone
