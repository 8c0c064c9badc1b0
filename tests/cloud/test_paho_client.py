"""The coordinator's paho client reads through a buffer, many packets per pass, and joins small writes
(``cloud.paho_client.WireCountingClient``): every packet still arrives whole and in order, every byte still
leaves in order, and a pass never ends with bytes left in the buffer."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from cloud import paho_client
from cloud.paho_client import WireCountingClient


def remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (128 if size else 0))
        if not size:
            return bytes(out)


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 QoS 0 PUBLISH, byte for byte."""
    body = struct.pack("!H", len(topic)) + topic.encode() + payload
    return b"\x30" + remaining_length(len(body)) + body


@pytest.fixture
def connected() -> Iterator[tuple[WireCountingClient, socket.socket, list[tuple[str, bytes]]]]:
    """A client whose socket is one end of a socket pair (the test writes the broker's side), recording
    every message it handles."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="buffered")
    received: list[tuple[str, bytes]] = []
    client.on_message = lambda c, u, message: received.append((message.topic, bytes(message.payload)))
    client._sock = ours  # type: ignore[assignment]
    yield client, broker, received
    client._sock = None
    ours.close()
    broker.close()


def test_one_pass_reads_every_queued_packet_with_few_socket_reads(connected) -> None:  # noqa: ANN001
    client, broker, received = connected
    sent = [(f"feddst/v1/devices/dev-{i:05d}/status", b"hb%05d" % i) for i in range(500)]
    broker.sendall(b"".join(publish_packet(t, p) for t, p in sent))
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert received == sent
    assert client.socket_reads <= 3  # paho alone: 3 recv calls per packet
    assert client._buffered_bytes() == 0
    assert client.wire_received_bytes == sum(len(publish_packet(t, p)) for t, p in sent)


def test_a_pass_stops_after_its_socket_reads_and_leaves_nothing_buffered(connected, monkeypatch) -> None:  # noqa: ANN001
    client, broker, received = connected
    monkeypatch.setattr(paho_client, "READ_SIZE", 1000)
    monkeypatch.setattr(paho_client, "SOCKET_READS_PER_PASS", 2)
    sent = [(f"t/{i}", bytes([i % 251]) * 300) for i in range(40)]  # 12 KB: more than one pass reads
    broker.sendall(b"".join(publish_packet(t, p) for t, p in sent))
    client.loop_read()
    assert client.socket_reads == 2
    assert client._buffered_bytes() == 0
    assert 0 < len(received) < len(sent)
    passes = 1
    while len(received) < len(sent):
        client.loop_read()
        passes += 1
        assert client._buffered_bytes() == 0
    assert received == sent
    assert passes >= 6


def test_a_packet_split_across_socket_reads_arrives_whole(connected, monkeypatch) -> None:  # noqa: ANN001
    client, broker, received = connected
    monkeypatch.setattr(paho_client, "READ_SIZE", 64)
    big = bytes(range(256)) * 40  # 10 KB: many reads of 64 bytes, spread over passes
    packet = publish_packet("feddst/v1/runs/r/update/d", big)
    broker.sendall(packet[:100])
    client.loop_read()
    assert received == []
    broker.sendall(packet[100:] + publish_packet("after", b"x"))
    for _ in range(100):
        client.loop_read()
    assert received == [("feddst/v1/runs/r/update/d", big), ("after", b"x")]


def test_the_read_gate_is_asked_before_each_socket_read_only(connected, monkeypatch) -> None:  # noqa: ANN001
    client, broker, received = connected
    open_gate = [False]
    client._read_gate = lambda: open_gate[0]
    broker.sendall(publish_packet("a", b"1") + publish_packet("b", b"2"))
    client.loop_read()
    assert received == [] and client.socket_reads == 0  # not now: nothing read from the socket
    open_gate[0] = True
    monkeypatch.setattr(paho_client, "SOCKET_READS_PER_PASS", 1)
    client._read_gate = lambda: open_gate.pop() if open_gate else False  # open for exactly one socket read
    client.loop_read()
    assert received == [("a", b"1"), ("b", b"2")]  # both came in that read: handed on from the buffer


def test_a_new_connection_does_not_see_the_old_connections_buffer(connected) -> None:  # noqa: ANN001
    client, broker, received = connected
    client._read_buffer, client._read_at, client._read_socket = b"stale bytes", 0, object()
    broker.sendall(publish_packet("fresh", b"ok"))
    client.loop_read()
    assert received == [("fresh", b"ok")]


class RecordingSocket:
    """Stands in for the client's socket on the write side: records every send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sends.append(bytes(data))
        return len(data)


def queue_packet(client: WireCountingClient, command: int, data: bytes, qos: int,
                 info: mqtt.MQTTMessageInfo | None = None) -> None:
    client._out_packet.append({"command": command, "mid": 1, "qos": qos, "pos": 0, "to_process": len(data),
                               "packet": data, "info": info})


