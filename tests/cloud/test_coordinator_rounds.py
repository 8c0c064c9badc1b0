"""The coordinator's round logic over a real mosquitto, driven by protocol-level fake devices."""

from __future__ import annotations

from coordinator_harness import wait_until

from cloud.run_config import RunConfig

SMALL = dict(model="digits_cnn", local_epochs=0, batch_size=8, round_timeout_s=10.0, device_wait_s=20.0,
             eval={"dataset": "digits", "clients": 4, "samples_per_class": 10, "eval_every": 1})


def _online(coordinator, n):
    wait_until(lambda: len(coordinator.registry.online_ids()) >= n, what=f"{n} devices online")


def test_full_run_completes_and_persists(coordinator, devices):
    for i in range(4):
        devices(f"dev-{i:03d}", index=i)
    _online(coordinator, 4)
    run = coordinator.create_run(RunConfig(rounds=3, clients_per_round=3, **SMALL))
    coordinator.start_run(run.id)
    final = coordinator.wait_for_run(run.id, 60)
    assert final.status == "completed", final.error
    row, rounds = coordinator.get_run(run.id)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert len(r["selected"]) == 3 and r["accepted"] == r["selected"]
        assert r["accuracy"] is not None and 0.0 <= r["accuracy"] <= 1.0
    assert rounds[-1]["upload_bytes"] > rounds[0]["upload_bytes"] > 0
    assert row.counters.get("accepted") == 9 and row.model_round == 3
    params, masks = coordinator.store.load_model(run.id)
    assert set(masks) <= set(params) and params
    done = {row.id: row.rounds_done for row, _ in coordinator.registry.snapshot()}
    assert sum(done.values()) == 9


def test_duplicate_update_is_not_counted_twice(coordinator, devices):
    # dev-002 stays silent, so each round stays open until its deadline and every duplicate
    # arrives while the round is open.
    twice = [devices(f"dev-{i:03d}", index=i, duplicate=True) for i in range(2)]
    devices("dev-002", index=2, silent=True)
    _online(coordinator, 3)
    run = coordinator.create_run(RunConfig(rounds=2, clients_per_round=3, quorum=2,
                                           **{**SMALL, "round_timeout_s": 1.5}))
    coordinator.start_run(run.id)
    assert coordinator.wait_for_run(run.id, 60).status == "completed"
    row, rounds = coordinator.get_run(run.id)
    previous = 0
    for r in rounds:
        assert r["accepted"] == ["dev-000", "dev-001"]
        assert r["ignored"]["duplicate"] == 2
        sizes = sum(d.sent_sizes[(run.id, r["round"])] for d in twice)
        assert r["upload_bytes"] - previous == sizes  # each update's bytes counted once
        previous = r["upload_bytes"]
    assert row.counters["accepted"] == 4 and row.counters["duplicate"] == 4
    for device in twice:  # both copies acked ok, so the device stops re-sending
        acks = [a for a in device.acks if a.run_id == run.id]
        assert len(acks) == 4 and all(a.ok for a in acks)


def test_update_for_an_old_round_is_ignored(coordinator, devices):
    # dev-002 is slow: its round-1 update arrives after round 1 closed at its deadline, while
    # round 2 is open. It must be ignored (counted as stale), never folded into round 2.
    devices("dev-000", index=0)
    devices("dev-001", index=1)
    devices("dev-002", index=2, delay_s=2.5)
    _online(coordinator, 3)
    run = coordinator.create_run(RunConfig(rounds=2, clients_per_round=3, quorum=2,
                                           **{**SMALL, "round_timeout_s": 1.5}))
    coordinator.start_run(run.id)
    assert coordinator.wait_for_run(run.id, 60).status == "completed"
    row, rounds = coordinator.get_run(run.id)
    assert [r["accepted"] for r in rounds] == [["dev-000", "dev-001"]] * 2
    assert rounds[1]["ignored"].get("stale") == 1
    assert row.counters["stale"] == 1 and row.counters["accepted"] == 4


