"""The coordinator's receive path under a burst (real mosquitto): the bounded callback -> decoder queue
drops and counts what does not fit, paho's network thread never blocks (pings, PUBACKs and
reconnects go on while the decoder is stuck), and the count is exported on ``/metrics``."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from coordinator_harness import make_coordinator, wait_until
from fastapi.testclient import TestClient

from cloud.app import create_app
from cloud.mqtt_link import CoordinatorLink
from protocol import topics

BURST_TOPIC = topics.update("run-burst", "dev-burst")  # a topic the coordinator subscribes to


class Publisher:
    """A plain paho client that publishes a burst of undecodable packets."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"burst-{id(self)}")
        self.client.max_inflight_messages_set(0)  # no client-side flow control: as fast as the socket goes
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def burst(self, count: int, qos: int = 1) -> None:
        infos = [self.client.publish(BURST_TOPIC, b"not a protocol message %06d" % i, qos=qos) for i in range(count)]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Observer:
    """Receives what the link publishes on one topic (proof the link's connection is alive)."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: queue.Queue[bytes] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"observer-{id(self)}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = lambda c, u, m: self.got.put(bytes(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def accounted(link: CoordinatorLink, inbound: queue.Queue) -> int:
    """Packets the stuck link has seen: dropped, queued, in inbound, and the one the decoder holds (blocked on
    the full inbound) once inbound has its item."""
    return link.dropped_packets + link.raw.qsize() + inbound.qsize() + (1 if inbound.full() else 0)


@pytest.fixture
def stuck_link(mosquitto):
    """A link whose decoder is stuck: its inbound queue (1 slot) is never consumed after the connect event."""
    inbound: queue.Queue = queue.Queue(maxsize=1)
    link = CoordinatorLink(inbound, host="127.0.0.1", port=mosquitto.port, client_id="coordinator-burst",
                           raw_queue_packets=8, keepalive_s=2)
    assert link.connect(10)
    assert inbound.get(timeout=5).kind == "connected"
    try:
        yield link, inbound
    finally:
        link.close()


def test_a_burst_beyond_the_bound_is_dropped_and_counted(mosquitto, stuck_link) -> None:
    link, inbound = stuck_link
    publisher = Publisher(mosquitto.port)
    try:
        publisher.burst(300)
    finally:
        publisher.close()
    # One item waits in inbound, one in the decoder's hand, at most 8 in the queue; the rest dropped. How many of
    # the 8 are still queued depends on whether the decoder took its two before the burst filled the queue (paho's
    # thread reads all buffered packets per pass): 290-292 dropped, every packet accounted for.
    wait_until(lambda: accounted(link, inbound) == 300, 20, f"300 accounted for (dropped {link.dropped_packets})")
    assert 290 <= link.dropped_packets <= 292 and inbound.qsize() == 1 and 6 <= link.raw.qsize() <= 8
    assert inbound.get_nowait().kind == "invalid"  # the first packet, decoded (undecodable) and handed on


def test_the_network_thread_keeps_pinging_acking_and_reconnecting_while_the_decoder_is_stuck(mosquitto,
                                                                                          stuck_link) -> None:
    link, inbound = stuck_link
    publisher = Publisher(mosquitto.port)
    try:
        publisher.burst(100)  # every QoS 1 packet was PUBACKed by the link's network thread
    finally:
        publisher.close()
    wait_until(lambda: accounted(link, inbound) == 100, 20, f"the queue full (dropped {link.dropped_packets})")
    received = link.wire_received_bytes
    time.sleep(5.0)  # 2.5 keepalives of 2 s: a blocked network thread would be cut off by the broker
    assert link.wire_received_bytes >= received + 2 * 2  # at least two 2-byte PINGRESPs
    observer = Observer(mosquitto.port, "feddst/v1/probe")
    try:
        result = link.publish("feddst/v1/probe", b"still here", qos=1)
        assert result.ok
        assert observer.got.get(timeout=10) == b"still here"
    finally:
        observer.close()

    mosquitto.restart(down_s=0.5)  # the disconnect and connect callbacks must not wait for the full queue
    wait_until(lambda: link.disconnects >= 1 and link.connected.is_set(), 30, "the link reconnected")
    assert link.connects == 2


def test_dropped_packets_are_exported_on_metrics(mosquitto, tmp_path) -> None:
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state", mqtt_receive_queue_packets=1)
    publisher = Publisher(mosquitto.port)
    try:
        publisher.burst(3000, qos=0)
        link = coordinator.link
        # Every packet is either decoded (counted invalid by the main loop) or dropped at the queue.
        wait_until(lambda: coordinator.counters["invalid_messages"] + link.dropped_packets == 3000, 30,
                   "every packet accounted for")
        assert link.dropped_packets > 0, "a 3000-packet burst into a 1-packet queue dropped nothing"
        with TestClient(create_app(coordinator=coordinator)) as client:
            body = client.get("/metrics").text
        assert f"feddst_mqtt_dropped_packets_total {float(link.dropped_packets)}" in body
        assert "feddst_broker_disconnects_total 0.0" in body
    finally:
        publisher.close()
        coordinator.close()
