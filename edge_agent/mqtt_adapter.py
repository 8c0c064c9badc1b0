"""The agent's one MQTT adapter (paho-mqtt v2): connection, will, reconnects, publishing.

Protocol: MQTT 5 with clean_start=False and a session expiry; with ``--mqtt-protocol auto`` (the
default) a broker that refuses MQTT 5 or does not answer an MQTT 5 CONNECT (the embedded amqtt
broker of ``feddst demo`` does either, depending on the CONNECT's content) makes the agent
reconnect with MQTT 3.1.1 and clean_session=False, the 3.1.1 persistent session. Once an MQTT 5
connection has succeeded, the agent never falls back.

Threading contract: paho's network thread runs the callbacks, which only wrap what happened in
a small event object and put it on ``events`` (a ``queue.Queue``) for the agent's main loop:
:class:`LinkUp`, :class:`LinkDown`, :class:`LinkRefused`, :class:`Inbound`. The main loop calls
:meth:`DeviceLink.subscribe` / :meth:`DeviceLink.publish` (thread-safe in paho).

Errors: misuse (bad topic, bad QoS, calling before :meth:`start`) raises; network trouble never
raises from publish/subscribe, it returns False (and is logged), and the caller retries later.

Reconnects: paho reconnects by itself with exponential backoff (``reconnect_min_s`` doubling up
to ``reconnect_max_s``); on every disconnect the adapter re-draws the starting delay with
jitter (x0.5..x1.5) so a fleet dropped by one broker restart does not reconnect in lock-step.
The session is persistent (clean_start=False, session expiry), so QoS 1 messages published
while a device is briefly away are delivered when it comes back; the agent still re-subscribes
on every connect, since a restarted broker without persistence forgets sessions.

Wire bytes: :attr:`DeviceLink.wire_sent_bytes` / :attr:`DeviceLink.wire_received_bytes` count
every byte written to and read from the broker socket over this agent's life (all MQTT packets:
CONNECT, fixed headers, topics, properties, payloads, PUBACKs, PINGs; under TLS the MQTT bytes,
not the TLS records), across reconnects and a protocol fall-back: the link shaper
(:mod:`edge_agent.link_shaping`), which every socket byte passes through, counts them.
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import link_shaping
from edge_agent.config import AgentSettings
from protocol.endpoint import disable_nagle

log = logging.getLogger("feddst.agent.mqtt")

# CONNACK reason codes that retrying cannot fix (MQTT v5 spec, 3.2.2.2).
PERMANENT_REFUSALS = {
    0x84: "the broker does not support this MQTT version (try --mqtt-protocol 3.1.1)",
    0x85: "the broker rejected the client id (= device id)",
    0x86: "bad user name or password: check --username/--password (FEDDST_PASSWORD)",
    0x87: "not authorized: check the broker's password file and ACL for this device",
    0x8A: "this client is banned by the broker",
    0x8C: "bad authentication method",
}


@dataclass(frozen=True)
class LinkUp:
    """Connected (again); ``session_present`` tells whether the broker kept our session."""

    session_present: bool


@dataclass(frozen=True)
class LinkDown:
    """The connection dropped or a connection attempt failed; paho is retrying.

    ``before_connack``: the broker accepted TCP but closed it without answering CONNECT (what
    an MQTT-3.1.1-only broker such as amqtt does with an MQTT 5 CONNECT carrying a will)."""

    reason: str
    before_connack: bool = False


@dataclass(frozen=True)
class LinkRefused:
    """The broker refused the connection; ``permanent`` refusals will not fix themselves.

    ``code`` is the MQTT v5 CONNACK reason code (0x84: the broker does not speak MQTT 5)."""

    reason: str
    permanent: bool
    code: int


@dataclass(frozen=True)
class PublishRefused:
    """The broker answered a QoS 1 publish with a failure (MQTT 5), e.g. not authorised by its ACL."""

    topic: str
    reason: str


@dataclass(frozen=True)
class Inbound:
    """One received MQTT message (a whole protocol message or one chunk of one)."""

    topic: str
    payload: bytes


LinkEvent = LinkUp | LinkDown | LinkRefused | PublishRefused | Inbound


class DeviceLink:
    """One persistent MQTT v5 session for one device."""

    def __init__(self, settings: AgentSettings, will_payload: bytes | Callable[[], bytes], will_topic: str,
                 events: queue.Queue, rng: random.Random | None = None) -> None:
        """``will_payload``: the last will, or a callable composing it afresh before every connection
        attempt (called on paho's thread), so each connection's will carries a new sequence number."""
        self.settings = settings
        self.events = events
        self._will = (will_topic, will_payload)
        self._rng = rng or random.Random()
        self._started = False
        self._connected = False
        self._attempt_started: float | None = None  # when a CONNECT went out on an open socket, unanswered
        self._v5_confirmed = False
        # the fall-back decision (main loop) and a v5 CONNACK (paho's thread) can meet at the timeout: one wins
        self._protocol_lock = threading.Lock()
        self._retiring: mqtt.Client | None = None  # the v5 client a fall-back is replacing: its CONNACK is moot
        self._topics_by_mid: dict[int, str] = {}  # in-flight QoS 1 publishes, to name refused ones
        self.protocol = "3.1.1" if settings.mqtt_protocol == "3.1.1" else "5"
        # every MQTT byte goes through the shaper: wire counters, uplink cap, trial emulation (link_shaping)
        self.shaper = link_shaping.LinkShaper(settings.device_id, settings.link_limits, settings.wire_counters_file)
        self.client = self._build_client()

    @property
    def wire_sent_bytes(self) -> int:
        return self.shaper.counters.sent_bytes

    @property
    def wire_received_bytes(self) -> int:
        return self.shaper.counters.received_bytes

    def _build_client(self) -> mqtt.Client:
        settings = self.settings
        if self.protocol == "5":
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.mqtt_client_id,
                                 protocol=mqtt.MQTTv5, reconnect_on_failure=True)
        else:  # MQTT 3.1.1: clean_session=False is the persistent session (kept until the broker drops it)
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.mqtt_client_id,
                                 protocol=mqtt.MQTTv311, clean_session=False, reconnect_on_failure=True)
        client.username_pw_set(settings.mqtt_username, settings.password)
        if callable(self._will[1]):
            client.on_pre_connect = self._on_pre_connect
        else:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        if settings.broker_address.tls:
            client.tls_set(ca_certs=settings.ca_file, certfile=settings.tls_cert_file, keyfile=settings.tls_key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
            if settings.tls_insecure:
                client.tls_insecure_set(True)
        client.max_inflight_messages_set(64)
        link_shaping.install(client, self.shaper)
        self._jitter_reconnect_delay(client)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # ----------------------------------------------------------------- lifecycle (main thread)
    def start(self) -> None:
        """Start connecting in the background (returns at once; :class:`LinkUp` follows)."""
        if self._started:
            raise RuntimeError("DeviceLink.start() called twice")
        address = self.settings.broker_address
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.settings.session_expiry_s
            self.client.connect_async(address.host, address.port, keepalive=self.settings.keepalive_s,
                                      clean_start=False, properties=properties)
        else:
            self.client.connect_async(address.host, address.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()
        self._started = True

    @property
    def can_fall_back(self) -> bool:
        """True while ``--mqtt-protocol auto`` is trying MQTT 5 and no v5 connection has succeeded yet."""
        return self.settings.mqtt_protocol == "auto" and self.protocol == "5" and not self._v5_confirmed

    def connack_overdue(self, timeout_s: float) -> bool:
        """True when a CONNECT has waited more than ``timeout_s`` for the broker's answer."""
        started = self._attempt_started
        return started is not None and time.monotonic() - started > timeout_s

    def fall_back_to_mqtt311(self) -> bool:
        """The broker does not speak MQTT 5 (e.g. the embedded amqtt broker): reconnect with 3.1.1. False (and
        nothing changes) when the broker's MQTT 5 CONNACK won the race against the caller's timeout: the v5
        connection stands. Raises RuntimeError unless ``--mqtt-protocol auto`` started on MQTT 5."""
        if self.settings.mqtt_protocol != "auto" or self._retiring is not None:
            raise RuntimeError("fall_back_to_mqtt311() needs --mqtt-protocol auto and a v5 client")
        with self._protocol_lock:
            if not self.can_fall_back:
                return False
            self.protocol, self._retiring = "3.1.1", self.client
        self.client.loop_stop()  # outside the lock: paho's thread may be waiting for it in _on_connect
        self._started = False
        self._connected = False
        self.protocol = "3.1.1"
        self._attempt_started = None
        self.client = self._build_client()
        self.start()
        return True

    def stop(self, timeout_s: float = 3.0) -> None:
        """Wait up to ``timeout_s`` seconds for in-flight QoS 1 publishes to be acknowledged (while
        connected), disconnect cleanly (no will), stop the network thread."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout_s
        while self._connected and self._topics_by_mid and time.monotonic() < deadline:
            time.sleep(0.02)  # PUBACKs arrive on paho's thread, which pops _topics_by_mid
        try:
            if self._connected:
                self.client.disconnect()
        finally:
            self.client.loop_stop()
            self.shaper.write_counters()
            self._started = False
            self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    # ----------------------------------------------------------------- operations (main thread)
    def subscribe(self, subscriptions: Iterable[tuple[str, int]]) -> bool:
        """Subscribe to ``(topic filter, qos)`` pairs; False on network trouble."""
        self._require_started()
        pairs = list(subscriptions)
        result, _mid = self.client.subscribe(pairs)
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("subscribe failed (%s); will retry on the next connect", mqtt.error_string(result))
            return False
        return True

    def unsubscribe(self, topic_filters: Iterable[str]) -> bool:
        """Unsubscribe from topic filters; False on network trouble (harmless: the next message is ignored)."""
        self._require_started()
        result, _mid = self.client.unsubscribe(list(topic_filters))
        return result == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Publish one payload; returns the message info, or None when not connected or paho refused it."""
        self._require_started()
        if not self._connected:
            log.debug("not connected: not publishing %d bytes on %s", len(payload), topic)
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish on %s failed: %s", topic, mqtt.error_string(info.rc))
            return None
        if qos > 0 and len(self._topics_by_mid) < 10_000:
            self._topics_by_mid[info.mid] = topic
        return info

    def publish_all(self, topic: str, packets: list[bytes], qos: int) -> list[mqtt.MQTTMessageInfo] | None:
        """Publish the packets of one (possibly chunked) message in order; None if any failed."""
        infos = []
        for packet in packets:
            info = self.publish(topic, packet, qos)
            if info is None:
                return None
            infos.append(info)
        return infos

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("DeviceLink is not started: call start() first")

    # ----------------------------------------------------------------- callbacks (paho's thread)
    def _jitter_reconnect_delay(self, client: mqtt.Client) -> None:
        low = self.settings.reconnect_min_s * self._rng.uniform(0.5, 1.5)
        client.reconnect_delay_set(min_delay=low, max_delay=max(low, self.settings.reconnect_max_s))  # type: ignore[arg-type]

    def _on_pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        topic, compose = self._will
        assert callable(compose)
        client.will_set(topic, compose(), qos=1, retain=True)

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        # TCP (and TLS) are up and CONNECT is about to go out: from now on only the broker's answer counts.
        self._attempt_started = time.monotonic()
        disable_nagle(sock)  # small writes (PUBACK, SUBSCRIBE) go out at once, not ~40 ms later

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, properties: Properties | None) -> None:
        self._attempt_started = None
        if reason_code.is_failure:
            self._connected = False
            value = int(reason_code.value)
            permanent = value in PERMANENT_REFUSALS
            self.events.put(LinkRefused(PERMANENT_REFUSALS.get(value, str(reason_code)), permanent, value))
            return
        with self._protocol_lock:
            if client is self._retiring:
                return  # the fall-back to 3.1.1 was decided first: this client is being replaced
            self._connected = True
            self._v5_confirmed = self._v5_confirmed or self.protocol == "5"
        self.events.put(LinkUp(bool(flags.session_present)))

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._attempt_started = None
        self.events.put(LinkDown("connection attempt failed (broker unreachable?)"))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason_code: mqtt.ReasonCode, properties: Properties | None) -> None:
        before_connack = self._attempt_started is not None
        self._attempt_started = None
        self._connected = False
        self._jitter_reconnect_delay(client)
        self.events.put(LinkDown(str(reason_code), before_connack))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: mqtt.ReasonCode,
                    properties: Properties | None) -> None:
        topic = self._topics_by_mid.pop(mid, "?")
        if reason_code.is_failure:
            self.events.put(PublishRefused(topic, str(reason_code)))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.events.put(Inbound(message.topic, bytes(message.payload)))
