"""The keyring's freshness guarantee: a revoke committed by another process is honoured for the next message.

The coordinator caches enrollments and reads only the store's enrollment generation per run of
received packets (cloud/enrollment.py). These tests revoke through ``feddst cloud devices revoke`` in
a separate process (its own store connection), then publish exactly one message signed with the
revoked key: the coordinator must reject that very message. A cache that only an in-process revoke
invalidates accepts it (the device's ``last_seen`` moves and nothing is counted as revoked).
Both back ends: SQLite in the state dir, and the real PostgreSQL server (a schema of its own).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import MosquittoBroker
from coordinator_harness import make_coordinator, wait_until
from postgres_schemas import new_schema, unavailable_reason
from served_coordinator import feddst_env

from cloud.coordinator import Coordinator
from cloud.enrollment import DeviceKeyring, EnrollmentService
from cloud.settings import CloudSettings
from cloud.store import CoordinatorStore
from protocol import Status, encode_message, topics


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return new_schema(str(tmp_path))


class KeyedSender:
    """One MQTT connection publishing a device's Status messages, HMAC'd with its key, increasing seqs."""

    def __init__(self, port: int, device_id: str, key: bytes):
        self.device_id, self.key = device_id, key
        self.seqs = itertools.count(time.time_ns() // 1000)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-sender")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def status(self) -> None:
        data = encode_message(Status(self.device_id, "online"), self.key, seq=next(self.seqs))
        self.client.publish(topics.status(self.device_id), data, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def last_seen(coordinator: Coordinator, device_id: str) -> float:
    return next(row.last_seen for row, _ in coordinator.registry.snapshot() if row.id == device_id)


def test_a_revoke_by_another_process_rejects_the_very_next_message(tmp_path: Path, database_url: str | None):
    broker = MosquittoBroker(tmp_path / "broker").start()  # no ACLs: a revoked device can still publish
    state = tmp_path / "state"
    extra = {} if database_url is None else {"database_url": database_url}
    coordinator = make_coordinator(broker.url, state, broker_admin="none", **extra)
    config = tmp_path / "coordinator.json"
    config.write_text(json.dumps({"broker_url": broker.url, "state_dir": str(state), "broker_admin": "none",
                                  **extra}))
    sender = None
    try:
        store = CoordinatorStore(state, database_url)  # another connection, as an operator's tool would have
        bundle = EnrollmentService(CloudSettings(state_dir=state, broker_admin="none", **extra), store).enroll("dev-a")
        store.close()
        sender = KeyedSender(broker.port, "dev-a", bytes.fromhex(bundle.device_key_hex))
        sender.status()
        wait_until(lambda: "dev-a" in coordinator.registry.online_ids(), what="enrolled device accepted")
        before = last_seen(coordinator, "dev-a")
        time.sleep(0.01)
        sender.status()  # positive control: a second message moves last_seen
        wait_until(lambda: last_seen(coordinator, "dev-a") > before, what="second message accepted")

        revoked = subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "devices", "revoke", "dev-a",
                                  "-c", str(config)], env=feddst_env(), capture_output=True, text=True, timeout=120)
        assert revoked.returncode == 0, revoked.stderr + revoked.stdout
        seen_at_revoke = last_seen(coordinator, "dev-a")
        assert coordinator.counters["revoked_device_messages"] == 0

        sender.status()  # the first message after the revoke committed
        wait_until(lambda: coordinator.counters["revoked_device_messages"] == 1, what="the next message rejected")
        assert coordinator.keyring.rejected["revoked"] == 1
        assert last_seen(coordinator, "dev-a") == seen_at_revoke  # it was not taken as a heartbeat
        assert not coordinator.keyring.admits("dev-a")
    finally:
        if sender is not None:
            sender.close()
        coordinator.close()
        broker.stop()


def test_the_keyring_reads_the_enrollments_again_only_when_they_change(tmp_path: Path,
                                                                       database_url: str | None):
    store = CoordinatorStore(tmp_path / "state", database_url)
    other = CoordinatorStore(tmp_path / "state", database_url)  # a second connection: another process's view
    try:
        keyring = DeviceKeyring(store)
        assert not keyring.verifying() and keyring.admits("dev-a")
        first = keyring.snapshot()
        assert keyring.snapshot() is first and keyring.reloads == 1  # unchanged generation: the same snapshot
        other.save_enrollment("dev-a", "cd" * 32)
        assert keyring.lookup("dev-a") == bytes.fromhex("cd" * 32) and keyring.reloads == 2
        other.revoke_enrollment("dev-a")
        assert not keyring.admits("dev-a") and keyring.reloads == 3
        assert store.enrollment_generation() == other.enrollment_generation() == 2
    finally:
        other.close()
        store.close()
