"""deploy/: the broker ACL generator works with a real mosquitto, and the shipped broker config loads."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from agent_harness import REPO, FakeCoordinator, agent_settings
from brokers import MosquittoBroker

from edge_agent.config import read_key_file
from protocol import Register, Status, encode_message, topics

spec = importlib.util.spec_from_file_location("make_broker_acl", REPO / "deploy" / "make_broker_acl.py")
assert spec is not None and spec.loader is not None
make_broker_acl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_broker_acl)

STAY_ROOT = ["user root"] if os.geteuid() == 0 else []


def test_generated_acl_passwords_and_keys_work_with_mosquitto(tmp_path, start_agent) -> None:
    out = tmp_path / "fleet"
    assert make_broker_acl.main(["--range", "dev-", "4", "--keys", "--emqx", "--out", str(out)]) == 0
    credentials = json.loads((out / "credentials.json").read_text())
    assert set(credentials) == {"coordinator", "dev-000", "dev-001", "dev-002", "dev-003"}
    device_keys = json.loads((out / "device_keys.json").read_text())
    key = read_key_file(out / "keys" / "dev-003.hex")
    assert bytes.fromhex(device_keys["dev-003"]) == key and len(key) == 32
    assert "{deny, all}." in (out / "emqx_acl.conf").read_text()
    assert make_broker_acl.main(["--devices", "dev-004", "--range", "dev-", "4", "--keys", "--out", str(out)]) == 0
    assert json.loads((out / "credentials.json").read_text())["dev-003"] == credentials["dev-003"]  # kept
    assert read_key_file(out / "keys" / "dev-003.hex") == key

    acl = (out / "acl").read_text().splitlines()
    broker = MosquittoBroker(tmp_path / "broker", passwords=credentials, acl_lines=acl,
                             extra_config=STAY_ROOT).start()
    try:
        coordinator = FakeCoordinator(broker.port, password=credentials["coordinator"],
                                      device_keys=device_keys_bytes(device_keys))
        try:
            start_agent(agent_settings(broker.url, password=credentials["dev-003"]), key=key)
            got = coordinator.expect(Register)
            assert got.message.device_id == "dev-003" and got.decoded.envelope.authenticated
        finally:
            coordinator.close()
    finally:
        broker.stop()


def device_keys_bytes(keys: dict[str, str]) -> dict[str, bytes]:
    return {device: bytes.fromhex(value) for device, value in keys.items()}


def device_client(port: int, device: str, password: str, inbox: queue.Queue) -> mqtt.Client:
    """A bare MQTT 5 client logged in as ``device``; every message it receives goes to ``inbox``."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    client.username_pw_set(device, password)
    client.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_pattern_acl_confines_any_device_to_its_own_topics(tmp_path) -> None:
    """On a real mosquitto with the generated pattern ACL, dev-a's writes to dev-b's topics are not
    delivered and dev-b does not receive dev-a's acks, while each device's own traffic flows."""
    out = tmp_path / "fleet"
    assert make_broker_acl.main(["--pattern", "--devices", "dev-a", "dev-b", "--out", str(out)]) == 0
    lines = (out / "acl").read_text().splitlines()
    assert not any(line.startswith("user dev-") for line in lines)  # one pattern block serves every device
    credentials = json.loads((out / "credentials.json").read_text())
    broker = MosquittoBroker(tmp_path / "broker", passwords=credentials, acl_lines=lines,
                             extra_config=STAY_ROOT).start()
    inbox_a: queue.Queue = queue.Queue()
    inbox_b: queue.Queue = queue.Queue()
    try:
        coordinator = FakeCoordinator(broker.port, password=credentials["coordinator"])
        dev_a = device_client(broker.port, "dev-a", credentials["dev-a"], inbox_a)
        dev_b = device_client(broker.port, "dev-b", credentials["dev-b"], inbox_b)
        try:
            every_ack = topics.ack("run-1", "dev-a").rsplit("/", 1)[0] + "/+"
            for client in (dev_a, dev_b):
                client.subscribe(every_ack, qos=1)  # the ACL lets each read only its own
            forged = encode_message(Status("dev-b", "offline", "forged"))
            dev_a.publish(topics.status("dev-b"), forged, qos=1).wait_for_publish(5)
            dev_a.publish(topics.register("dev-b"), forged, qos=1).wait_for_publish(5)
            dev_a.publish(topics.status("dev-a"), encode_message(Status("dev-a", "online", "own")),
                          qos=1).wait_for_publish(5)
            # QoS 1 from one client arrives in order: whatever got through was received before "own"
            seen = coordinator.received_until(Status, lambda r: r.message.device_id == "dev-a")
            assert [r.message.detail for r in seen] == ["own"]
            time.sleep(0.3)  # the subscriptions are in place before the acks go out
            coordinator.publish_raw(topics.ack("run-1", "dev-a"), b"for dev-a")
            coordinator.publish_raw(topics.ack("run-1", "dev-b"), b"for dev-b")
            assert inbox_b.get(timeout=5) == (topics.ack("run-1", "dev-b"), b"for dev-b")
            assert inbox_a.get(timeout=5) == (topics.ack("run-1", "dev-a"), b"for dev-a")
            time.sleep(0.3)
            assert inbox_a.empty() and inbox_b.empty()
        finally:
            for client in (dev_a, dev_b):
                client.disconnect()
                client.loop_stop()
            coordinator.close()
    finally:
        broker.stop()


def test_bad_ids_are_refused(tmp_path, capsys) -> None:
    assert make_broker_acl.main(["--devices", "bad/id", "--out", str(tmp_path / "x")]) == 2
    assert "not a valid identifier" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_parse() -> None:
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    assert len(units) == 2
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not problems, problems

