"""The coordinator's one MQTT adapter (paho-mqtt v2 callbacks).

Callbacks only reassemble, decode and enqueue: every received message becomes an
:class:`Inbound` item on the queue the coordinator's main loop consumes. Publishing checks every
``MQTTMessageInfo.rc``; network trouble is returned as a status (``PublishResult.ok``), misuse
(publishing before ``connect``) raises.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from protocol import (
    ChunkReassembler,
    DecodedMessage,
    ProtocolError,
    decode_message_with_envelope,
    split_into_chunks,
    topics,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbound:
    """One event for the main loop: a decoded message, an undecodable one, or a connection change."""

    kind: str  # "message" | "invalid" | "connected" | "disconnected"
    topic: str = ""
    decoded: DecodedMessage | None = None
    size: int = 0  # bytes of the whole (reassembled) message
    retained: bool = False
    error: str = ""
    received_at: float = 0.0


@dataclass(frozen=True)
class TlsFiles:
    """TLS material for an ``mqtts://`` connection (PEM paths; None: system CA store / no client certificate)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class PublishResult:
    ok: bool
    nbytes: int  # bytes of the message (chunk headers excluded)
    detail: str = ""


class CoordinatorLink:
    """Connects, subscribes to :func:`protocol.topics.coordinator_subscriptions` and feeds ``inbound``.

    ``count_bytes(direction, nbytes)`` (optional) is told every MQTT payload received
    (``"received"``) or handed to paho for publishing (``"sent"``), chunk headers included."""

    def __init__(self, inbound: queue.Queue, *, host: str, port: int, client_id: str = "coordinator",
                 username: str | None = None, password: str | None = None, protocol: str = "3.1.1",
                 tls: bool = False, max_packet: int = 128 * 1024,
                 key_lookup: Callable[[str], bytes | None] | None = None,
                 authenticate: Callable[[], bool] | None = None,
                 tls_files: TlsFiles | None = None,
                 max_pending_bytes: int = 512 * 1024 * 1024,
                 count_bytes: Callable[[str, int], None] | None = None):
        """``key_lookup``: sender id -> HMAC key (None: reject); ``authenticate`` (asked per message, default
        always): whether to verify at all; ``tls_files``: private CA and client certificate for ``tls``."""
        self.inbound = inbound
        self._count_bytes = count_bytes or (lambda direction, nbytes: None)
        self.host, self.port = host, port
        self.max_packet = max_packet
        self.key_lookup = key_lookup
        self.authenticate = authenticate
        self.reassembler = ChunkReassembler(timeout_s=120.0, max_pending_bytes=max_pending_bytes)
        self.connected = threading.Event()
        self._started = False
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        # MQTT 5 sets clean_start per connect(); 3.1.1 takes a persistent session here.
        clean_session = None if version == mqtt.MQTTv5 else False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                                  clean_session=clean_session)
        self._v5 = version == mqtt.MQTTv5
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            files = tls_files or TlsFiles()
            self.client.tls_set(ca_certs=files.ca_file, certfile=files.cert_file, keyfile=files.key_file)
        self.client.max_inflight_messages_set(64)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle ------------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> bool:
        """Connect and start the network thread; True once the broker accepted the connection."""
        try:
            if self._v5:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 3600
                self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
            else:
                self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            log.warning("cannot reach MQTT broker %s:%s: %s", self.host, self.port, exc)
            return False
        self.client.loop_start()
        self._started = True
        return self.connected.wait(timeout_s)

    def close(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False

    # --- callbacks (network thread): decode and enqueue only ------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        result, _ = client.subscribe(topics.coordinator_subscriptions())
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("subscribe failed: %s", mqtt.error_string(result))
        self.connected.set()
        self.inbound.put(Inbound("connected", received_at=time.time()))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connected.clear()
        self.inbound.put(Inbound("disconnected", error=str(reason_code), received_at=time.time()))

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        now = time.time()
        self._count_bytes("received", len(message.payload))
        try:
            whole = self.reassembler.add(message.payload, source=message.topic)
            if whole is None:
                return
            verify = self.key_lookup is not None and (self.authenticate is None or self.authenticate())
            decoded = decode_message_with_envelope(whole, self.key_lookup if verify else None)
        except ProtocolError as exc:
            self.inbound.put(Inbound("invalid", topic=message.topic, size=len(message.payload),
                                     error=f"{type(exc).__name__}: {exc}", received_at=now))
            return
        self.inbound.put(Inbound("message", topic=message.topic, decoded=decoded, size=len(whole),
                                 retained=bool(message.retain), received_at=now))

    # --- publishing -----------------------------------------------------------------------------

    def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> PublishResult:
        """Publish one encoded message (chunked when larger than ``max_packet``)."""
        if not self._started:
            raise RuntimeError("publish before connect()")
        for packet in split_into_chunks(data, self.max_packet):
            info = self.client.publish(topic, packet, qos=qos, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return PublishResult(False, len(data), mqtt.error_string(info.rc))
            self._count_bytes("sent", len(packet))
        return PublishResult(True, len(data))
