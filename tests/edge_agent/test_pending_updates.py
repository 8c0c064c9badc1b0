"""Unacknowledged updates survive an agent restart (``--state-dir``): the store on its own, then a real
agent against a real mosquitto and the protocol-level fake coordinator, stopped cleanly or killed
with SIGKILL before its Ack and started again on the same state dir."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from agent_harness import (
    DEVICE_KEY,
    RUN,
    agent_settings,
    global_model,
    is_update_for,
    make_task,
    send_round,
    start_agent_process,
    wait_until,
)

from edge_agent.agent import REPEATED_TASK_ACK_WAIT_S
from edge_agent.pending_updates import PendingUpdateStore, StoredUpdate
from feddst_core.wire_format import update_message
from protocol import Ack, Register, Status, Update, encode_message, topics


def _update(server_round: int = 1, loss: float = 0.25) -> Update:
    params, masks = global_model()
    return update_message(RUN, server_round, "dev-003", params, masks, masks, 40, loss, compute_s=0.5)


def _pending_files(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "pending").iterdir())


# ---------------------------------------------------------------- the store on its own

def test_store_round_trip_keeps_topic_update_and_deadline(tmp_path) -> None:
    store = PendingUpdateStore(tmp_path)
    first, second = _update(1), _update(2, loss=0.5)
    store.save(StoredUpdate(topics.update(RUN, "dev-003"), first, 1_700_000_123.25))
    store.save(StoredUpdate("runs/other/update/dev-003", second, 42.5))
    loaded = {s.update.server_round: s for s in PendingUpdateStore(tmp_path).load()}  # a new store: from disk
    assert set(loaded) == {1, 2}
    assert loaded[1].update == first and loaded[1].topic == topics.update(RUN, "dev-003")
    assert loaded[1].deadline_wall == 1_700_000_123.25
    assert loaded[2].update == second and loaded[2].update != first and loaded[2].deadline_wall == 42.5
    store.remove(RUN, 1)
    assert [s.update.server_round for s in store.load()] == [2]
    store.remove(RUN, 7)  # nothing stored: not an error


def test_store_overwrites_atomically_and_leaves_no_temporary_file(tmp_path) -> None:
    store = PendingUpdateStore(tmp_path)
    store.save(StoredUpdate("t", _update(1, loss=0.1), 10.0))
    store.save(StoredUpdate("t", _update(1, loss=0.9), 20.0))  # same (run, round): replaces the file
    assert _pending_files(tmp_path) == [f"{RUN}.1.update"]  # no *.tmp left behind
    (loaded,) = store.load()
    assert loaded.update.train_loss == pytest.approx(0.9) and loaded.deadline_wall == 20.0


def test_a_temporary_file_left_by_a_crash_is_not_loaded(tmp_path) -> None:
    store = PendingUpdateStore(tmp_path)
    store.save(StoredUpdate("t", _update(1), 10.0))
    whole = (tmp_path / "pending" / f"{RUN}.1.update").read_bytes()
    (tmp_path / "pending" / f"{RUN}.2.tmp").write_bytes(whole[: len(whole) // 2])  # killed mid-write
    assert [s.update.server_round for s in store.load()] == [1]


@pytest.mark.parametrize("content, problem", [
    (b"not json\n\x00\x01", "unreadable"),
    (b'{"format": 99, "topic": "t", "deadline_wall": 1}\n', "format 99"),
    (b'{"format": 1, "topic": "t", "deadline_wall": 1}\nFDST garbage', "unreadable"),
    (b"", "unreadable"),
], ids=["garbage", "future-format", "bad-body", "empty"])
def test_a_corrupt_file_is_moved_aside_and_reported(tmp_path, caplog, content, problem) -> None:
    store = PendingUpdateStore(tmp_path)
    store.save(StoredUpdate("t", _update(1), 10.0))
    (tmp_path / "pending" / f"{RUN}.5.update").write_bytes(content)
    with caplog.at_level("WARNING", logger="feddst.agent.pending"):
        loaded = store.load()
    assert [s.update.server_round for s in loaded] == [1]  # the good one still loads
    assert _pending_files(tmp_path) == [f"{RUN}.1.update", f"{RUN}.5.bad"]
    assert (tmp_path / "pending" / f"{RUN}.5.bad").read_bytes() == content  # kept for a look, not deleted
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{RUN}.5.update" in m and problem in m and ".bad" in m for m in messages), messages


def test_a_file_holding_another_message_type_is_moved_aside(tmp_path, caplog) -> None:
    store = PendingUpdateStore(tmp_path)
    header = b'{"format": 1, "topic": "t", "deadline_wall": 1}\n'
    (tmp_path / "pending" / f"{RUN}.3.update").write_bytes(header + encode_message(Status("dev-003", "online")))
    with caplog.at_level("WARNING", logger="feddst.agent.pending"):
        assert store.load() == []
    assert _pending_files(tmp_path) == [f"{RUN}.3.bad"]
    assert any("Status, not an Update" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- a real agent restarted before its Ack

def _first_update(coordinator, deadline_s: float) -> tuple[Update, float]:  # type: ignore[no-untyped-def]
    """Send round 1 and wait for the agent's update (never acked here); returns it and the task's deadline."""
    params, masks = global_model()
    task = make_task(1, deadline_s=deadline_s)
    send_round(coordinator, task, params, masks)
    return coordinator.expect(Update, is_update_for(1), timeout=60).message, task.deadline_unix


def _stopped_with_round_1_pending(coordinator, start_agent, settings, state: Path,  # type: ignore[no-untyped-def]
                                  deadline_s: float) -> tuple[Update, float]:
    """Start an agent, let it train round 1 and store its update, stop it cleanly before any Ack: the update
    file is still in ``state``. Returns the update it sent and the task's deadline."""
    agent = start_agent(settings)
    coordinator.expect(Register)
    update, deadline = _first_update(coordinator, deadline_s=deadline_s)
    assert wait_until(lambda: _pending_files(state) == [f"{RUN}.1.update"])
    agent.close()  # no Ack came
    assert _pending_files(state) == [f"{RUN}.1.update"]  # still there after a clean stop
    return update, deadline