def client_with_acks(sock: RecordingSocket, count: int) -> tuple[WireCountingClient, list[bytes]]:
    """A client writing to ``sock`` with ``count`` PUBACKs queued (and those PUBACKs' bytes)."""
    client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="writes")
    client._sock = sock  # type: ignore[assignment]
    acks = [b"\x40\x02\x00" + bytes([i]) for i in range(1, count + 1)]
    for ack in acks:
        queue_packet(client, mqtt.PUBACK, ack, 0)
    return client, acks


def test_small_packets_that_need_nothing_after_their_write_leave_in_one_send() -> None:
    sock = RecordingSocket()
    client, acks = client_with_acks(sock, 5)
    queue_packet(client, mqtt.PUBLISH | 2, b"\x32qos1-publish", 1)
    info = mqtt.MQTTMessageInfo(7)
    queue_packet(client, mqtt.PUBLISH, b"\x30qos0-publish", 0, info)  # paho marks it published after its write
    queue_packet(client, mqtt.PUBACK, b"\x40\x02\x00\x09", 0)
    queue_packet(client, mqtt.PUBLISH | 2, b"\x32" + b"m" * (paho_client.COALESCE_PACKET_BYTES + 1), 1)
    queue_packet(client, mqtt.PUBACK, b"\x40\x02\x00\x0a", 0)
    expected = b"".join(p["packet"] for p in client._out_packet)
    assert client._packet_write() == mqtt.MQTT_ERR_SUCCESS
    client._sock = None
    assert b"".join(sock.sends) == expected  # every byte, in order
    assert sock.sends[0] == b"".join(acks) + b"\x32qos1-publish"
    assert sock.sends[1] == b"\x30qos0-publish" and info.is_published()
    assert len(sock.sends) == 5  # joined, QoS 0 alone, PUBACK alone (a big one follows), big, PUBACK
    assert client.socket_writes == 5 and client.wire_sent_bytes == len(expected)
    assert not client._out_packet


