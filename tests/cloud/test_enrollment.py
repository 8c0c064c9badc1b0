"""Enrollment and revocation against a real mosquitto with the dynamic-security plugin.

Every isolation claim is checked by really publishing and subscribing (with a positive control that
the same traffic does arrive where it is allowed), never by reading ACL text.
"""

from __future__ import annotations

import json
import queue
import stat
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import MosquittoBroker, init_dynsec
from coordinator_harness import wait_until
from fake_devices import FakeDevice
from typer.testing import CliRunner

from cloud.coordinator import Coordinator
from cloud.enrollment import DeviceBundle, DeviceKeyring, EnrollmentService
from cloud.errors import DeviceAlreadyEnrolledError, DeviceNotEnrolledError
from cloud.run_config import RunConfig
from cloud.settings import CloudSettings
from cloud.store import CoordinatorStore
from feddst_cli.main import app
from protocol import AuthenticationError, topics

COORDINATOR_PASSWORD = "coordinator-pw"
ADMIN_PASSWORD = "admin-pw"


@pytest.fixture
def dynsec_broker(tmp_path: Path):
    config = init_dynsec(tmp_path / "broker" / "dynamic-security.json", "feddst-admin", ADMIN_PASSWORD)
    broker = MosquittoBroker(tmp_path / "broker", dynsec_config=config,
                             extra_config=["use_username_as_clientid true"]).start()  # as deploy/mosquitto
    try:
        yield broker
    finally:
        broker.stop()


