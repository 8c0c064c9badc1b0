"""The coordinator's paho client wakes its network thread once per write pass, not once per packet
(``WireCountingClient._packet_queue``): every packet still goes out, in order, from any thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTErrorCode

from cloud.mqtt_link import CoordinatorLink, WireCountingClient
from field_trial.private_mosquitto import PrivateMosquitto


class RecordingPair:
    """Stands in for paho's socket-pair write end: counts the wake-up bytes."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, data: bytes) -> int:
        self.sent += len(data)
        return len(data)

    def close(self) -> None:
        pass


def threaded_client() -> tuple[WireCountingClient, RecordingPair]:
    """A client in loop_start's mode (a network thread set) with a recording wake-up pair, not connected."""
    client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="wakeups")
    pair = RecordingPair()
    client._sockpairW = pair  # type: ignore[assignment]
    client._thread = threading.current_thread()  # type: ignore[assignment]
    return client, pair


def test_packets_queued_between_write_passes_share_one_wakeup() -> None:
    client, pair = threaded_client()
    for mid in range(1, 101):
        assert client._packet_queue(mqtt.PUBLISH, b"packet %d" % mid, mid, 1) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert pair.sent == 1
    assert [p["mid"] for p in client._out_packet] == list(range(1, 101))  # all queued, in order
    assert client._out_packet[0]["to_process"] == len(b"packet 1") and client._out_packet[0]["pos"] == 0


def test_a_packet_queued_after_a_write_pass_began_wakes_the_thread_again() -> None:
    client, pair = threaded_client()
    client._packet_queue(mqtt.PUBLISH, b"a", 1, 1)
    client.loop_write()  # not connected: returns at once, but the pass began
    client._packet_queue(mqtt.PUBLISH, b"b", 2, 1)
    client._packet_queue(mqtt.PUBLISH, b"c", 3, 1)
    assert pair.sent == 2


def test_a_new_socket_pair_gets_its_own_wakeup() -> None:
    client, pair = threaded_client()
    client._packet_queue(mqtt.PUBLISH, b"a", 1, 1)
    fresh = RecordingPair()  # paho made a new pair (reconnect): the byte sent to the old one is gone
    client._sockpairW = fresh  # type: ignore[assignment]
    client._packet_queue(mqtt.PUBLISH, b"b", 2, 1)
    assert (pair.sent, fresh.sent) == (1, 1)


def test_without_a_network_thread_paho_writes_itself() -> None:
    client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="no-thread")
    pair = RecordingPair()
    client._sockpairW = pair  # type: ignore[assignment]
    for mid in (1, 2):
        client._packet_queue(mqtt.PUBLISH, b"x", mid, 1)
    assert pair.sent == 2  # paho's own path, one byte each


@pytest.fixture
def unqueued_mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    """A mosquitto that queues any number of QoS 1 messages for a slow subscriber (its default, 1000, drops
    the rest: 1200 messages to an observer that a loaded machine slows would lose some at the broker)."""
    broker = PrivateMosquitto(tmp_path / "mosquitto", extra_config=["max_queued_messages 0"]).start()
    try:
        yield broker
    finally:
        broker.stop()


def test_publishes_from_several_threads_all_arrive_in_order(unqueued_mosquitto: PrivateMosquitto) -> None:
    mosquitto = unqueued_mosquitto
    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    observer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wakeup-observer")
    observer.on_connect = lambda c, u, f, rc, p: c.subscribe("feddst/v1/wakeups/+", qos=1)
    observer.on_subscribe = lambda *args: subscribed.set()
    observer.on_message = lambda c, u, m: got.put(bytes(m.payload))
    observer.connect("127.0.0.1", mosquitto.port)
    observer.loop_start()
    link = CoordinatorLink(queue.Queue(), host="127.0.0.1", port=mosquitto.port, client_id="coordinator-wakeups")
    try:
        assert subscribed.wait(10) and link.connect(10)
        per_thread, threads = 300, 4

        def publish(k: int) -> None:
            for i in range(per_thread):
                assert link.publish(f"feddst/v1/wakeups/{k}", b"%d %d" % (k, i), qos=1).ok

        workers = [threading.Thread(target=publish, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        received: list[bytes] = []
        try:
            while len(received) < per_thread * threads:
                received.append(got.get(timeout=30))
        except queue.Empty:
            pytest.fail(f"{len(received)} of {per_thread * threads} publishes reached the observer in 30 s")
        for k in range(threads):
            mine = [int(r.split()[1]) for r in received if r.split()[0] == b"%d" % k]
            assert mine == list(range(per_thread))
    finally:
        link.close()
        observer.loop_stop()
        observer.disconnect()
