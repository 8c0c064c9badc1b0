"""The bench's private mosquitto: its $SYS byte counters equal what the clients wrote and read."""

from __future__ import annotations

import os
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud.mqtt_link import WireCountingClient
from field_trial.private_mosquitto import BrokerByteCounters, MosquittoError, PrivateMosquitto, find_mosquitto

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


def test_sys_byte_counters_match_the_clients_socket_bytes(tmp_path):
    broker = PrivateMosquitto(tmp_path / "mosquitto").start()
    counters = BrokerByteCounters(broker.port)
    client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="publisher")
    try:
        assert "sys_interval 1" in (tmp_path / "mosquitto" / "mosquitto.conf").read_text()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.subscribe("bench/echo", qos=1)
        client.publish("bench/echo", b"x" * 50_000, qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        values = counters.fresh()
        sent = client.wire_sent_bytes + counters.wire_sent_bytes
        received = client.wire_received_bytes + counters.wire_received_bytes
        assert client.wire_sent_bytes > 50_000 and client.wire_received_bytes > 50_000  # the echo came back
        assert abs(sent / values["received"] - 1) < 0.01, (sent, values)
        assert abs(received / values["sent"] - 1) < 0.01, (received, values)
    finally:
        counters.close()
        broker.stop()


def test_a_port_in_use_is_a_clear_error(tmp_path):
    first = PrivateMosquitto(tmp_path / "a").start()
    try:
        with pytest.raises(MosquittoError, match=f"cannot listen on port {first.port}: it is in use"):
            PrivateMosquitto(tmp_path / "b", port=first.port).start()
    finally:
        first.stop()


def test_the_environment_reaches_the_mosquitto_process(tmp_path):
    broker = PrivateMosquitto(tmp_path / "m", environment={"FEDDST_TEST_MARK": "m-42"}).start()
    plain = PrivateMosquitto(tmp_path / "p").start()
    try:
        def environ(b: PrivateMosquitto) -> list[bytes]:
            return (Path("/proc") / str(b.process.pid) / "environ").read_bytes().split(b"\0")

        assert b"FEDDST_TEST_MARK=m-42" in environ(broker)
        assert b"PATH=" + os.environ["PATH"].encode() in environ(broker)  # on top of ours, not instead
        assert not any(v.startswith(b"FEDDST_TEST_MARK=") for v in environ(plain))
    finally:
        broker.stop()
        plain.stop()