def test_an_agent_stopped_before_its_ack_sends_the_same_update_after_restart(mosquitto, coordinator, start_agent,
                                                                             tmp_path) -> None:
    state = tmp_path / "agent-state"
    settings = agent_settings(mosquitto.url, state_dir=str(state), ack_timeout_s=0.3)
    first, _ = _stopped_with_round_1_pending(coordinator, start_agent, settings, state, deadline_s=60)
    coordinator.drain()

    second_agent = start_agent(settings)
    again = coordinator.expect(Update, is_update_for(1), timeout=30)
    assert again.message == first  # identical values, masks, loss and nonce
    assert again.decoded.envelope.authenticated  # signed afresh by the restarted agent
    stats = second_agent.agent.stats
    assert stats["updates_restored"] == 1 and stats["trained"] == 0  # not trained again
    coordinator.send(Ack(RUN, 1, "dev-003", True), topics.ack(RUN, "dev-003"))
    assert wait_until(lambda: stats["updates_acked"] == 1)
    assert _pending_files(state) == []  # answered: gone from disk
    coordinator.drain()
    assert not [r for r in coordinator.collect(1.5) if isinstance(r.message, Update)]  # and not sent again


def test_a_task_resent_on_registration_does_not_duplicate_the_restored_update(mosquitto, coordinator, start_agent,
                                                                              tmp_path) -> None:
    """The coordinator re-sends the Task to a device that registers mid-round; a restarted agent has just re-sent
    its restored update, whose Ack is on the way: the crossing Task must not make it upload a second copy."""
    state = tmp_path / "agent-state"
    settings = agent_settings(mosquitto.url, state_dir=str(state))
    first_agent = start_agent(settings)
    coordinator.expect(Register)
    _first_update(coordinator, deadline_s=60)
    assert wait_until(lambda: _pending_files(state) == [f"{RUN}.1.update"])
    first_agent.close()  # no Ack came
    coordinator.drain()

    second_agent = start_agent(settings)
    coordinator.expect(Register)
    coordinator.expect(Update, is_update_for(1), timeout=30)  # the restored update, re-sent on connecting
    coordinator.send(make_task(1, deadline_s=60), topics.inbox("dev-003"))  # what cloud does on a Register
    time.sleep(0.3)  # the Ack for the update already received follows
    coordinator.send(Ack(RUN, 1, "dev-003", True), topics.ack(RUN, "dev-003"))
    stats = second_agent.agent.stats
    assert wait_until(lambda: stats["updates_acked"] == 1 and stats["tasks_repeated"] == 1)
    assert not [r for r in coordinator.collect(3.0) if isinstance(r.message, Update)]  # one copy paid, not two
    assert stats["update_publishes"] == 1 and stats["update_resends"] == 0 and stats["trained"] == 0
    assert _pending_files(state) == []


