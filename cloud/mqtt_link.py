"""The coordinator's one MQTT adapter (paho-mqtt v2 callbacks).

Threads: paho's network thread runs the callbacks, which only hand the raw packet bytes to a
bounded queue (``put_nowait``; when it is full the packet is dropped and counted in
``dropped_packets``, so the network thread never blocks); one decoder thread reassembles chunks,
decodes and verifies (HMAC) and puts each :class:`Inbound` item on the queue the coordinator's
main loop consumes.

Receive bound (bytes, ``receive_queue_bytes``, setting ``mqtt_receive_queue_bytes``): the broker
holds a backlog, not the coordinator's RAM. paho runs with ``manual_ack``: a QoS 1 packet that
arrives while the queue is within the bound is PUBACKed at once (by the network thread, as paho
would), one that does not fit is *held*: PUBACKed only when the decoder takes it (a dropped one at
once), so a broker that limits the messages in flight to a client (mosquitto's
``max_inflight_messages``, default 20; an MQTT 5 ``ReceiveMaximum``, which the link sends:
``receive_queue_bytes // max_packet``) sends no more until the decoder caught up, and a held packet
is sent again on reconnect when the connection dropped (the persistent session). (Acking every packet
from the decoder thread instead cost one wake-up write to paho's socket pair per packet there: 1.0 s
of its profiled time in a 1000-agent round.) For a broker that does not wait for acks
(``max_inflight_messages 0``) the network thread also stops reading the socket while the queue holds
more than ``receive_queue_bytes`` (TCP back-pressure; it waits at most 50 ms per loop pass, so it
still sends PUBACKs, pings and publishes in between, and reads again as soon as the decoder made
room): the queue never holds more than the bound plus the one packet that crossed it and the packets
left in the client's read buffer (at most one socket read, ``cloud.paho_client.READ_SIZE``; ``peak_queued_bytes``).
The broker must then be able to hold the backlog (mosquitto's ``max_queued_messages`` and
``max_queued_bytes`` per client; beyond them it drops QoS 1 messages).

Publishing (the outbox): every chunk of a message is handed to paho, which keeps QoS 1 packets
in its own unbounded outbox while the broker is away and sends them, in order, on reconnect; a
refused chunk never stops the remaining ones, so a message is never left as a prefix. Network
trouble is returned as a status (``PublishResult.ok``: False when some chunk only waits for the
reconnect); misuse (publishing before ``connect``) raises.

The link starts connecting in the background and keeps retrying, so the coordinator can start
while the broker is down (``connected`` tells). The callbacks log the broker's loss and return
themselves and count them (``connects``, ``disconnects``); the matching ``Inbound`` events are
handed on with ``put_nowait`` too (a full inbound queue drops them and counts ``dropped_events``),
so no callback ever waits for the coordinator's main loop. The decoder thread waits for room in
``inbound`` (back-pressure lands on the bounded raw queue, never on the network thread) and stops
on :meth:`close` even while ``inbound`` stays full.

Wire bytes: ``wire_sent_bytes`` / ``wire_received_bytes`` count every byte paho writes to or
reads from the socket (all MQTT packets: fixed headers, topics, properties, payloads, acks, pings).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from cloud.handoff_queue import HandOffQueue
from cloud.paho_client import WireCountingClient
from protocol import (
    ChunkReassembler,
    DecodedMessage,
    ProtocolError,
    decode_message_with_envelope,
    split_into_chunks,
    topics,
)
from protocol.endpoint import disable_nagle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbound:
    """One event for the main loop: a decoded message, an undecodable one, or a connection change.

    ``decoded.envelope.payload`` is empty for a message of more than ``RELEASE_BYTES``: its bytes are let go
    once decoded (the decoded values are copies), so an update waiting in ``inbound`` holds its values, not
    also its 163 KB of wire bytes."""

    kind: str  # "message" | "invalid" | "connected" | "disconnected"
    topic: str = ""
    decoded: DecodedMessage | None = None
    size: int = 0  # bytes of the whole (reassembled) message
    retained: bool = False
    error: str = ""
    received_at: float = 0.0
    session_present: bool = False  # "connected": the broker still had this client's session (subscriptions, queue)


@dataclass(frozen=True)
class TlsFiles:
    """TLS material for an ``mqtts://`` connection (PEM paths; None: system CA store / no client certificate)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class LinkCounters:
    """Cumulative counts the coordinator's MQTT link keeps itself (``/metrics`` reads them when scraped)."""

    wire_received_bytes: int
    wire_sent_bytes: int
    dropped_packets: int
    broker_disconnects: int
    payload_received_bytes: int = 0  # MQTT payloads received / handed to paho for publishing, chunk headers in
    payload_sent_bytes: int = 0


