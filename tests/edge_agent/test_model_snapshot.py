"""``--model-onnx-path``: the agent keeps the global model it receives as model.onnx, every N rounds."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from agent_harness import KEYED, RUN, agent_settings, global_model, make_task, send_round, wait_until

from edge_agent.config import AgentConfigError, load_settings
from feddst_core.wire_format import run_completed
from inference import Predictor
from inference.onnx_file import write_file_atomically
from protocol import Register, topics


def test_writes_every_nth_completed_round_from_the_broadcast(mosquitto, coordinator, start_agent, tmp_path,
                                                             caplog) -> None:
    caplog.set_level(logging.INFO, logger="feddst.agent")
    path = tmp_path / "models" / "model.onnx"
    agent = start_agent(agent_settings(mosquitto.url, model_onnx_path=str(path), model_onnx_every=2))
    coordinator.expect(Register)  # registered: subscribed, so the broadcasts below reach it
    params, masks = global_model()
    sent = {}
    for r in (1, 2, 3):  # broadcasts of rounds 1..3 carry the models after 0, 1, 2 completed rounds
        sent[r] = {n: t * r for n, t in params.items()}
        send_round(coordinator, make_task(r, selected=("dev-999",)), sent[r], masks)  # not selected: no training
    assert wait_until(lambda: agent.agent.stats["model_onnx_written"] == 1, 10)
    card = Predictor(path).card
    assert (card.model, card.run_id, card.server_round, card.dataset) == ("digits_cnn", RUN, 2, "digits")
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name, value in sent[3].items():
        expected = (value * masks[name]).numpy() if name in masks else value.numpy()
        np.testing.assert_array_equal(weights[name], expected)
    send_round(coordinator, make_task(4, selected=("dev-999",)), params, masks)  # 3 completed: not due
    sent[5] = {n: t * 5 for n, t in params.items()}
    send_round(coordinator, make_task(5, selected=("dev-999",)), sent[5], masks)
    assert wait_until(lambda: agent.agent.stats["model_onnx_written"] == 2, 10)
    assert Predictor(path).card.server_round == 4
    assert agent.agent.stats["model_onnx_failed"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temporary file left behind
    lines = [r.getMessage() for r in caplog.records if "wrote" in r.getMessage()]
    assert any(f"run {RUN} after round 4" in line and "local training samples" in line for line in lines)


def test_writes_the_final_model_when_the_run_completes(mosquitto, coordinator, start_agent, tmp_path,
                                                       caplog) -> None:
    """The model after the last round is in no broadcast: RunCompleted brings it, with the run's accuracy."""
    caplog.set_level(logging.INFO, logger="feddst.agent")
    path = tmp_path / "model.onnx"
    agent = start_agent(agent_settings(mosquitto.url, model_onnx_path=str(path), model_onnx_every=100))
    coordinator.expect(Register)
    params, masks = global_model()
    send_round(coordinator, make_task(2, selected=("dev-999",)), params, masks)  # 1 completed: not due
    final = {n: t * 3 for n, t in params.items()}
    coordinator.send(run_completed(RUN, 2, final, masks, 0.75), topics.final(RUN), max_packet=4096)  # chunked
    assert wait_until(lambda: agent.agent.stats["model_onnx_written"] == 1, 10)
    card = Predictor(path).card
    assert (card.run_id, card.server_round, card.accuracy) == (RUN, 2, 0.75)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name, value in final.items():
        expected = (value * masks[name]).numpy() if name in masks else value.numpy()
        np.testing.assert_array_equal(weights[name], expected)
    coordinator.send(run_completed(RUN, 2, params, masks, 0.5), topics.final(RUN))  # a duplicate: not rewritten
    assert wait_until(lambda: agent.agent.stats["received_runcompleted"] == 2, 10)
    assert agent.agent.stats["model_onnx_written"] == 1 and Predictor(path).card.accuracy == 0.75
    assert any(f"run {RUN} after round 2 (run completed), run accuracy 0.7500" in r.getMessage()
               for r in caplog.records)


def test_without_the_setting_the_final_model_is_not_received(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    coordinator.send(run_completed(RUN, 2, params, masks, None), topics.final(RUN))
    coordinator.send(make_task(3, selected=("dev-999",)), topics.task(RUN))  # published after it
    assert wait_until(lambda: agent.agent.stats["tasks_not_selected"] >= 1, 10)
    assert agent.agent.stats["received_runcompleted"] == 0 and agent.agent.stats["dropped_wrong_topic"] == 0


def test_without_the_setting_nothing_is_written(mosquitto, coordinator, start_agent, tmp_path) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)  # registered: subscribed, so the broadcast below reaches it
    params, masks = global_model()
    send_round(coordinator, make_task(2, selected=("dev-999",)), params, masks)
    assert wait_until(lambda: agent.agent.stats["tasks_not_selected"] >= 1, 10)
    # without the setting an unselected device does not even receive the model (no model bytes paid)
    assert agent.agent.stats["received_modelbroadcast"] == 0
    assert agent.agent.snapshots is None and agent.agent.stats["model_onnx_written"] == 0


def test_settings_from_env_and_bad_values(tmp_path) -> None:
    settings = load_settings({**KEYED, "device_id": "d1"}, environ={"FEDDST_MODEL_ONNX_PATH": str(tmp_path / "m.onnx"),
                                                           "FEDDST_MODEL_ONNX_EVERY": "5"})
    assert (settings.model_onnx_path, settings.model_onnx_every) == (str(tmp_path / "m.onnx"), 5)
    with pytest.raises(AgentConfigError, match="--model-onnx-every: must be >= 1"):
        load_settings({**KEYED, "device_id": "d1", "model_onnx_every": 0}, environ={})
    with pytest.raises(AgentConfigError, match="--model-onnx-path: .* not a directory"):
        load_settings({**KEYED, "device_id": "d1", "model_onnx_path": str(tmp_path)}, environ={})
    with pytest.raises(AgentConfigError, match="FEDDST_MODEL_ONNX_EVERY"):
        load_settings({**KEYED, "device_id": "d1"}, environ={"FEDDST_MODEL_ONNX_EVERY": "often"})


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    write_file_atomically(path, b"old")
    with pytest.raises(TypeError):
        write_file_atomically(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    write_file_atomically(path, b"new")
    assert path.read_bytes() == b"new" and oct(path.stat().st_mode & 0o777) == "0o644"