def test_resent_update_of_a_closed_round_is_acked_not_counted(coordinator, devices):
    for i in range(3):
        devices(f"dev-{i:03d}", index=i, stale_too=True)
    _online(coordinator, 3)
    run = coordinator.create_run(RunConfig(rounds=3, clients_per_round=3, **SMALL))
    coordinator.start_run(run.id)
    assert coordinator.wait_for_run(run.id, 60).status == "completed"
    row, _ = coordinator.get_run(run.id)
    assert row.counters["accepted"] == 9  # re-sends never joined an aggregation
    assert row.counters["duplicate"] >= 3


def test_silent_device_does_not_stall_the_round_past_its_deadline(coordinator, devices):
    devices("dev-000", index=0)
    devices("dev-001", index=1)
    devices("dev-002", index=2, silent=True)
    _online(coordinator, 3)
    timeout = 2.0
    run = coordinator.create_run(RunConfig(rounds=2, clients_per_round=3, quorum=2,
                                           **{**SMALL, "round_timeout_s": timeout}))
    coordinator.start_run(run.id)
    assert coordinator.wait_for_run(run.id, 60).status == "completed"
    _, rounds = coordinator.get_run(run.id)
    for r in rounds:
        assert r["accepted"] == ["dev-000", "dev-001"]
        assert r["seconds"] < timeout + 3.0  # closed at the deadline, not later


def test_unselected_device_update_is_ignored(coordinator, devices, broker):
    import paho.mqtt.client as mqtt

    from feddst_core.wire_format import update_message
    from protocol import Ack, decode_message, encode_message, topics

    devices("dev-000", index=0)
    devices("dev-001", index=1, silent=True)  # keeps round 1 open until its deadline
    _online(coordinator, 2)
    acks: list = []
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe-outsider")
    probe.on_message = lambda c, u, m: acks.append(decode_message(m.payload))
    probe.connect("127.0.0.1", broker.port)
    probe.loop_start()
    run = coordinator.create_run(RunConfig(rounds=1, clients_per_round=2, quorum=1,
                                           **{**SMALL, "round_timeout_s": 2.0}))
    probe.subscribe(topics.ack(run.id, "dev-009"), qos=1)
    coordinator.start_run(run.id)
    wait_until(lambda: coordinator._execution is not None and coordinator._execution.collector is not None,
               what="round 1 open")
    params, masks = coordinator.store.load_model(run.id)  # the round-0 model
    msg = update_message(run.id, 1, "dev-009", params, masks, masks, 10, 0.0, 0.0)
    probe.publish(topics.update(run.id, "dev-009"), encode_message(msg), qos=1).wait_for_publish(5)
    assert coordinator.wait_for_run(run.id, 30).status == "completed"
    wait_until(lambda: any(isinstance(a, Ack) for a in acks), what="ack to the outsider")
    probe.loop_stop()
    probe.disconnect()
    row, rounds = coordinator.get_run(run.id)
    assert rounds[0]["accepted"] == ["dev-000"]
    assert rounds[0]["ignored"]["unselected"] == 1 and row.counters["unselected"] == 1
    assert [a.ok for a in acks if isinstance(a, Ack)] == [False]


def test_missed_quorum_fails_after_retries(coordinator, devices):
    devices("dev-000", index=0, silent=True)
    devices("dev-001", index=1, silent=True)
    _online(coordinator, 2)
    run = coordinator.create_run(RunConfig(rounds=1, clients_per_round=2, quorum=1, max_round_retries=1,
                                           **{**SMALL, "round_timeout_s": 1.0}))
    coordinator.start_run(run.id)
    final = coordinator.wait_for_run(run.id, 30)
    assert final.status == "failed"
    assert "quorum" in (final.error or "")
    assert final.counters.get("round_retries") == 1


def test_crashed_device_goes_offline_via_last_will(coordinator, devices):
    a = devices("dev-000")
    devices("dev-001")
    _online(coordinator, 2)
    a.crash()
    wait_until(lambda: coordinator.registry.online_ids() == ["dev-001"], what="dev-000 offline")