def settings_file(tmp_path: Path, broker_url: str, **extra: object) -> Path:
    path = tmp_path / "coordinator.json"
    values = {"broker_url": broker_url, "mqtt_username": "coordinator", "mqtt_password": COORDINATOR_PASSWORD,
              "broker_admin_password": ADMIN_PASSWORD, "state_dir": str(tmp_path / "state"), "heartbeat_s": 1.0,
              **extra}
    path.write_text(json.dumps(values))
    cli("cloud", "devices", "setup-broker", "-c", str(path))  # the coordinator's user, before it connects
    return path


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def enroll_cli(tmp_path: Path, config: Path, device_id: str) -> DeviceBundle:
    out = tmp_path / f"{device_id}.bundle.json"
    cli("cloud", "devices", "enroll", device_id, "-c", str(config), "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    raw = json.loads(out.read_text())
    return DeviceBundle(**raw)


class Probe:
    """A raw MQTT 5 client recording connack, subacks, pubacks, messages and disconnects."""

    def __init__(self, port: int, username: str, password: str | None, client_id: str | None = None):
        self.events: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or username,
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.events.put(("connack", rc.is_failure, str(rc)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.events.put(("suback", [r.is_failure for r in rcs]))
        self.client.on_publish = lambda c, u, mid, rc, p: self.events.put(("puback", rc.is_failure, str(rc)))
        self.client.on_message = lambda c, u, m: self.events.put(("message", m.topic, bool(m.retain)))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.events.put(("disconnect", str(rc)))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def next(self, kind: str, timeout_s: float = 5.0) -> tuple:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event[0] == kind:
                return event
        raise AssertionError(f"no {kind} within {timeout_s} s")

    def messages(self, wait_s: float = 0.6) -> list[str]:
        """Topics of the live (not retained) messages received within ``wait_s``."""
        end, topics_seen = time.monotonic() + wait_s, []
        while time.monotonic() < end:
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event[0] == "message" and not event[2]:
                topics_seen.append(event[1])
        return topics_seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_enrolled_devices_train_and_are_confined_to_their_own_topics(dynsec_broker, tmp_path: Path) -> None:
    config = settings_file(tmp_path, dynsec_broker.url)
    coordinator = Coordinator(CloudSettings.load(config))
    assert coordinator.start()
    try:
        # Enrolled by another store connection (the CLI) while the coordinator runs: no restart.
        bundle_a = enroll_cli(tmp_path, config, "dev-a")
        bundle_b = enroll_cli(tmp_path, config, "dev-b")
        assert bundle_a.device_key_hex != bundle_b.device_key_hex  # no secret shared between devices
        assert bundle_a.mqtt_password != bundle_b.mqtt_password
        assert len(bundle_a.coordinator_public_key) == 64
        devices = [FakeDevice(b.device_id, dynsec_broker.port, index=i, password=b.mqtt_password,
                              key=bytes.fromhex(b.device_key_hex)).start() for i, b in enumerate([bundle_a, bundle_b])]
        try:
            run = coordinator.create_run(RunConfig(clients_per_round=2, rounds=1, round_timeout_s=20,
                                                   device_wait_s=20))
            coordinator.start_run(run.id)
            final = coordinator.wait_for_run(run.id, 60)
            assert final.status == "completed", final.error
            _, rounds = coordinator.get_run(run.id)
            assert rounds[0]["accepted"] == ["dev-a", "dev-b"]
            assert all(ack.ok for d in devices for ack in d.acks)
        finally:
            for device in devices:
                device.stop()
    finally:
        coordinator.close()  # the probe below logs in as the coordinator's user (= its client id)

    a = Probe(dynsec_broker.port, "dev-a", bundle_a.mqtt_password)
    b = Probe(dynsec_broker.port, "dev-b", bundle_b.mqtt_password)
    coord = Probe(dynsec_broker.port, "coordinator", COORDINATOR_PASSWORD, client_id="coordinator-probe")
    try:
        for probe in (a, b, coord):
            assert probe.next("connack")[1] is False
        # A asks for B's acks (and for everything): refused; B's own subscription is granted.
        a.client.subscribe([(f"{topics.ROOT}/runs/+/ack/dev-b", 1), ("#", 1)])
        assert a.next("suback")[1] == [True, True]
        b.client.subscribe(topics.device_subscriptions("dev-b"))
        assert not any(b.next("suback")[1])
        coord.client.subscribe(topics.coordinator_subscriptions())
        assert not any(coord.next("suback")[1])
        coord.client.publish(topics.ack("run-x", "dev-b"), b"for b only", qos=1)
        assert b.messages() == [topics.ack("run-x", "dev-b")]
        assert a.messages(0.2) == []  # nothing of B's reached A
        # A publishing on B's topics is refused and never delivered; on its own topic it arrives.
        for topic in (topics.update("run-x", "dev-b"), topics.status("dev-b"), topics.register("dev-b")):
            a.client.publish(topic, b"forged", qos=1)
            assert a.next("puback")[1] is True
        assert coord.messages() == []
        a.client.publish(topics.update("run-x", "dev-a"), b"own", qos=1)
        assert a.next("puback")[1] is False
        assert coord.messages() == [topics.update("run-x", "dev-a")]
        # A connecting under B's client id gets A's user name as client id (taking over A's own session,
        # not B's): B stays connected.
        intruder = Probe(dynsec_broker.port, "dev-a", bundle_a.mqtt_password, client_id="dev-b")
        assert intruder.next("connack")[1] is False
        coord.client.publish(topics.ack("run-y", "dev-b"), b"still b", qos=1)
        assert b.messages() == [topics.ack("run-y", "dev-b")]
        intruder.close()
    finally:
        for probe in (a, b, coord):
            probe.close()


def test_revoked_device_is_disconnected_and_locked_out(dynsec_broker, tmp_path: Path) -> None:
    config = settings_file(tmp_path, dynsec_broker.url)
    bundle = enroll_cli(tmp_path, config, "dev-a")
    probe = Probe(dynsec_broker.port, "dev-a", bundle.mqtt_password)
    try:
        assert probe.next("connack")[1] is False
        output = cli("cloud", "devices", "revoke", "dev-a", "-c", str(config))
        assert "revoked dev-a" in output
        probe.next("disconnect")  # kicked at once, not at its next reconnect
        probe.client.loop_stop()
    finally:
        probe.client.disconnect()
    again = Probe(dynsec_broker.port, "dev-a", bundle.mqtt_password)
    try:
        failure, reason = again.next("connack")[1:]
        assert failure, reason
    finally:
        again.close()
    listing = json.loads(cli("cloud", "devices", "list", "-c", str(config), "--json"))
    assert listing == [{"device_id": "dev-a", "status": "revoked", "enrolled_at": listing[0]["enrolled_at"],
                        "revoked_at": listing[0]["revoked_at"]}]
    assert listing[0]["revoked_at"] >= listing[0]["enrolled_at"]
    # Re-enrolling re-admits the device with new credentials; the old password stays dead.
    new = enroll_cli(tmp_path, config, "dev-a")
    assert new.mqtt_password != bundle.mqtt_password and new.device_key_hex != bundle.device_key_hex
    old = Probe(dynsec_broker.port, "dev-a", bundle.mqtt_password)
    fresh = Probe(dynsec_broker.port, "dev-a", new.mqtt_password, client_id="dev-a-fresh")
    try:
        assert old.next("connack")[1] is True
        assert fresh.next("connack")[1] is False
    finally:
        old.close()
        fresh.close()


def test_coordinator_rejects_revoked_and_unenrolled_senders_without_restart(tmp_path: Path) -> None:
    """On a broker without ACLs (what a revoked device could still reach), the coordinator itself refuses."""
    broker = MosquittoBroker(tmp_path / "open-broker").start()
    settings = CloudSettings(broker_url=broker.url, state_dir=tmp_path / "state", heartbeat_s=1.0,
                             mqtt_username=None, broker_admin="none")
    coordinator = Coordinator(settings)
    started: list[FakeDevice] = []
    try:
        assert coordinator.start()
        legacy = FakeDevice("dev-plain", broker.port).start()  # no key: accepted while nothing is enrolled
        started.append(legacy)
        wait_until(lambda: "dev-plain" in coordinator.registry.online_ids(), what="unkeyed device online")

        service = EnrollmentService(settings, CoordinatorStore(settings.state_dir))  # a second store connection
        bundle = service.enroll("dev-a")
        assert bundle.mqtt_password is None  # broker_admin = none: the broker is not managed
        keyed = FakeDevice("dev-a", broker.port, key=bytes.fromhex(bundle.device_key_hex)).start()
        started.append(keyed)
        wait_until(lambda: "dev-a" in coordinator.registry.online_ids(), what="enrolled device online")
        # From the first enrollment on, unauthenticated messages are rejected: dev-plain goes stale.
        wait_until(lambda: "dev-plain" not in coordinator.registry.online_ids(), what="unkeyed device rejected")
        assert coordinator.counters["invalid_messages"] > 0

        assert coordinator.counters["revoked_device_messages"] == 0  # nothing counted as revoked before the revoke
        service.revoke("dev-a")
        wait_until(lambda: coordinator.counters["revoked_device_messages"] > 0, what="revoked messages counted")
        wait_until(lambda: "dev-a" not in coordinator.registry.online_ids(), what="revoked device offline")
        assert not coordinator.keyring.admits("dev-a")
        service.store.close()
    finally:
        for device in started:
            device.crash()
        coordinator.close()
        broker.stop()


def test_keyring_rules(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path)
    keyring = DeviceKeyring(store, legacy_keys={"dev-old": b"k" * 32})
    assert keyring.verifying()  # a legacy key file means: authenticate
    assert keyring.lookup("dev-old") == b"k" * 32
    assert keyring.lookup("stranger") is None
    store.save_enrollment("dev-a", "ab" * 32)
    assert keyring.lookup("dev-a") == bytes.fromhex("ab" * 32)
    store.revoke_enrollment("dev-a")
    with pytest.raises(AuthenticationError, match="revoked"):
        keyring.lookup("dev-a")
    assert keyring.rejected == {"revoked": 1, "not_enrolled": 1}
    assert not keyring.admits("dev-a") and keyring.admits("dev-old") and not keyring.admits("stranger")
    assert not DeviceKeyring(CoordinatorStore(tmp_path / "empty")).verifying()
    assert stat.S_IMODE((tmp_path / "coordinator.sqlite3").stat().st_mode) == 0o600


def test_enroll_refuses_bad_ids_duplicates_and_unknown_revokes(tmp_path: Path) -> None:
    settings = CloudSettings(state_dir=tmp_path / "state", broker_admin="none")
    service = EnrollmentService(settings, CoordinatorStore(settings.state_dir))
    for bad in ("", "a/b", "#", "x" * 65, "coordinator"):
        with pytest.raises(ValueError, match="device id|coordinator's id"):
            service.enroll(bad)
    first = service.enroll("dev-a")
    with pytest.raises(DeviceAlreadyEnrolledError, match="--reissue"):
        service.enroll("dev-a")
    second = service.enroll("dev-a", reissue=True)
    assert second.device_key_hex != first.device_key_hex
    assert second.coordinator_public_key == first.coordinator_public_key  # one signing key, kept in the state dir
    assert settings.signing_key_path.exists()
    with pytest.raises(DeviceNotEnrolledError, match="not enrolled"):
        service.revoke("dev-b")


def test_enroll_cli_errors_are_clear(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # dynsec is the default: without a broker the command says so, and enrolls nothing.
    args = ["cloud", "devices", "enroll", "dev-a", "--state-dir", str(state), "--out", str(tmp_path / "b.json")]
    result = CliRunner().invoke(app, args, env={"FEDDST_CLOUD_BROKER_URL": "mqtt://127.0.0.1:1"})
    assert result.exit_code == 1 and "broker_admin_password is not set" in result.output
    result = CliRunner().invoke(app, args, env={"FEDDST_CLOUD_BROKER_URL": "mqtt://127.0.0.1:1",
                                                "FEDDST_CLOUD_BROKER_ADMIN_PASSWORD": "x"})
    assert result.exit_code == 1
    assert "cannot reach the MQTT broker" in result.output
    assert not (tmp_path / "b.json").exists()
    assert CoordinatorStore(state).list_enrollments() == []
    bad = tmp_path / "bad.toml"
    bad.write_text('broker_admin = "sometimes"\n')
    result = CliRunner().invoke(app, ["cloud", "devices", "enroll", "dev-a", "-c", str(bad)])
    assert result.exit_code == 2 and "broker_admin" in result.output
    same = tmp_path / "same.toml"
    same.write_text('mqtt_username = "feddst-admin"\n')
    result = CliRunner().invoke(app, ["cloud", "devices", "list", "-c", str(same)])
    assert result.exit_code == 2 and "must differ from mqtt_username" in result.output


def test_enrollment_over_rest_needs_an_admin_token(dynsec_broker, tmp_path: Path) -> None:
    from coordinator_harness import bearer
    from fastapi.testclient import TestClient

    from cloud.app import create_app

    coordinator = Coordinator(CloudSettings.load(settings_file(tmp_path, dynsec_broker.url)))
    assert coordinator.start()
    device = None
    try:
        with TestClient(create_app(coordinator=coordinator)) as client:
            admin, operator, viewer = (bearer(coordinator, role) for role in ("admin", "operator", "viewer"))
            assert client.post("/api/devices/dev-a/enroll").status_code == 401
            assert client.post("/api/devices/dev-a/enroll", headers=operator).status_code == 403
            assert client.post("/api/devices/dev-a/revoke", headers=viewer).status_code == 403
            response = client.post("/api/devices/dev-a/enroll", headers=admin)
            assert response.status_code == 201, response.text
            assert response.headers["cache-control"] == "no-store"
            bundle = DeviceBundle(**response.json())
            device = FakeDevice("dev-a", dynsec_broker.port, password=bundle.mqtt_password,
                                key=bytes.fromhex(bundle.device_key_hex)).start()
            wait_until(lambda: any(d["id"] == "dev-a" and d["status"] == "online"
                                   for d in client.get("/api/devices", headers=viewer).json()), what="dev-a online")
            again = client.post("/api/devices/dev-a/enroll", headers=admin)
            assert again.status_code == 409 and "reissue" in again.json()["detail"]
            for bad in ("-bad", "coordinator", "x" * 65):
                rejected = client.post(f"/api/devices/{bad}/enroll", headers=admin)
                assert rejected.status_code == 422 and rejected.json()["detail"][0]["loc"] == ["path", "device_id"]
            assert client.post("/api/devices/dev-a/enroll", headers=admin, json={"reissue": "maybe"}).status_code == 422
            assert client.post("/api/devices/dev-zzz/revoke", headers=admin).status_code == 404
            revoked = client.post("/api/devices/dev-a/revoke", headers=admin)
            assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
            listing = client.get("/api/enrollments", headers=viewer).json()
            assert [(e["device_id"], e["status"]) for e in listing] == [("dev-a", "revoked")]
            assert "device_key_hex" not in listing[0]
            probe = Probe(dynsec_broker.port, "dev-a", bundle.mqtt_password, client_id="dev-a-probe")
            try:
                assert probe.next("connack")[1] is True
            finally:
                probe.close()
            reissued = client.post("/api/devices/dev-a/enroll", headers=admin, json={"reissue": False})
            assert reissued.status_code == 201  # a revoked device can be enrolled again, with new secrets
            assert reissued.json()["device_key_hex"] != bundle.device_key_hex
            paths = client.get("/openapi.json").json()["paths"]
            assert {"409", "422", "401", "403"} <= set(paths["/api/devices/{device_id}/enroll"]["post"]["responses"])
    finally:
        if device is not None:
            device.crash()
        coordinator.close()
