"""``bench/fleet_mqtt.py``, the fakes' lean MQTT 3.1.1 client, against a real mosquitto and paho.

The oracles: the MQTT 3.1.1 spec's byte examples, a real mosquitto (which closes a connection that
breaks the protocol) and paho, an independent client, on the other end of every message."""

from __future__ import annotations

import asyncio
import os
import queue
import sys
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.append(str(Path(__file__).resolve().parents[1]))

from brokers import start_mosquitto  # noqa: E402
from fleet_mqtt import FleetMqttConnection, MqttError, open_connection, varint  # noqa: E402


@pytest.mark.parametrize(("n", "encoded"), [(0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"),
                                            (16_384, "808001"), (2_097_152, "80808001"), (268_435_455, "ffffff7f")])
def test_remaining_length_is_the_specs_variable_byte_integer(n: int, encoded: str) -> None:
    assert varint(n).hex() == encoded  # MQTT 3.1.1 section 2.2.3's table of boundaries


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    b = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


class PahoObserver:
    """A paho client subscribed to ``topic`` at QoS 1: each message as (topic, payload, qos, retain)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.qos, m.retain))
        subscribed = queue.Queue()
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def get(self) -> tuple:
        return self.messages.get(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_pieces_published_at_qos_1_arrive_joined_and_retained(broker) -> None:  # noqa: ANN001
    payload = os.urandom(300_000)  # several TCP segments
    observer = PahoObserver(broker.port, "fleet/a/#", "observer-a")

    async def publish() -> int:
        client = await open_connection("127.0.0.1", broker.port, "fake-a")
        client.publish(b"fleet/a/big", [payload[:10], memoryview(payload)[10:200_000], payload[200_000:]], qos=1)
        client.publish(b"fleet/a/status", [b"on", b"line"], qos=1, retain=True)
        in_flight = client.in_flight
        await client.wait_acked()
        assert client.in_flight == 0
        await client.disconnect()
        return in_flight

    try:
        assert asyncio.run(publish()) == 2
        assert observer.get() == ("fleet/a/big", payload, 1, False)
        assert observer.get() == ("fleet/a/status", b"online", 1, False)  # retain is 0 on live delivery
    finally:
        observer.close()
    late = PahoObserver(broker.port, "fleet/a/status", "observer-a-late")  # subscribes after: gets the retained one
    try:
        assert late.get() == ("fleet/a/status", b"online", 1, True)
    finally:
        late.close()


def test_it_receives_qos_1_messages_split_across_reads(broker) -> None:  # noqa: ANN001
    import paho.mqtt.client as mqtt

    big = os.urandom(200_000)

    async def receive() -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []
        arrived = asyncio.Event()

        def on_message(topic: str, payload: bytes) -> None:
            got.append((topic, payload))
            if len(got) == 3:
                arrived.set()

        client = await open_connection("127.0.0.1", broker.port, "fake-b", on_message=on_message)
        await client.subscribe([("fleet/b/+", 1), ("fleet/b0/+", 0)])
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sender-b")
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        for topic, data, qos in (("fleet/b/small", b"\x00\x01", 1), ("fleet/b/big", big, 1), ("fleet/b0/x", b"q0", 0)):
            sender.publish(topic, data, qos=qos).wait_for_publish(10)
        sender.loop_stop()
        sender.disconnect()
        await asyncio.wait_for(arrived.wait(), 10)
        await client.disconnect()
        return got

    assert asyncio.run(receive()) == [("fleet/b/small", b"\x00\x01"), ("fleet/b/big", big), ("fleet/b0/x", b"q0")]


def test_the_will_is_published_when_the_connection_drops_and_not_after_disconnect(broker) -> None:  # noqa: ANN001
    observer = PahoObserver(broker.port, "fleet/c/#", "observer-c")

    async def run() -> None:
        dropped = await open_connection("127.0.0.1", broker.port, "fake-c1", will=("fleet/c/1", b"gone", 1, False))
        polite = await open_connection("127.0.0.1", broker.port, "fake-c2", will=("fleet/c/2", b"gone", 1, False))
        await polite.disconnect()
        dropped.transport.abort()  # type: ignore[union-attr]
        await dropped.closed
        assert dropped.lost is not None

    try:
        asyncio.run(run())
        assert observer.get() == ("fleet/c/1", b"gone", 1, False)
        with pytest.raises(queue.Empty):
            observer.messages.get(timeout=1.5)
    finally:
        observer.close()


def test_a_refused_connect_is_an_error(tmp_path: Path) -> None:
    guarded = start_mosquitto(tmp_path, passwords={"user": "secret-password"})

    async def connect() -> None:
        await open_connection("127.0.0.1", guarded.port, "anonymous-fake")

    try:
        with pytest.raises(MqttError, match="CONNACK return code 5"):  # 5: not authorized
            asyncio.run(connect())
    finally:
        guarded.stop()


class RecordingTransport:
    """Stands in for a socket: what the protocol writes, in order."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, pieces: list) -> None:
        self.written.append(b"".join(bytes(p) for p in pieces))

    def close(self) -> None:
        self.written.append(b"<closed>")


def test_packets_fed_a_byte_at_a_time_are_parsed_and_acknowledged() -> None:
    async def run() -> tuple[list, list, int]:
        got: list[tuple[str, bytes]] = []
        connection = FleetMqttConnection(lambda t, p: got.append((t, p)))
        transport = RecordingTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.publish(b"t/out", [b"x"], qos=1)  # packet id 1
        # PUBACK of id 1, then a QoS 1 PUBLISH "t/in" id 0x1234 payload "hello", then PINGRESP
        stream = bytes([0x40, 2, 0, 1, 0x32, 2 + 4 + 2 + 5, 0, 4]) + b"t/in" + b"\x12\x34hello" + bytes([0xD0, 0])
        for i in range(len(stream)):
            connection.data_received(stream[i:i + 1])
        return got, transport.written, connection.in_flight

    got, written, in_flight = asyncio.run(run())
    assert got == [("t/in", b"hello")]
    assert in_flight == 0
    # our PUBLISH (QoS 1: 0x32, remaining 2 + 5 + 2 + 1, topic, id 1, payload) and the PUBACK of id 0x1234
    assert written == [bytes([0x32, 10, 0, 5]) + b"t/out" + b"\x00\x01x", bytes([0x40, 2, 0x12, 0x34])]


def test_a_qos_2_publish_closes_the_connection() -> None:
    async def run() -> list[bytes]:
        connection = FleetMqttConnection(lambda t, p: None)
        transport = RecordingTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(bytes([0x34, 2 + 1 + 2 + 1, 0, 1]) + b"t\x00\x07z")
        assert isinstance(connection.lost, MqttError)
        return transport.written

    assert asyncio.run(run()) == [b"<closed>"]
