"""The embedded broker's loop logs an error that escapes amqtt as one WARNING line (the served
coordinator's stderr keeps one time-and-level line per record) and keeps serving clients."""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt

from cloud.embedded_broker import EmbeddedBroker


def _raise_on_loop() -> None:
    raise ConnectionResetError("peer reset\nmid-packet")


def _round_trip(port: int) -> bytes:
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
    client.on_message = lambda _c, _u, msg: (got.append(msg.payload), done.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert client.subscribe("probe/t", qos=1)[0] == mqtt.MQTT_ERR_SUCCESS
        assert done.wait(0.5) is False  # subscribed, nothing yet
        client.publish("probe/t", b"still serving", qos=1).wait_for_publish(5)
        assert done.wait(5), "the broker stopped serving after the error"
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


def test_an_error_on_the_broker_loop_is_one_warning_line_and_the_broker_keeps_serving(caplog):
    with EmbeddedBroker() as broker, caplog.at_level(logging.INFO, logger="cloud.embedded_broker"):
        assert broker._loop is not None
        broker._loop.call_soon_threadsafe(_raise_on_loop)
        assert _round_trip(broker.port) == b"still serving"
    records = [r for r in caplog.records if r.name == "cloud.embedded_broker"]
    assert len(records) == 1, [r.getMessage() for r in records]
    line = records[0].getMessage()
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "ConnectionResetError: peer reset mid-packet" in line and "\n" not in line
