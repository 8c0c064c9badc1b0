"""``--mqtt-protocol auto``: the main loop's CONNACK timeout and the broker's MQTT 5 CONNACK (paho's thread) can
meet. Whichever is first decides; the loser must neither crash the agent nor undo the decision.

Seen in ``bench/live_overhead.py`` (2026-12-03, 20 agents importing torch on 2 cores): the CONNACK came just as the
3 s timeout fired, between ``_tick``'s ``can_fall_back`` check and ``fall_back_to_mqtt311``, which then raised and the
agent exited with code 1."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
from brokers import free_port
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import AgentSettings
from edge_agent.mqtt_adapter import DeviceLink, LinkUp
from protocol import topics


def new_link(events: queue.Queue) -> DeviceLink:
    # nothing listens on the port: the link is never meant to connect here
    settings = AgentSettings(device_id="dev-a", broker_url=f"mqtt://127.0.0.1:{free_port()}", mqtt_protocol="auto",
                             insecure_unsigned_coordinator=True)
    return DeviceLink(settings, b"offline", topics.status("dev-a"), events)


def deliver_connack(link: DeviceLink, client: mqtt.Client) -> None:
    """What paho's thread calls when a CONNACK (success) arrives on ``client``."""
    link._on_connect(client, None, mqtt.ConnectFlags(session_present=False),
                     ReasonCode(PacketTypes.CONNACK, "Success"), None)


def drain(events: queue.Queue) -> list[object]:
    """Everything queued so far."""
    taken = []
    while not events.empty():
        taken.append(events.get_nowait())
    return taken


def test_a_v5_connack_first_makes_the_late_fall_back_a_no_op() -> None:
    events: queue.Queue = queue.Queue()
    link = new_link(events)
    v5_client = link.client
    assert link.can_fall_back  # what _tick saw ...
    deliver_connack(link, v5_client)  # ... before the CONNACK landed on paho's thread
    assert link.fall_back_to_mqtt311() is False  # main: raised RuntimeError here
    assert link.protocol == "5" and link.client is v5_client and link.connected
    assert isinstance(events.get_nowait(), LinkUp)


def test_a_fall_back_first_ignores_the_replaced_clients_late_connack() -> None:
    events: queue.Queue = queue.Queue()
    link = new_link(events)
    v5_client = link.client
    try:
        assert link.fall_back_to_mqtt311() is True
        assert link.protocol == "3.1.1" and link.client is not v5_client
        deliver_connack(link, v5_client)  # the old client's answer, too late
        assert not link.connected and not link.can_fall_back
        # nothing listens on the port, so the 3.1.1 client's own attempts may already have queued LinkDowns
        assert not [e for e in drain(events) if isinstance(e, LinkUp)]  # no LinkUp for a client that is gone
        deliver_connack(link, link.client)  # the 3.1.1 client's own CONNACK counts
        assert link.connected and [e for e in drain(events) if isinstance(e, LinkUp)]
    finally:
        link.stop(timeout_s=0.1)
