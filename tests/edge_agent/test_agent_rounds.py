"""The agent against a real mosquitto and a protocol-level fake coordinator: register, heartbeat,
train exactly like ``LocalTrainer``, ignore tasks for others, handle a repeated task once, retry
until acknowledged, drop garbage, follow an abort, decline a task past the daily upload cap."""

from __future__ import annotations

import json
import platform
import time

import paho.mqtt.client as mqtt
import pytest
import torch
from agent_harness import (
    COORDINATOR_SIGNER,
    DEVICE_KEY,
    RUN,
    SPEC,
    FakeCoordinator,
    agent_settings,
    global_model,
    is_update_for,
    make_task,
    send_round,
    wait_until,
)
from brokers import MosquittoBroker

from datasources import load_dataset
from feddst_core.partition import make_partition
from feddst_core.training import ClientData, LocalTrainer, TrainConfig, client_seed
from feddst_core.wire_format import update_to_model
from protocol import Abort, Ack, DeviceError, Register, Status, Task, Update, encode_message, topics
from protocol.ed25519 import Ed25519Signer


def _client3_share_and_config(task: Task) -> tuple[ClientData, TrainConfig]:
    """Device dev-003's data (client 3 of the 8-client digits partition) and the task's train config."""
    data = load_dataset("digits")
    share = make_partition("pathological", data.y_train, data.y_test, 8, 0, 2, 20).train[3]
    local = ClientData(torch.from_numpy(data.x_train)[torch.from_numpy(share)],
                       torch.from_numpy(data.y_train)[torch.from_numpy(share)])
    config = TrainConfig(lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay,
                         batch_size=task.batch_size, local_epochs=task.local_epochs, prox_mu=task.prox_mu)
    return local, config