def test_a_repeated_task_without_an_ack_still_gets_the_update_again(mosquitto, coordinator, start_agent) -> None:
    """A repeated Task with no Ack following (the coordinator never got the update) re-sends it after the wait."""
    agent = start_agent(agent_settings(mosquitto.url))
    coordinator.expect(Register)
    first, _ = _first_update(coordinator, deadline_s=60)
    coordinator.send(make_task(1, deadline_s=60), topics.inbox("dev-003"))
    sent_at = time.monotonic()
    again = coordinator.expect(Update, is_update_for(1), timeout=15)
    assert again.message == first and time.monotonic() - sent_at >= REPEATED_TASK_ACK_WAIT_S - 0.5
    # the main loop counts the re-send after paho took it: on a loaded machine the copy can arrive first
    assert wait_until(lambda: agent.agent.stats["update_resends"] == 1)


def test_an_agent_killed_before_its_ack_sends_the_same_update_after_restart(mosquitto, coordinator,
                                                                            tmp_path) -> None:
    state, key_file = tmp_path / "agent-state", tmp_path / "dev.key"
    key_file.write_text(DEVICE_KEY.hex() + "\n")
    args = ("--broker", mosquitto.url, "--device-id", "dev-003", "--partition", "3/8", "--key-file", str(key_file),
            "--heartbeat-s", "0.5", "--state-dir", str(state), "--threads", "1")
    proc = start_agent_process(*args)
    procs: list[subprocess.Popen] = [proc]
    try:
        coordinator.expect(Register, timeout=60)
        first, _ = _first_update(coordinator, deadline_s=120)
        assert wait_until(lambda: (state / "pending" / f"{RUN}.1.update").exists())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _pending_files(state) == [f"{RUN}.1.update"]
        coordinator.drain()

        proc = start_agent_process(*args)
        procs.append(proc)
        again = coordinator.expect(Update, is_update_for(1), timeout=60)
        assert again.message == first
        coordinator.send(Ack(RUN, 1, "dev-003", True), topics.ack(RUN, "dev-003"))
        assert wait_until(lambda: _pending_files(state) == [], timeout=15)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        outputs = [p.communicate(timeout=10)[0] for p in procs]
    assert "restored the unacknowledged update" in outputs[1]
    assert f"trained {RUN} round 1" in outputs[0] and f"trained {RUN} round 1" not in outputs[1]  # not re-trained


def test_a_stored_update_past_its_deadline_is_dropped_not_sent(mosquitto, coordinator, start_agent,
                                                               tmp_path) -> None:
    state = tmp_path / "agent-state"
    settings = agent_settings(mosquitto.url, state_dir=str(state), ack_timeout_s=0.3)
    _, deadline = _stopped_with_round_1_pending(coordinator, start_agent, settings, state, deadline_s=12)
    assert time.time() < deadline
    time.sleep(max(0.0, deadline - time.time()) + 0.5)  # now past it
    coordinator.drain()

    second_agent = start_agent(settings)
    coordinator.expect(Register)
    assert not [r for r in coordinator.collect(2.0) if isinstance(r.message, Update)]
    assert second_agent.agent.stats["updates_restored"] == 0 and not second_agent.agent.state.uploads
    assert _pending_files(state) == []
