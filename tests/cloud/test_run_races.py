"""Races of the run lifecycle and resume by hand, on a real mosquitto with protocol-level fake devices:
stop answers once the run has stopped; a stop racing completion never rewrites a completed run; a shutdown
mid-round leaves the run ``interrupted`` (the main loop's last write) and it resumes by hand, reopening the
round with the same task so the devices' late updates count; a retried round closes when its stand-ins reply."""

from __future__ import annotations

import threading

import pytest
from brokers import MosquittoBroker
from coordinator_harness import make_coordinator, wait_until
from fake_devices import FakeDevice

from cloud.coordinator import SHUTDOWN_REASON
from cloud.errors import RunStateError
from cloud.run_config import RunConfig
from protocol import Task

SMALL = dict(model="digits_cnn", local_epochs=0, batch_size=8, device_wait_s=20.0)


@pytest.fixture
def broker(tmp_path):
    server = MosquittoBroker(tmp_path / "mosquitto").start()
    yield server
    server.stop()


def _online(coordinator, n):
    wait_until(lambda: len(coordinator.registry.online_ids()) >= n, what=f"{n} devices online")


def _collecting(coordinator, run_id, server_round=1):
    wait_until(lambda: (p := coordinator.run_phase(run_id)) is not None and p.name == "collecting"
               and p.round == server_round, what=f"round {server_round} collecting")


def test_stop_answers_once_the_run_stopped_so_a_start_right_after_is_accepted(broker, devices, tmp_path):
    coordinator = make_coordinator(broker.url, tmp_path / "state")
    try:
        for i in range(2):
            devices(f"dev-{i}", index=i, silent=True)
        _online(coordinator, 2)
        first = coordinator.create_run(RunConfig(rounds=2, clients_per_round=2, round_timeout_s=30.0, **SMALL))
        coordinator.start_run(first.id)
        _collecting(coordinator, first.id)
        assert coordinator.stop_run(first.id).status == "stopped"
        second = coordinator.create_run(RunConfig(rounds=1, clients_per_round=2, round_timeout_s=30.0, **SMALL))
        assert coordinator.start_run(second.id).status == "running"  # no 409: the first one is really stopped
        assert coordinator.stop_run(second.id).status == "stopped"
    finally:
        coordinator.close()


def test_a_stop_racing_completion_never_rewrites_a_completed_run(broker, devices, tmp_path):
    coordinator = make_coordinator(broker.url, tmp_path / "state")
    try:
        for i in range(2):
            devices(f"dev-{i}", index=i)
        _online(coordinator, 2)
        run = coordinator.create_run(RunConfig(rounds=1, clients_per_round=2, round_timeout_s=30.0, **SMALL))
        coordinator.start_run(run.id)
        assert coordinator.wait_for_run(run.id, 60).status == "completed"
        # The stop request stop_run queued while the run was running reaches the loop after the last round:
        handled = threading.Event()
        coordinator._commands.put(("stop", run.id, handled))
        assert handled.wait(10)
        assert coordinator.get_run(run.id)[0].status == "completed"
        with pytest.raises(RunStateError, match="completed"):
            coordinator.stop_run(run.id)
    finally:
        coordinator.close()


def test_shutdown_mid_round_interrupts_and_a_resume_by_hand_reopens_the_round(broker, devices, tmp_path):
    state = tmp_path / "state"
    coordinator = make_coordinator(broker.url, state)
    started = [devices(f"dev-{i}", index=i, delay_s=1.5, resend_on_repeated_task=True) for i in range(2)]
    _online(coordinator, 2)
    run = coordinator.create_run(RunConfig(rounds=2, clients_per_round=2, round_timeout_s=30.0, **SMALL))
    coordinator.start_run(run.id)
    _collecting(coordinator, run.id)
    coordinator.close()  # the devices' round-1 updates arrive while no coordinator is up (queued by the broker)
    restarted = make_coordinator(broker.url, state, resume_runs=False)
    try:
        row = restarted.get_run(run.id)[0]
        assert (row.status, row.error) == ("interrupted", SHUTDOWN_REASON)
        assert restarted.active_run_id is None  # resume_runs off: it waits for a resume by hand
        with pytest.raises(RunStateError, match="only an interrupted run"):
            restarted.resume_run(restarted.create_run(RunConfig(rounds=1, **SMALL)).id)
        assert restarted.resume_run(run.id).status == "running"
        with pytest.raises(RunStateError, match="interrupted"):
            restarted.resume_run(run.id)
        final = restarted.wait_for_run(run.id, 60)
        assert final.status == "completed", final.error
        assert final.error is None and final.counters["rounds_reopened"] == 1
        rounds = restarted.get_run(run.id)[1]
        assert [r["round"] for r in rounds] == [1, 2]
        assert rounds[0]["accepted"] == ["dev-0", "dev-1"]  # the updates made for the first coordinator's task
        assert final.counters["accepted"] == 4 and final.counters.get("wrong_nonce", 0) == 0
        nonces = {t.task_nonce for t in _tasks_seen(started[0], run.id, 1)}
        assert len(nonces) == 1  # the reopened round re-sent the same task
    finally:
        restarted.close()


def _tasks_seen(device: FakeDevice, run_id: str, server_round: int) -> list[Task]:
    return [t for t in device.tasks_seen if t.run_id == run_id and t.server_round == server_round]


def test_a_retried_round_closes_when_its_stand_ins_reply(broker, devices, tmp_path):
    coordinator = make_coordinator(broker.url, tmp_path / "state")
    try:
        devices("dev-0", index=0)
        gone = devices("dev-1", index=1, silent=True)
        _online(coordinator, 2)
        run = coordinator.create_run(RunConfig(rounds=1, clients_per_round=2, quorum=2, max_round_retries=1,
                                               **{**SMALL, "round_timeout_s": 2.0}))
        coordinator.start_run(run.id)
        _collecting(coordinator, run.id)
        gone.crash()  # its last will says offline: the retry's selected set can never complete
        wait_until(lambda: "dev-1" not in coordinator.registry.online_ids(), what="dev-1 offline")
        spare = devices("dev-2", index=2)  # online by the retry: it stands in for dev-1
        assert coordinator.wait_for_run(run.id, 60).status == "completed"
        record = coordinator.get_run(run.id)[1][0]
        assert record["retries"] == 1 and record["accepted"] == ["dev-0", "dev-2"]
        retry_task = _tasks_seen(spare, run.id, 1)[-1]
        assert record["closed_at"] < retry_task.deadline_unix  # closed on dev-2's update, not at the deadline
    finally:
        coordinator.close()