def test_registers_with_capabilities_and_heartbeats(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    online = coordinator.expect(Status, lambda r: r.message.state == "online")
    assert agent.agent.link.protocol == "5"  # mosquitto speaks MQTT 5: no fallback
    assert online.topic == topics.status("dev-003")
    assert online.decoded.envelope.authenticated  # signed with the device key, verified by the coordinator
    register = coordinator.expect(Register).message
    assert register.device_id == "dev-003"
    assert register.sample_count == 40  # pathological digits: 2 classes x 20 images
    caps = register.capabilities
    assert caps.arch == platform.machine() and caps.cores >= 1 and caps.memory_mb > 0
    assert {"torch", "numpy", "python", "protocol"} <= set(caps.library_versions)
    beats = [coordinator.expect(Status, timeout=5) for _ in range(3)]  # heartbeat_s = 0.5
    assert all(b.message.state == "online" for b in beats)
    seqs = [b.decoded.envelope.seq for b in beats]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


@pytest.mark.parametrize("model_first", [True, False], ids=["model-then-task", "task-then-model"])
def test_trained_update_equals_local_trainer(mosquitto, coordinator, start_agent, model_first) -> None:
    agent = start_agent(agent_settings(mosquitto.url, max_packet=2048))
    coordinator.expect(Register)
    params, masks = global_model()
    task = make_task(readjust=True)
    send_round(coordinator, task, params, masks, model_first=model_first)
    got = coordinator.expect(Update, is_update_for(1))
    update = got.message
    assert got.topic == topics.update(RUN, "dev-003")
    assert got.decoded.envelope.authenticated and got.decoded.envelope.sender_id == "dev-003"
    assert len(got.raw) > 2048  # the update travelled in chunks and was reassembled

    # The same round trained locally: client 3's share of the 8-client partition, the same seed.
    local, config = _client3_share_and_config(task)
    expected = LocalTrainer(SPEC, config).train(params, masks, [local], [client_seed(task.seed, 1, 3)],
                                                task.alpha)[0]
    got_params, got_masks = update_to_model(update, masks)
    assert update.sample_count == expected.num_samples == 40
    assert update.train_loss == pytest.approx(expected.train_loss, abs=0, rel=0)
    assert update.mask_changes  # the readjustment happened and travelled as mask changes
    for name in SPEC.masked_names():
        assert torch.equal(got_masks[name], expected.masks[name]), name
    for name, value in expected.params.items():
        assert torch.equal(got_params[name], value), name
    coordinator.send(Ack(RUN, 1, "dev-003", True), topics.ack(RUN, "dev-003"))
    assert wait_until(lambda: agent.agent.stats["updates_acked"] == 1)


def test_ignores_tasks_for_others_and_handles_a_repeat_once(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    send_round(coordinator, make_task(1, selected=("dev-001", "dev-002")), params, masks)
    assert wait_until(lambda: agent.agent.stats["tasks_not_selected"] == 1)

    task = make_task(2, selected=("dev-001", "dev-003"))
    send_round(coordinator, task, params, masks)
    first = coordinator.expect(Update, is_update_for(2))
    coordinator.send(Ack(RUN, 2, "dev-003", True), topics.ack(RUN, "dev-003"))
    assert wait_until(lambda: agent.agent.stats["updates_acked"] == 1)
    coordinator.send(task, topics.task(RUN))  # the same task again (e.g. a QoS 1 redelivery)
    send_round(coordinator, task, params, masks)
    assert wait_until(lambda: agent.agent.stats["tasks_repeated"] == 2)
    later = [r for r in coordinator.collect(1.5) if isinstance(r.message, Update)]
    assert agent.agent.stats["trained"] == 1
    assert all(r.message.server_round == 2 and r.raw == first.raw for r in later)
    assert not any(isinstance(r.message, Update) and r.message.server_round == 1 for r in later)


def test_no_resend_while_the_publish_is_in_flight_only_when_in_doubt(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url, ack_timeout_s=0.3))
    coordinator.expect(Register)
    params, masks = global_model()
    task = make_task(1)
    send_round(coordinator, task, params, masks)
    first = coordinator.expect(Update, is_update_for(1), timeout=10)
    # No Ack for 6x ack_timeout_s on a live connection: QoS 1 delivers it; no application re-send.
    assert not [r for r in coordinator.collect(2.0) if isinstance(r.message, Update)]
    assert agent.agent.stats["update_publishes"] == 1
    coordinator.send(task, topics.task(RUN))  # a repeated Task (retried round, restarted coordinator): in doubt
    again = coordinator.expect(Update, is_update_for(1), timeout=10)
    # The same update, encoded afresh with a higher seq: the coordinator drops seqs it has seen.
    assert again.message == first.message and again.decoded.envelope.seq > first.decoded.envelope.seq
    coordinator.send(Ack(RUN, 1, "dev-003", True), topics.ack(RUN, "dev-003"))
    assert wait_until(lambda: agent.agent.stats["updates_acked"] == 1)
    time.sleep(0.2)  # let in-flight copies land
    coordinator.drain()
    assert not [r for r in coordinator.collect(1.0) if isinstance(r.message, Update)]
    assert agent.agent.stats["trained"] == 1 and agent.agent.stats["update_resends"] == 1


def test_a_negative_ack_stops_the_resending_and_is_logged(mosquitto, coordinator, start_agent, caplog) -> None:
    agent = start_agent(agent_settings(mosquitto.url, ack_timeout_s=0.3))
    coordinator.expect(Register)
    params, masks = global_model()
    send_round(coordinator, make_task(1), params, masks)
    coordinator.expect(Update, is_update_for(1), timeout=10)
    with caplog.at_level("WARNING", logger="feddst.agent"):
        coordinator.send(Ack(RUN, 1, "dev-003", False, "non_finite: conv1.weight: 3 of 40 values are NaN"),
                         topics.ack(RUN, "dev-003"))
        # the agent counts the rejection, then logs it (another thread): wait for both, not just the count
        assert wait_until(lambda: agent.agent.stats["updates_rejected"] == 1 and any(
            "non_finite: conv1.weight" in r.getMessage() and "not re-sent" in r.getMessage()
            for r in caplog.records)), (dict(agent.agent.stats), [r.getMessage() for r in caplog.records])
    assert not agent.agent.state.uploads
    time.sleep(0.2)  # let in-flight copies land
    while not coordinator.received.empty():
        coordinator.received.get_nowait()
    assert not [r for r in coordinator.collect(1.0) if isinstance(r.message, Update)]  # 3+ ack timeouts: silent


def test_gives_up_at_the_deadline(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url, ack_timeout_s=0.3))
    coordinator.expect(Register)
    params, masks = global_model()
    send_round(coordinator, make_task(1, deadline_s=1.5), params, masks)
    coordinator.expect(Update, is_update_for(1))
    assert wait_until(lambda: agent.agent.stats["updates_unacked"] == 1, timeout=10)
    assert not agent.agent.state.uploads


