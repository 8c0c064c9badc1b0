"""Replay protection and device authentication on a real mosquitto: captured updates re-published
later (same round, next round, another run, after a coordinator restart) are rejected and counted by
reason; an update signed with device A's key claiming to be B is rejected; an update that does not
echo its round's task nonce gets a negative ack; the coordinator signs what it sends."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import MosquittoBroker
from coordinator_harness import TEST_COORDINATOR_PUBLIC_KEY, make_coordinator, wait_until
from fake_devices import FakeDevice

from cloud.replay_guard import ReplayGuard
from cloud.run_config import RunConfig
from cloud.store import CoordinatorStore
from feddst_core.wire_format import update_message
from protocol import Ack, Capabilities, Register, Status, decode_message, encode_message, topics
from protocol.ed25519 import Ed25519Verifier

KEYS = {f"dev-{i:03d}": bytes([i + 1]) * 32 for i in range(3)}
SMALL = dict(model="digits_cnn", local_epochs=0, batch_size=8, device_wait_s=20.0)


class Sniffer:
    """A broker client that records every update packet, as an eavesdropper on a broker without ACLs would."""

    def __init__(self, port: int) -> None:
        self.packets: list[tuple[str, bytes]] = []
        self.acks: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sniffer")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"{topics.ROOT}/runs/+/update/+", 1), (f"{topics.ROOT}/runs/+/ack/+", 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        if "/ack/" in message.topic:
            self.acks.put(bytes(message.payload))
            return
        with self._lock:
            self.packets.append((message.topic, bytes(message.payload)))

    def of(self, run_id: str, device_id: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [p for p in self.packets if p[0] == topics.update(run_id, device_id)]

    def replay(self, packets: list[tuple[str, bytes]]) -> None:
        for topic, payload in packets:
            self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def setup(tmp_path: Path):
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    keys_file = tmp_path / "device_keys.json"
    keys_file.write_text(json.dumps({d: k.hex() for d, k in KEYS.items()}))
    state = tmp_path / "state"
    coordinator = make_coordinator(broker.url, state, device_keys_file=keys_file)
    sniffer = Sniffer(broker.port)
    devices = [FakeDevice(d, broker.port, index=i, key=KEYS[d], silent=d == "dev-002",
                          coordinator_key=Ed25519Verifier(TEST_COORDINATOR_PUBLIC_KEY)).start()
               for i, d in enumerate(KEYS)]
    holder = {"coordinator": coordinator}
    try:
        yield broker, holder, sniffer, devices, state, keys_file
    finally:
        for device in devices:
            device.stop()
        sniffer.close()
        holder["coordinator"].close()
        broker.stop()


def _run(coordinator, rounds: int):  # noqa: ANN001
    # dev-002 is selected but silent: each round stays open until its deadline, quorum 2.
    run = coordinator.create_run(RunConfig(rounds=rounds, clients_per_round=3, quorum=2, round_timeout_s=2.5,
                                           **SMALL))
    coordinator.start_run(run.id)
    return run


def _round_open(coordinator, r: int) -> bool:  # noqa: ANN001
    ex = coordinator._execution
    return ex is not None and ex.collector is not None and ex.collector.server_round == r


def _one_round_run_open(coordinator):  # noqa: ANN001, ANN202
    """With all 3 devices online, start a 1-round run; once its round is open: (coordinator, run, params, masks)."""
    wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
    run = _run(coordinator, 1)
    wait_until(lambda: _round_open(coordinator, 1), what="round 1 open")
    params, masks = coordinator.store.load_model(run.id)
    return coordinator, run, params, masks


def test_replays_across_rounds_runs_and_restarts_are_rejected_and_counted(setup):
    broker, holder, sniffer, devices, state, keys_file = setup
    coordinator = holder["coordinator"]
    wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
    first = _run(coordinator, 1)
    assert coordinator.wait_for_run(first.id, 60).status == "completed"
    captured_run_a = sniffer.of(first.id, "dev-000")
    assert captured_run_a, "the sniffer saw dev-000's update"

    second = _run(coordinator, 2)
    wait_until(lambda: _round_open(coordinator, 1) and "dev-000" in coordinator._execution.collector.accepted,
               what="run B round 1: dev-000 accepted")
    sniffer.replay(captured_run_a)  # across runs
    sniffer.replay(sniffer.of(second.id, "dev-000"))  # the same update re-published later, same round
    wait_until(lambda: _round_open(coordinator, 2), what="run B round 2 open")
    round_1 = [p for p in sniffer.of(second.id, "dev-000")][:1]
    sniffer.replay(round_1)  # across rounds
    assert coordinator.wait_for_run(second.id, 60).status == "completed"
    row, rounds = coordinator.get_run(second.id)
    assert [r["accepted"] for r in rounds] == [["dev-000", "dev-001"]] * 2  # nothing replayed got in
    assert row.counters["replayed_seq"] >= 3, row.counters
    assert row.counters["accepted"] == 4

    # Across a coordinator restart: the last accepted seqs are in the store.
    holder["coordinator"].close()
    holder["coordinator"] = coordinator = make_coordinator(broker.url, state, device_keys_file=keys_file)
    before = coordinator.counters["replayed_seq"]
    sniffer.replay(captured_run_a + sniffer.of(second.id, "dev-001"))
    wait_until(lambda: coordinator.counters["replayed_seq"] >= before + 2, what="replays after the restart")
    third = _run(coordinator, 1)  # and the restarted coordinator still works with the same devices
    assert coordinator.wait_for_run(third.id, 60).status == "completed"
    assert coordinator.get_run(third.id)[1][0]["accepted"] == ["dev-000", "dev-001"]


def test_an_update_signed_with_a_key_claiming_to_be_b_is_rejected(setup):
    broker, holder, sniffer, devices, state, keys_file = setup
    coordinator, run, params, masks = _one_round_run_open(holder["coordinator"])
    nonce = coordinator._execution.task_nonce
    forged = update_message(run.id, 1, "dev-002", params, masks, masks, 10**6, 0.0, 0.0)
    import dataclasses

    forged = dataclasses.replace(forged, task_nonce=nonce)  # the attacker read the task: it knows the nonce
    data = encode_message(forged, KEYS["dev-000"], seq=2**63)  # dev-000's key, dev-002's identity
    sniffer.replay([(topics.update(run.id, "dev-002"), p) for p in _chunks(data)])
    assert coordinator.wait_for_run(run.id, 60).status == "completed"
    row, rounds = coordinator.get_run(run.id)
    assert rounds[0]["accepted"] == ["dev-000", "dev-001"]  # dev-002 (silent) never got in
    assert row.counters["auth_failed"] >= 1
    assert coordinator.replay_guard.last_seq("dev-002") != 2**63  # a forged seq is never recorded


def test_an_update_without_its_task_nonce_gets_a_negative_ack(setup):
    broker, holder, sniffer, devices, state, keys_file = setup
    coordinator, run, params, masks = _one_round_run_open(holder["coordinator"])
    stale = update_message(run.id, 1, "dev-002", params, masks, masks, 10, 0.0, 0.0)  # task_nonce 0
    data = encode_message(stale, KEYS["dev-002"], seq=2**62)  # fresh seq, right key, wrong nonce
    sniffer.replay([(topics.update(run.id, "dev-002"), p) for p in _chunks(data)])
    assert coordinator.wait_for_run(run.id, 60).status == "completed"
    row, rounds = coordinator.get_run(run.id)
    assert rounds[0]["accepted"] == ["dev-000", "dev-001"]
    assert row.counters["wrong_nonce"] == 1 and rounds[0]["ignored"]["wrong_nonce"] == 1
    verifier = Ed25519Verifier(coordinator.public_key_hex)
    acks = []
    while not sniffer.acks.empty():
        acks.append(decode_message(sniffer.acks.get_nowait(), verifier))  # every ack is signed
    negative = [a for a in acks if isinstance(a, Ack) and a.device_id == "dev-002"]
    assert [a.ok for a in negative] == [False] and "nonce" in negative[0].detail


def _chunks(data: bytes) -> list[bytes]:
    from protocol import split_into_chunks

    return split_into_chunks(data)


def test_replay_guard_rules_and_persistence(tmp_path):
    """Unit rules of the guard: increasing seqs, the will accepted once by its announced seq, state kept."""
    store = CoordinatorStore(tmp_path)
    guard = ReplayGuard(store)
    caps = Capabilities("x86_64", 1, 1, {})
    online, offline = Status("d", "online"), Status("d", "offline")
    assert guard.admit("d", 10, online)
    assert not guard.admit("d", 10, online) and not guard.admit("d", 9, online)  # duplicate, older
    assert guard.admit("d", 12, Register("d", caps, 1, will_seq=11))  # the will of this connection is 11
    assert guard.admit("d", 13, online)
    assert not guard.admit("d", 5, offline)  # an older will (another connection): replay
    assert guard.admit("d", 11, offline)  # this connection's will, below the last seq: accepted once
    assert not guard.admit("d", 11, offline)  # the same will again (a replay)
    assert not guard.admit("d", 11, online)  # the will's seq admits only the offline status
    assert guard.admit("d", 14, online)  # a heartbeat: written at the next flush ...
    assert ReplayGuard(store).last_seq("d") == 13
    guard.flush()  # ... which the coordinator runs every ~2 s and at shutdown
    assert ReplayGuard(store).last_seq("d") == 14
    store.close()
    again = ReplayGuard(CoordinatorStore(tmp_path))  # a restarted coordinator
    assert again.last_seq("d") == 14
    assert not again.admit("d", 14, online) and not again.admit("d", 11, offline)
    assert again.admit("d", 2**64 - 1, Register("d", caps, 1, will_seq=2**64 - 2))  # u64 range survives the store
    assert ReplayGuard(CoordinatorStore(tmp_path)).last_seq("d") == 2**64 - 1