@dataclass(frozen=True)
class PublishResult:
    """Whether paho took every packet of a message (``detail``: why not; paho queues refused QoS >= 1
    packets and sends them on reconnect)."""

    ok: bool
    detail: str = ""


MAX_INFLIGHT = 0
"""QoS 1 messages the coordinator's client keeps in flight at once; 0: no limit, so a round's per-device
Tasks (one per selected device, all handed to paho when the round opens) leave at once instead of
waiting for PUBACKs queued behind the devices' update traffic on the inbound stream. Measured at 10 000
devices (docs/results.md, "Fleet scale, per-device Task"): with 64 the last Task reached the fakes 32.5 s
into the round; with 65535 paho re-scanned every unacknowledged message on each PUBACK (O(N^2): its network
thread's CPU doubled); 0 skips that scan. paho keeps every unacknowledged message either way (queue
unbounded); packet ids are 16 bits, so more than 65 535 messages in flight at once would reuse ids."""


@dataclass(slots=True)
class _RawPacket:  # one per received packet: a slots class is made in a fifth of a frozen dataclass's time
    topic: str
    payload: bytes
    retained: bool
    received_at: float
    mid: int = 0
    qos: int = 0
    connection: int = 0  # the link's ``connects`` when it arrived: a PUBACK only goes back on that connection
    held: bool = False  # arrived beyond the byte bound: PUBACKed when the decoder takes it


SEND_CHUNK_VERSION = 1
"""Chunking version of what the coordinator sends (models, final models): 1, which agents from before chunking
version 2 read too (it hashes the whole message once per broadcast). It reads both versions; devices send 2."""

_NO_BYTES = memoryview(b"")
RELEASE_BYTES = 4096
"""Messages larger than this let go of their wire bytes once decoded (see :class:`Inbound`); a heartbeat's
hundred bytes are not worth the 4 us of copying its envelope."""

READ_PAUSE_S = 0.05
"""Longest wait of the network thread for room in the receive queue per loop pass (then it sends and pings)."""