def test_garbage_is_dropped_and_the_agent_keeps_working(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url, max_message_bytes=256 * 1024))
    coordinator.expect(Register)
    params, masks = global_model()
    stats = agent.agent.stats
    good_task = encode_message(make_task(1), COORDINATOR_SIGNER)
    coordinator.publish_raw(topics.task(RUN), b"\x00garbage")
    coordinator.publish_raw(topics.task(RUN), b"FDSC" + bytes(40))  # a broken chunk header
    coordinator.publish_raw(topics.control(RUN), good_task[:-7])  # truncated
    flipped = bytearray(good_task)
    flipped[40] ^= 0xFF
    coordinator.publish_raw(topics.task(RUN), bytes(flipped))  # corrupted (CRC)
    coordinator.publish_raw(topics.task(RUN), encode_message(make_task(1), DEVICE_KEY))  # a device's HMAC key
    coordinator.publish_raw(topics.task(RUN), encode_message(make_task(1)))  # unsigned
    coordinator.publish_raw(topics.task(RUN), encode_message(make_task(1), Ed25519Signer(bytes(32))))  # other key
    coordinator.publish_raw(topics.control(RUN), good_task)  # a valid Task on the control topic
    coordinator.publish_raw(topics.ack(RUN, "dev-003"), bytes(300 * 1024))  # oversized
    coordinator.publish_raw(topics.inbox("dev-003"), b"")
    # (the three forged tasks are now counted apart from malformed input, as unauthenticated)
    assert wait_until(lambda: stats["dropped_malformed"] >= 5 and stats["dropped_unauthenticated"] == 3
                      and stats["dropped_oversized"] == 1 and stats["dropped_wrong_topic"] == 1), dict(stats)
    assert stats["trained"] == 0 and stats["internal_errors"] == 0
    send_round(coordinator, make_task(1), params, masks)
    coordinator.expect(Update, is_update_for(1))
    assert stats["trained"] == 1


