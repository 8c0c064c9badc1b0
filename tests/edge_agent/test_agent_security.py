"""The agent's side of security on a real mosquitto: only the coordinator's Ed25519 signature is
obeyed (a device's HMAC key, no signature or another Ed25519 key are refused), replayed tasks and
aborts are dropped, and insecure mode (explicit) works and warns."""

from __future__ import annotations

import logging
import time

from agent_harness import (
    DEVICE_KEY,
    RUN,
    agent_settings,
    global_model,
    is_update_for,
    make_task,
    send_round,
    wait_until,
)

from feddst_core.wire_format import model_broadcast
from protocol import Abort, Register, Update, encode_message, split_into_chunks, topics
from protocol.ed25519 import Ed25519Signer


def test_a_device_cannot_forge_a_round_the_fleet_obeys(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    stats = agent.agent.stats
    task = make_task(1, readjust=False)
    model = model_broadcast(RUN, 1, params, masks)
    # What a device could send on a broker without ACLs: its own HMAC key, nothing, or its own Ed25519 key.
    forgers = (DEVICE_KEY, None, Ed25519Signer(bytes(range(7, 39))))
    for forger in forgers:
        coordinator.publish_raw(topics.task(RUN), encode_message(task, forger))  # type: ignore[arg-type]
    assert wait_until(lambda: stats["dropped_unauthenticated"] == 3), dict(stats)
    assert not agent.agent.state.waiting
    coordinator.send(task, topics.task(RUN))  # genuine: the agent subscribes to the round's model topics
    assert wait_until(lambda: (RUN, 1) in agent.agent.state.waiting)
    time.sleep(0.5)  # its SUBSCRIBE is on the wire: let the broker install it before the forged chunks
    for forger in forgers:
        for i, packet in enumerate(split_into_chunks(encode_message(model, forger), 4096)):  # type: ignore[arg-type]
            coordinator.publish_raw(topics.model_chunk(RUN, 1, i), packet)
    assert wait_until(lambda: stats["dropped_unauthenticated"] == 6), dict(stats)
    assert not agent.agent.state.models and stats["trained"] == 0
    assert not [r for r in coordinator.collect(1.0) if isinstance(r.message, Update)]
    send_round(coordinator, task, params, masks)  # the genuine coordinator, signed: obeyed
    coordinator.expect(Update, is_update_for(1))
    assert stats["trained"] == 1


def test_replayed_tasks_and_aborts_are_dropped(mosquitto, coordinator, start_agent) -> None:
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    params, masks = global_model()
    stats = agent.agent.stats
    task = make_task(1)
    send_round(coordinator, task, params, masks)
    update = coordinator.expect(Update, is_update_for(1))
    assert update.message.task_nonce == task.task_nonce  # the update is bound to the task it answers
    captured = coordinator.send(task, topics.task(RUN))  # a newer copy of the task (a retry): accepted
    assert wait_until(lambda: stats["tasks_repeated"] == 1), dict(stats)
    coordinator.publish_raw(topics.task(RUN), captured)  # the same signed bytes again: a replay
    abort = coordinator.send(Abort("run-old", 3, "stopped"), topics.control("run-old"))
    assert wait_until(lambda: agent.agent.state.aborted.get("run-old") == 3)
    coordinator.publish_raw(topics.control("run-old"), abort)
    assert wait_until(lambda: stats["dropped_replayed"] == 2), dict(stats)
    assert stats["trained"] == 1 and stats["tasks_repeated"] == 1


def test_insecure_mode_accepts_unsigned_messages_and_warns(mosquitto, coordinator, start_agent, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="feddst.agent")
    settings = agent_settings(mosquitto.url, coordinator_public_key=None, insecure_unsigned_coordinator=True)
    agent = start_agent(settings)
    coordinator.expect(Register)
    assert any("INSECURE" in r.getMessage() and "--insecure-unsigned-coordinator" in r.getMessage()
               for r in caplog.records)
    coordinator.key = None  # unsigned, as an old coordinator (or anyone on the broker) would send
    params, masks = global_model()
    send_round(coordinator, make_task(1), params, masks)
    coordinator.expect(Update, is_update_for(1))
    assert agent.agent.stats["trained"] == 1 and agent.agent.stats["dropped_unauthenticated"] == 0