class CoordinatorLink:
    """Connects, subscribes to :func:`protocol.topics.coordinator_subscriptions` and feeds ``inbound``.

    ``payload_received_bytes`` / ``payload_sent_bytes`` count every MQTT payload received or handed to paho
    for publishing, chunk headers included (in :meth:`counters`; plain integers: a Prometheus counter's
    ``inc`` per received packet cost the network thread ~4 us each)."""

    def __init__(self, inbound: HandOffQueue[Inbound] | queue.Queue[Inbound], *, host: str, port: int,
                 client_id: str = "coordinator",
                 username: str | None = None, password: str | None = None, protocol: str = "3.1.1",
                 tls: bool = False, max_packet: int = 128 * 1024,
                 key_lookup: Callable[[str], bytes | None] | None = None,
                 authenticate: Callable[[], bool] | None = None,
                 tls_files: TlsFiles | None = None,
                 max_pending_bytes: int = 512 * 1024 * 1024, raw_queue_packets: int = 65536,
                 receive_queue_bytes: int = 64 * 1024 * 1024,
                 keepalive_s: int = 30,
                 key_snapshot: Callable[[], Callable[[str], bytes | None] | None] | None = None):
        """``key_lookup``: sender id -> HMAC key (None: reject); ``authenticate`` (asked per message, default
        always): whether to verify at all; ``key_snapshot`` (replaces both): asked for the key lookup to
        verify with (None: no verification) at most once per run of queued packets, see :meth:`_verifier`;
        ``tls_files``: private CA and client certificate for ``tls``;
        ``raw_queue_packets``: bound of the callback -> decoder queue (packets; beyond it: dropped, counted);
        ``receive_queue_bytes``: bound of the same queue in payload bytes (beyond it the broker holds the
        backlog: see the module docstring);
        ``keepalive_s``: MQTT keepalive (seconds between pings on an idle connection)."""
        self.inbound = inbound
        self.payload_received_bytes = 0  # guarded by _queue_lock (network thread)
        self.payload_sent_bytes = 0  # guarded by _sent_lock (publishing threads)
        self._sent_lock = threading.Lock()
        # paho callback -> decoder: a HandOffQueue, so the decoder's takes do no lock or notify work
        self.raw: HandOffQueue[_RawPacket] = HandOffQueue(maxsize=raw_queue_packets)
        self.receive_queue_bytes = receive_queue_bytes
        self.queued_bytes = 0  # payload bytes in ``raw`` (guarded by _queue_lock)
        self.peak_queued_bytes = 0
        self._queue_lock = threading.Lock()
        self._room = threading.Event()  # set while queued_bytes <= receive_queue_bytes
        self._room.set()
        self.dropped_packets = 0  # received packets dropped because the decoder queue was full
        self.dropped_events = 0  # connection events not handed on because inbound was full (still logged)
        self.connects = 0  # connections the broker accepted
        self.disconnects = 0  # losses of an accepted connection
        self.keepalive_s = keepalive_s
        self._decoder: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closing = False
        self.host, self.port = host, port
        self.max_packet = max_packet
        self.key_lookup = key_lookup
        self.authenticate = authenticate
        self.key_snapshot = key_snapshot
        self.key_snapshots = 0  # times key_snapshot was asked (decoder thread)
        self._snapshot_lookup: Callable[[str], bytes | None] | None = None
        self._snapshot_covers = 0  # packets dequeued from now on that were queued before the snapshot was taken
        self._packet_covered = False  # whether the packet in the decoder's hand is one of them
        self.reassembler = ChunkReassembler(timeout_s=120.0, max_pending_bytes=max_pending_bytes)
        self.connected = threading.Event()
        self._started = False
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        # MQTT 5 sets clean_start per connect(); 3.1.1 takes a persistent session here.
        clean_session = None if version == mqtt.MQTTv5 else False
        self.client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                                         clean_session=clean_session, manual_ack=True, read_gate=self._may_read)
        self._v5 = version == mqtt.MQTTv5
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            files = tls_files or TlsFiles()
            self.client.tls_set(ca_certs=files.ca_file, certfile=files.cert_file, keyfile=files.key_file)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # an Ack then the next round's Task: two small writes, the second held ~40 ms by Nagle without this
        self.client.on_socket_open = self._on_socket_open

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: object, sock: object) -> None:
        disable_nagle(sock)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def wire_sent_bytes(self) -> int:
        return self.client.wire_sent_bytes

    @property
    def wire_received_bytes(self) -> int:
        return self.client.wire_received_bytes

    def connect(self, timeout_s: float = 10.0) -> bool:
        """Start connecting (and reconnecting) in the background; True once the broker accepted us
        within ``timeout_s``. False leaves the link retrying: publishes queue until it connects."""
        self._closing = False
        if self._decoder is None:
            self._stopping.clear()
            self._decoder = threading.Thread(target=self._decode_loop, name="mqtt-decoder", daemon=True)
            self._decoder.start()
        if self._v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            props.ReceiveMaximum = max(1, min(65535, self.receive_queue_bytes // self.max_packet))
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self.client.on_connect_fail = self._on_connect_fail
        self.client.loop_start()
        self._started = True
        ok = self.connected.wait(timeout_s)
        if not ok:
            log.warning("MQTT broker %s:%s is not reachable yet; the coordinator runs degraded and keeps retrying",
                        self.host, self.port)
        return ok

    def close(self) -> None:
        if self._started:
            self._closing = True  # our own disconnect: not a loss of the broker
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False
        if self._decoder is not None:
            self._stopping.set()  # the decoder checks it between packets and while waiting for room in inbound
            self._decoder.join(timeout=5)
            self._decoder = None

    # --- callbacks (network thread): decode and enqueue only ------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        result, _ = client.subscribe(topics.coordinator_subscriptions())
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("subscribe failed: %s", mqtt.error_string(result))
        self.connected.set()
        self.connects += 1
        log.info("connected to the MQTT broker %s:%s", self.host, self.port)
        self._post_event(Inbound("connected", received_at=time.time(), session_present=bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._closing:
            self.disconnects += 1
            log.warning("lost the MQTT broker %s:%s (%s); publishes wait in the outbox until it returns",
                        self.host, self.port, reason_code)
            self._post_event(Inbound("disconnected", error=str(reason_code), received_at=time.time()))

    def _post_event(self, item: Inbound) -> None:
        """Hand a connection event to the main loop without ever waiting (network thread)."""
        try:
            self.inbound.put_nowait(item)
        except queue.Full:
            self.dropped_events += 1

    def _on_connect_fail(self, client, userdata) -> None:  # noqa: ANN001
        log.debug("connection attempt to %s:%s failed; retrying", self.host, self.port)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        size = len(message.payload)
        with self._queue_lock:
            self.payload_received_bytes += size
            held = self.queued_bytes + size > self.receive_queue_bytes
            packet = _RawPacket(message.topic, bytes(message.payload), bool(message.retain), time.time(),
                                message.mid, message.qos, self.connects, held)
            try:
                self.raw.put_nowait(packet)
            except queue.Full:
                self.dropped_packets += 1
                held = False  # dropped and counted: acknowledged, not to be sent again
            else:
                self.queued_bytes += size
                self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
                if held:
                    self._room.clear()
        if not held:
            self._ack(packet)

    def _may_read(self) -> bool:
        """The network thread's read gate: True once the receive queue is within its byte bound (waits for
        room at most READ_PAUSE_S)."""
        return self._room.is_set() or self._closing or self._room.wait(READ_PAUSE_S)

    def _ack(self, packet: _RawPacket) -> None:
        """PUBACK ``packet`` if it came with QoS > 0 on the connection still up (else the broker sends it again)."""
        if packet.qos and packet.connection == self.connects:
            self.client.ack(packet.mid, packet.qos)

    def _taken(self, packet: _RawPacket) -> None:
        """The decoder took ``packet`` from the queue: its bytes leave the bound, and a held one is acknowledged."""
        with self._queue_lock:
            self.queued_bytes -= len(packet.payload)
            # set only when cleared (it is cleared under this lock): Event.set takes its condition's lock and
            # notifies, once per received packet otherwise
            if not self._room.is_set() and self.queued_bytes <= self.receive_queue_bytes:
                self._room.set()
        if packet.held:
            self._ack(packet)

    # --- decoder thread -------------------------------------------------------------------------

    def _decode_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                packet = self.raw.get(timeout=0.2)
            except queue.Empty:
                continue
            self._taken(packet)
            self._packet_covered = self._snapshot_covers > 0
            self._snapshot_covers = max(0, self._snapshot_covers - 1)
            item = self._decode(packet)
            while item is not None and not self._stopping.is_set():
                try:
                    self.inbound.put(item, timeout=0.2)  # back-pressure: the raw queue fills, then drops
                    item = None
                except queue.Full:
                    continue

    def _decode(self, packet: _RawPacket) -> Inbound | None:
        """Reassemble and decode one packet: an Inbound item, or None while a chunked message is incomplete."""
        try:
            whole = self.reassembler.add(packet.payload, source=packet.topic)
            if whole is None:
                return None
            decoded = decode_message_with_envelope(whole, self._verifier())
            if len(whole) > RELEASE_BYTES:
                decoded = DecodedMessage(replace(decoded.envelope, payload=_NO_BYTES), decoded.message)
        except ProtocolError as exc:
            return Inbound("invalid", topic=packet.topic, size=len(packet.payload),
                           error=f"{type(exc).__name__}: {exc}", received_at=packet.received_at)
        return Inbound("message", topic=packet.topic, decoded=decoded, size=len(whole), retained=packet.retained,
                       received_at=packet.received_at)

    def _verifier(self) -> Callable[[str], bytes | None] | None:
        """The key lookup for the message just completed by the packet in the decoder's hand (None: unverified).

        With ``key_snapshot``: a snapshot taken after that packet was dequeued, so after it was received;
        one snapshot serves every packet that was already queued when it was taken (they were received
        before it), so a burst costs one snapshot, and every packet received after a key change (a
        revocation) committed is verified with a snapshot taken after the change."""
        if self.key_snapshot is None:
            verify = self.key_lookup is not None and (self.authenticate is None or self.authenticate())
            return self.key_lookup if verify else None
        if not self._packet_covered:
            queued = self.raw.qsize()  # before the snapshot: these packets were received before it is taken
            self._snapshot_lookup = self.key_snapshot()
            self.key_snapshots += 1
            self._snapshot_covers, self._packet_covered = queued, True
        return self._snapshot_lookup

    def counters(self) -> LinkCounters:
        """Socket bytes both ways, decoder-queue drops and connection losses, cumulative since this link was made."""
        return LinkCounters(self.client.wire_received_bytes, self.client.wire_sent_bytes, self.dropped_packets,
                            self.disconnects, self.payload_received_bytes, self.payload_sent_bytes)

    # --- publishing -----------------------------------------------------------------------------

    def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> PublishResult:
        """Publish one encoded message (chunked when larger than ``max_packet``, chunking version
        :data:`SEND_CHUNK_VERSION`), every chunk on ``topic``."""
        packets = split_into_chunks(data, self.max_packet, SEND_CHUNK_VERSION)
        return self._publish_packets([(topic, packet) for packet in packets], qos, retain)

    def publish_model(self, run_id: str, server_round: int, data: bytes) -> tuple[PublishResult, int]:
        """Publish a round's encoded ModelBroadcast, chunk ``i`` retained on ``topics.model_chunk(run, round, i)``;
        returns the result and the number of chunk topics (for :meth:`clear_model`)."""
        packets = split_into_chunks(data, self.max_packet, SEND_CHUNK_VERSION)
        pairs = [(topics.model_chunk(run_id, server_round, i), packet) for i, packet in enumerate(packets)]
        return self._publish_packets(pairs, topics.QOS_MODEL, topics.RETAIN_MODEL), len(pairs)

    def clear_model(self, run_id: str, server_round: int, chunk_topics: int) -> PublishResult:
        """Remove a round's retained model chunks from the broker (empty retained publishes)."""
        pairs = [(topics.model_chunk(run_id, server_round, i), b"") for i in range(chunk_topics)]
        return self._publish_packets(pairs, topics.QOS_MODEL, True)

    def _publish_packets(self, pairs: list[tuple[str, bytes]], qos: int, retain: bool) -> PublishResult:
        """Hand every packet to paho, even after one was refused (paho queues QoS >= 1 packets while
        disconnected and sends them on reconnect), so a message is never sent as a prefix."""
        if not self._started:
            raise RuntimeError("publish before connect()")
        problems = []
        for topic, packet in pairs:
            info = self.client.publish(topic, packet, qos=qos, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                problems.append(mqtt.error_string(info.rc))
        with self._sent_lock:
            self.payload_sent_bytes += sum(len(packet) for _, packet in pairs)
        if problems:
            return PublishResult(False, f"{len(problems)} of {len(pairs)} packets wait for the broker: {problems[0]}")
        return PublishResult(True)