def test_a_partly_sent_joined_packet_keeps_its_remaining_bytes() -> None:
    class HalfSocket(RecordingSocket):
        def send(self, data: bytes) -> int:
            part = bytes(data[:max(1, len(data) // 2)])
            self.sends.append(part)
            return len(part)

    sock = HalfSocket()
    client, acks = client_with_acks(sock, 8)
    while client._out_packet:
        client._packet_write()
    client._sock = None
    assert b"".join(sock.sends) == b"".join(acks)


def publish_with(header: int, topic: bytes, mid: int | None, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH with the given first byte (QoS, retain, dup flags) and packet id."""
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if mid is not None else b"") + payload
    return bytes([header]) + remaining_length(len(body)) + body


def handled_by(client: mqtt.Client, data: bytes) -> list[tuple]:
    """What ``client`` hands its on_message for ``data`` (every field paho sets), and the bytes it writes back."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    got: list[tuple] = []
    client.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload), type(m.payload), m.qos, m.mid,
                                                     m.retain, m.dup, m.timestamp > 0))
    client._sock = ours  # type: ignore[assignment]
    broker.sendall(data)
    for _ in range(len(data)):  # paho's own client reads one packet per pass
        client.loop_read()
    client._sock = None
    ours.close()
    broker.close()
    return got + [tuple(p["packet"] for p in client._out_packet)]


@pytest.mark.parametrize("manual_ack", [False, True])
def test_a_received_publish_is_handed_on_exactly_as_paho_does(manual_ack: bool) -> None:
    data = b"".join([
        publish_with(0x30, b"feddst/v1/devices/dev-1/status", None, b"qos0"),
        publish_with(0x31, b"retained", None, b"kept"),  # retain
        publish_with(0x32, b"feddst/v1/runs/r/update/dev-1", 0x1234, bytes(range(256)) * 300),  # QoS 1
        publish_with(0x3A, b"dup", 7, b"again"),  # QoS 1, dup
        publish_with(0x32, b"empty", 65535, b""),
        publish_with(0x30, "t/\u00e9".encode(), None, b"utf-8 topic"),
    ])
    ours = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours", manual_ack=manual_ack)
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho", manual_ack=manual_ack)
    expected = handled_by(paho, data)
    assert len(expected) == 7
    assert handled_by(ours, data) == expected  # same messages, same PUBACKs queued (none with manual_ack)


def test_mqtt5_and_qos2_publishes_take_pahos_own_way() -> None:
    body = struct.pack("!H", 5) + b"topic" + struct.pack("!H", 9) + b"\x00" + b"v5 payload"  # no properties
    v5 = bytes([0x32]) + remaining_length(len(body)) + body
    ours = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours5", protocol=mqtt.MQTTv5)
    got = handled_by(ours, v5)
    assert got[0][:5] == ("topic", b"v5 payload", bytes, 1, 9)
    qos2 = publish_with(0x34, b"two", 3, b"exactly once")
    ours = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours2")
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho2")
    assert handled_by(ours, qos2) == handled_by(paho, qos2)


def test_per_topic_callbacks_and_on_message_errors_behave_as_in_paho() -> None:
    data = publish_with(0x30, b"feddst/v1/devices/dev-1/status", None, b"a") + publish_with(0x30, b"other", None, b"b")
    results = []
    for client in (WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours"),
                   mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho")):
        routed: list[tuple[str, bytes]] = []
        client.message_callback_add("feddst/v1/devices/+/status",
                                    lambda c, u, m, routed=routed: routed.append((m.topic, m.payload)))
        results.append((handled_by(client, data), routed))  # "other" goes to on_message, the status only to routed
    assert results[0] == results[1]
    assert results[0][1] == [("feddst/v1/devices/dev-1/status", b"a")] and len(results[0][0]) == 2

    def failing(c, u, m) -> None:  # noqa: ANN001
        raise ValueError("boom")

    for client in (WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours-err"),
                   mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-err")):
        ours, broker = socket.socketpair()
        ours.setblocking(False)
        client.on_message = failing
        client._sock = ours  # type: ignore[assignment]
        broker.sendall(publish_with(0x30, b"t", None, b"x"))
        with pytest.raises(ValueError, match="boom"):
            client.loop_read()
        client._sock = None
        ours.close()
        broker.close()


@pytest.mark.parametrize("mid", [1, 0x1234, 65535])
def test_a_manual_ack_sends_the_same_puback_as_paho(mid: int) -> None:
    sent = []
    for client in (WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours", manual_ack=True),
                   mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho", manual_ack=True)):
        ours, broker = socket.socketpair()
        client._sock = ours  # type: ignore[assignment]
        assert client.ack(mid, 1) == mqtt.MQTT_ERR_SUCCESS  # no network thread: paho writes it at once
        assert client.ack(mid, 0) == mqtt.MQTT_ERR_SUCCESS  # QoS 0: nothing to acknowledge
        broker.settimeout(1.0)
        sent.append(broker.recv(100))
        client._sock = None
        ours.close()
        broker.close()
    assert sent[0] == sent[1] == struct.pack("!BBH", 0x40, 2, mid)


def test_packets_cut_whole_from_the_buffer_are_handled_as_paho_does() -> None:
    """Every packet after the first of a socket read lies whole in the buffer: 1-, 2- and 3-byte remaining lengths,
    a PUBACK for one of our publishes, a QoS 2 PUBLISH (paho's own handling) and a packet cut off by the read."""
    data = b"".join([
        publish_with(0x30, b"first", None, b"read through paho's way"),
        publish_with(0x30, b"short", None, b"x" * 10),
        publish_with(0x32, b"two-byte-length", 0x0102, b"y" * 300),
        publish_with(0x31, b"three-byte-length", None, b"z" * 20000),
        bytes([0x40, 2, 0, 9]),  # PUBACK of mid 9 (nothing in flight: paho ignores it)
        publish_with(0x34, b"qos2", 3, b"exactly once"),
        publish_with(0x30, b"last", None, b"w" * 60000),  # crosses the first 64 KiB read
    ])
    ours = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours-cut")
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-cut")
    expected = handled_by(paho, data)
    handled = ["first", "short", "two-byte-length", "three-byte-length", "last"]  # QoS 2: on_message at PUBREL
    assert [m[0] for m in expected[:-1]] == handled
    assert handled_by(ours, data) == expected


def test_a_puback_for_our_publish_frees_it_as_in_paho() -> None:
    """A PUBACK for one of the client's QoS 1 publishes: the message is marked published and leaves the
    in-flight set, as paho does (paho's objects for its reason code go to ``on_publish`` only)."""
    states = []
    for client in (WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="ours-pub"),
                   mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pub")):
        ours, broker = socket.socketpair()
        ours.setblocking(False)
        client._sock = ours  # type: ignore[assignment]
        client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
        infos = [client.publish(f"t/{i}", b"payload", qos=1) for i in range(3)]
        broker.recv(1000)
        broker.sendall(bytes([0x40, 2, 0, infos[1].mid]) + bytes([0x40, 2, 0, 200]))  # one of ours, one unknown
        client.loop_read()
        states.append(([info.is_published() for info in infos], sorted(client._out_messages),
                       client._inflight_messages))
        client._sock = None
        ours.close()
        broker.close()
    assert states[0] == states[1] == ([False, True, False], [1, 3], 2)