def test_abort_stops_work_on_the_run(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    coordinator.send(make_task(1), topics.task(RUN))  # waits for its model
    assert wait_until(lambda: (RUN, 1) in agent.agent.state.waiting)
    coordinator.send(Abort(RUN, 1, "stopped by the operator"), topics.control(RUN))
    assert wait_until(lambda: not agent.agent.state.waiting)
    send_round(coordinator, make_task(2), params, masks)
    assert wait_until(lambda: agent.agent.stats["tasks_aborted_run"] == 1)
    send_round(coordinator, make_task(1, run="run-b"), params, masks)  # other runs still work
    coordinator.expect(Update, lambda r: r.message.run_id == "run-b")
    assert agent.agent.stats["trained"] == 1


def test_reconnects_and_resumes_after_broker_restart(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    before = coordinator.connections
    mosquitto.restart(down_s=1.0)  # no persistence: every session, subscription and retained message is gone
    coordinator.drain()
    coordinator.wait_connected(more_than=before)
    assert wait_until(lambda: agent.agent.stats["connects"] == 2, timeout=20)
    # Re-announced after the restart (retained, so seen whichever of the two reconnected first).
    coordinator.expect(Status, lambda r: r.message.state == "online")
    params, masks = global_model()
    send_round(coordinator, make_task(1), params, masks)
    update = coordinator.expect(Update, is_update_for(1)).message
    assert update.sample_count == 40
    assert agent.agent.stats["disconnects"] >= 1


def test_update_sent_while_the_broker_is_down_arrives_after_the_restart(mosquitto, coordinator,
                                                                         start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url, ack_timeout_s=0.5))
    coordinator.expect(Register)
    params, masks = global_model()
    send_round(coordinator, make_task(1, deadline_s=60), params, masks)
    coordinator.expect(Update, is_update_for(1))
    before = coordinator.connections
    mosquitto.restart(down_s=1.5)  # the ack never came; the agent keeps the update pending
    coordinator.wait_connected(more_than=before)
    # The broker kept nothing (persistence false), so the agent's immediate re-send on reconnecting (and its
    # Register) is lost when it beats the coordinator's re-subscription. Then the coordinator recovers as the real
    # one does at the round's deadline: it re-sends the Task, and the agent answers with the kept update (never
    # training again: trained stays 1 below).
    try:
        again = coordinator.expect(Update, is_update_for(1), timeout=5)
    except TimeoutError:
        send_round(coordinator, make_task(1, deadline_s=60), params, masks)
        again = coordinator.expect(Update, is_update_for(1), timeout=20)
    coordinator.send(Ack(RUN, 1, "dev-003", True), topics.ack(RUN, "dev-003"))
    assert wait_until(lambda: agent.agent.stats["updates_acked"] == 1)
    assert again.message.sample_count == 40 and agent.agent.stats["trained"] == 1


def test_unknown_model_is_reported_not_fatal(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    bad = make_task(1)
    bad = Task(**{**bad.__dict__, "model_name": "mnist_cnn"})  # 28x28 model, 8x8 data
    send_round(coordinator, bad, params, masks)
    assert wait_until(lambda: agent.agent.stats["training_failed"] == 1)
    send_round(coordinator, make_task(2), params, masks)
    coordinator.expect(Update, is_update_for(2))
    # the failed round counted once, the next one trained: the agent survived the bad task
    assert agent.agent.stats["training_failed"] == 1 and agent.agent.stats["trained"] == 1


def test_a_device_past_its_daily_upload_cap_declines_with_a_device_error(mosquitto, coordinator, start_agent) -> None:
    # 200 bytes a day: the Register and first heartbeats use it up before any task arrives
    agent = start_agent(agent_settings(mosquitto.url, daily_upload_cap_mb=0.0002))
    coordinator.expect(Register)
    assert wait_until(agent.agent.link.shaper.daily_cap_reached)
    params, masks = global_model()
    send_round(coordinator, make_task(1), params, masks)
    seen = coordinator.received_until(DeviceError, lambda r: r.message.server_round == 1)
    report = seen[-1].message
    assert (report.run_id, report.device_id, report.code) == (RUN, "dev-003", "upload_cap_reached")
    assert "upload cap" in report.detail
    assert seen[-1].topic == topics.update(RUN, "dev-003")  # where the coordinator expects the round's answer
    assert not any(isinstance(r.message, Update) for r in seen)
    assert agent.agent.stats["tasks_declined_daily_cap"] == 1 and agent.agent.stats["trained"] == 0
    assert agent.agent.stats["errors_reported"] == 1


def test_falls_back_to_mqtt311_on_the_embedded_broker(start_agent) -> None:
    """amqtt (the demo's embedded broker) refuses MQTT 5; ``--mqtt-protocol auto`` switches to 3.1.1."""
    embedded = pytest.importorskip("cloud.embedded_broker")
    broker = embedded.EmbeddedBroker().start()
    try:
        coordinator = FakeCoordinator(broker.port, device_keys={"dev-003": DEVICE_KEY}, protocol=mqtt.MQTTv311)
        try:
            agent = start_agent(agent_settings(broker.url))
            coordinator.expect(Register)
            assert agent.agent.link.protocol == "3.1.1" and agent.agent.stats["protocol_fallbacks"] == 1
            params, masks = global_model()
            send_round(coordinator, make_task(1), params, masks)
            assert coordinator.expect(Update, is_update_for(1)).message.sample_count == 40
        finally:
            coordinator.close()
    finally:
        broker.stop()


def test_starts_before_the_broker_and_connects_when_it_comes_up(tmp_path, start_agent) -> None:
    broker = MosquittoBroker(tmp_path / "late")  # not started yet
    agent = start_agent(agent_settings(broker.url))
    assert wait_until(lambda: agent.agent.stats["disconnects"] >= 2, timeout=10)  # failed attempts, retrying
    time.sleep(3.5)  # longer than the MQTT 5 CONNACK timeout: refused TCP must not trigger the 3.1.1 fallback
    broker.start()
    try:
        coordinator = FakeCoordinator(broker.port, device_keys={"dev-003": DEVICE_KEY})
        try:
            coordinator.expect(Status, lambda r: r.message.state == "online")  # retained: seen even if earlier
            assert agent.agent.link.protocol == "5" and agent.agent.stats["protocol_fallbacks"] == 0
        finally:
            coordinator.close()
    finally:
        broker.stop()


def test_a_device_table_from_the_env_drives_training(mosquitto, coordinator, start_agent, tmp_path,
                                                      monkeypatch) -> None:
    """--kernel-thresholds: the device's own table reaches the trainer; an all-sparse table gives the same
    update as masked dense training (up to float rounding)."""
    import edge_agent.local_training as local_training
    from feddst_core.sparse import SparseThreshold, thresholds_to_dict

    table = {"linear": (SparseThreshold(1.0, 0),), "conv": (SparseThreshold(1.0, 0),)}
    path = tmp_path / "kernel_thresholds.json"
    path.write_text(json.dumps(thresholds_to_dict(table)))
    choices: list[dict[str, str]] = []
    real = local_training.make_local_trainer

    def spy(spec, config, kernels="dense", thresholds=None):  # type: ignore[no-untyped-def]
        trainer = real(spec, config, kernels, thresholds)
        choices.append(trainer.layer_choice(masks))  # type: ignore[union-attr]
        return trainer

    monkeypatch.setattr(local_training, "make_local_trainer", spy)
    agent = start_agent(agent_settings(mosquitto.url, kernel_thresholds=str(path)))
    assert agent.settings.kernel_threshold_table == table
    coordinator.expect(Register)
    params, masks = global_model()
    task = make_task()
    send_round(coordinator, task, params, masks)
    update = coordinator.expect(Update, is_update_for(1)).message
    assert choices == [{name.removesuffix(".weight"): "sparse" for name in SPEC.masked_names()}]

    local, config = _client3_share_and_config(task)
    expected = LocalTrainer(SPEC, config).train(params, masks, [local], [client_seed(task.seed, 1, 3)], 0.0)[0]
    got_params, _ = update_to_model(update, masks)
    for name, value in expected.params.items():
        torch.testing.assert_close(got_params[name], value, atol=1e-4, rtol=0)


@pytest.mark.parametrize("offset_s", [600.0, -600.0])
def test_a_device_clock_ten_minutes_off_still_meets_the_deadline(mosquitto, coordinator, start_agent,
                                                                 offset_s) -> None:
    """Deadlines are measured from receipt: a clock +10 min ahead does not see every task as stale."""
    agent = start_agent(agent_settings(mosquitto.url, clock_offset_s=offset_s))
    coordinator.expect(Register)
    assert abs(agent.agent.clock() - time.time() - offset_s) < 5
    params, masks = global_model()
    send_round(coordinator, make_task(1, deadline_s=20.0), params, masks)
    coordinator.expect(Update, is_update_for(1), timeout=20)
    assert agent.agent.stats["tasks_stale"] == 0 and agent.agent.stats["trained"] == 1
