"""The coordinator's receive queue is bounded in bytes (``receive_queue_bytes``) and loses nothing (real mosquitto).

A link whose decoder is stuck (its inbound queue never consumed) is sent 12.5 MiB of QoS 1 packets against a
1 MiB bound: the queue between paho's callback and the decoder never holds more than the bound plus the one
packet that crossed it (the broker holds the rest: PUBACKs wait for the decoder, and the network thread stops
reading while the queue is full), and once the decoder runs again every packet arrives, none dropped. Both
with a broker that does not wait for acks (``max_inflight_messages 0``, as the fleet bench runs mosquitto:
only the read pause bounds it) and with an MQTT 5 link (its ``ReceiveMaximum`` and the manual PUBACKs).
"""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt
import pytest
from brokers import MosquittoBroker
from coordinator_harness import wait_until

from cloud.mqtt_link import CoordinatorLink
from protocol import topics

PACKET = 64 * 1024
PACKETS = 200
BOUND = 1024 * 1024
TOPIC = topics.update("run-bound", "dev-bound")  # a topic the coordinator subscribes to


def _publish_all(port: int) -> None:
    """PACKETS distinct QoS 1 packets of PACKET bytes, each acknowledged by the broker."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bound-publisher")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(TOPIC, b"%06d" % i + bytes(PACKET - 6), qos=1) for i in range(PACKETS)]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize(("protocol", "broker_lines"), [
    ("3.1.1", ["max_inflight_messages 0", "max_queued_messages 0"]),  # the broker never waits for PUBACKs
    ("5", ["max_queued_messages 0"]),
], ids=["mqtt311-unlimited-inflight", "mqtt5-receive-maximum"])
def test_the_receive_queue_stays_within_its_byte_bound_and_every_packet_arrives(tmp_path, protocol,
                                                                                broker_lines) -> None:
    broker = MosquittoBroker(tmp_path / "mosquitto", extra_config=broker_lines).start()
    inbound: queue.Queue = queue.Queue(maxsize=1)
    link = CoordinatorLink(inbound, host="127.0.0.1", port=broker.port, client_id="coordinator-bound",
                           protocol=protocol, receive_queue_bytes=BOUND, max_packet=PACKET)
    peak_packets, done = [0], threading.Event()

    def sample() -> None:  # the queue's depth seen from outside the link, every millisecond
        while not done.is_set():
            peak_packets[0] = max(peak_packets[0], link.raw.qsize())
            done.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        assert link.connect(10)
        assert inbound.get(timeout=5).kind == "connected"  # from now on the decoder is stuck (nobody reads)
        sampler.start()
        _publish_all(broker.port)
        wait_until(lambda: link.raw.qsize() >= BOUND // PACKET, 20, "the queue filled to its bound")
        done.wait(1.0)  # the broker had a second to push more
        items = []
        while len(items) < PACKETS:  # the decoder runs again
            items.append(inbound.get(timeout=20))
        done.set()
        sampler.join()
        within = BOUND // PACKET + 1  # the bound, plus the one packet that crossed it
        assert peak_packets[0] <= within, f"{peak_packets[0]} packets of {PACKET} bytes queued (bound {BOUND})"
        assert link.peak_queued_bytes <= BOUND + PACKET
        assert [item.kind for item in items] == ["invalid"] * PACKETS  # not protocol messages: all delivered
        assert sorted(item.size for item in items) == [PACKET] * PACKETS
        assert link.dropped_packets == 0 and link.queued_bytes == 0
        with pytest.raises(queue.Empty):  # each exactly once (no reconnect: nothing sent again)
            inbound.get(timeout=0.5)
    finally:
        done.set()
        link.close()
        broker.stop()
