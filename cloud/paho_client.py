"""``WireCountingClient``: the coordinator's paho-mqtt v2 client, with its byte counts and fewer syscalls.

What it changes in paho's network thread (paho 2.x internals, which ``pyproject.toml`` bounds below 3):

* **counts** every byte written to and read from the socket (``wire_sent_bytes``, ``wire_received_bytes``:
  MQTT level, under TLS);
* **buffered reads**: paho reads each packet with three or more ``recv`` calls (the command byte, each
  remaining-length byte, the rest), and reads one packet per ``select()`` when nothing of its own is in
  flight. This client asks the socket for at least :data:`READ_SIZE` bytes per read and hands paho the
  packets from that buffer; one :meth:`loop_read` pass reads packets until the socket has nothing more
  (at most :data:`SOCKET_READS_PER_PASS` socket reads, so the pass ends and the packets it queued, PUBACKs
  included, are written) and always ends with the buffer empty, so ``select()`` on the socket still tells
  whether data waits. A packet that lies whole in the buffer is cut out of it at once (paho's own reading asks
  for its command byte, each remaining-length byte and the rest, each through ``_sock_recv``, and takes a
  mutex per packet for its keepalive clock, which is set once per pass instead). The read gate
  (``read_gate``) is asked before every socket read, not before a buffered one: when it says "not now" at
  most one read's worth (:data:`READ_SIZE`) is still handed on;
* **one payload copy** per received PUBLISH (MQTT 3.1.1, QoS 0/1) instead of paho's three, in a message made
  without paho's ``MQTTMessageInfo`` (a ``threading.Condition`` per message, unused for a received one) and handed
  straight to ``on_message`` while no per-topic callback is set (paho decodes the topic three times and walks its
  topic matcher for each);
* **PUBACKs** (``ack``, manual ack) packed and queued without paho's generic command path; a PUBACK for one of
  its own QoS 1 publishes (MQTT 3.1.1, no ``on_publish``) is handled without the ``ReasonCode`` and
  ``Properties`` objects paho builds for it (only ``on_publish`` would see them);
* **coalesced writes**: consecutive small queued packets that need nothing after their write (PUBACKs,
  QoS >= 1 PUBLISHes of at most :data:`COALESCE_PACKET_BYTES`) leave in one ``send`` of at most
  :data:`COALESCE_BYTES`, in their order;
* **one wake-up per write pass** for packets queued from other threads (below).

Measured (docs/results.md, branch ``ingest3``): 20 000 heartbeats through mosquitto into a ``CoordinatorLink``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

READ_SIZE = 64 * 1024
"""Bytes asked of the socket per read (paho itself asks for one byte, then the packet's remaining bytes)."""
SOCKET_READS_PER_PASS = 8
"""Socket reads of one :meth:`WireCountingClient.loop_read` pass (then the buffer is drained and the pass ends)."""
COALESCE_PACKET_BYTES = 4096
"""Largest queued packet joined with its neighbours into one ``send`` (a model chunk is sent on its own)."""
COALESCE_BYTES = 64 * 1024
"""Largest ``send`` made of joined packets."""

_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # what paho makes for every MQTT 3.1.1 PUBACK (never handed on)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


def _needs_nothing_after_write(packet: dict) -> bool:
    """Whether paho does nothing once ``packet`` is written: a PUBACK, or a PUBLISH with QoS >= 1 (paho marks
    a QoS 0 PUBLISH published and runs ``on_publish`` after its write, and a DISCONNECT closes the socket)."""
    kind = packet["command"] & 0xF0
    return kind == _PUBACK or (kind == _PUBLISH and packet["qos"] > 0)


def _received_message() -> mqtt.MQTTMessage:
    """An empty received message without paho's per-message ``MQTTMessageInfo`` (``info`` is None: it is for
    published messages)."""
    message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
    message.state, message.info, message.properties = mqtt.mqtt_ms_invalid, None, None  # type: ignore[assignment]
    return message


class WireCountingClient(mqtt.Client):
    """A paho client that counts the bytes it writes to and reads from its socket, reads through a buffer and
    joins small writes (see the module docstring)."""

    def __init__(self, *args: object, read_gate: Callable[[], bool] | None = None, **kwargs: object) -> None:
        """``read_gate`` (optional, asked before every socket read): False = not now (paho sees no data yet)."""
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wire_sent_bytes = 0
        self.wire_received_bytes = 0
        self.socket_reads = 0  # recv calls on the socket that returned data or end of stream
        self.socket_writes = 0  # send calls on the socket
        self._read_gate = read_gate
        self._read_buffer = b""  # bytes read from ``_read_socket`` and not yet handed to paho, from ``_read_at``
        self._read_at = 0
        self._read_socket: object = None  # the socket the buffer came from (a new connection starts empty)
        self._socket_reads_left = SOCKET_READS_PER_PASS

    # --- reading ------------------------------------------------------------------------------------

    def _buffered_bytes(self) -> int:
        """Bytes in the read buffer for the current socket (a buffer of a closed connection is dropped)."""
        if self._read_socket is not self._sock:
            self._read_buffer, self._read_at, self._read_socket = b"", 0, self._sock
        return len(self._read_buffer) - self._read_at

    def _sock_recv(self, bufsize: int) -> bytes:
        buffered = self._buffered_bytes()
        if buffered:
            at = self._read_at
            self._read_at = at + min(bufsize, buffered)
            return self._read_buffer[at:self._read_at]
        if self._socket_reads_left <= 0 or (self._read_gate is not None and not self._read_gate()):
            raise BlockingIOError  # paho: MQTT_ERR_AGAIN, the read is tried again on its next loop pass
        data = super()._sock_recv(max(bufsize, READ_SIZE))  # a large read (a payload) is not read beyond
        self._socket_reads_left -= 1
        self.socket_reads += 1
        self.wire_received_bytes += len(data)
        if len(data) <= bufsize:  # all of it for paho: no copy
            return data
        self._read_buffer, self._read_at = data, bufsize
        return data[:bufsize]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read and handle packets until the socket has no more (at most :data:`SOCKET_READS_PER_PASS` socket
        reads), the buffer drained; ``max_packets`` is ignored (paho's own loop passes its default)."""
        self._socket_reads_left = SOCKET_READS_PER_PASS
        try:
            while True:
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._buffered_packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN and not self._buffered_bytes():
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if self._whole_packets_read:
                self._whole_packets_read = 0
                with self._msgtime_mutex:
                    self._last_bytes_received = mqtt.time_func()

    _whole_packets_read = 0  # packets cut from the buffer since the keepalive clock was last set

    def _buffered_packet_read(self) -> MQTTErrorCode:
        """paho's ``_packet_read``, for a packet whole in the read buffer without going through ``_sock_recv``
        (no partly read packet pending); anything else (a packet still arriving, an empty buffer) goes paho's way."""
        buffered = self._buffered_bytes() if self._in_packet["command"] == 0 else 0
        if buffered < 2:
            return self._packet_read()
        data, at = self._read_buffer, self._read_at
        length, shift, i = 0, 0, at + 1
        while True:  # the remaining length: 1 to 4 bytes, 7 bits each, least significant first
            if i - at > 4 or i >= len(data):
                return self._packet_read()  # malformed or cut off: paho reads (and refuses) it
            byte = data[i]
            length |= (byte & 127) << shift
            shift, i = shift + 7, i + 1
            if not byte & 128:
                break
        if i + length > len(data):
            return self._packet_read()
        command = data[at]
        self._read_at = i + length
        with memoryview(data) as view:
            body = bytearray(view[i:i + length])  # one copy, the type paho's handlers take
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": length, "pos": 0, "to_process": 0,
                           "packet": body}
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        self._whole_packets_read += 1
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's handling of a received PUBLISH, for MQTT 3.1.1 with QoS 0 or 1 (what the coordinator
        receives) with one copy of the payload: paho's ``decode_publish`` copies the packet three times
        (``struct.unpack`` of the topic length, the topic and the packet id, each with the rest). MQTT 5, QoS 2
        and malformed packets take paho's own way."""
        packet, header = self._in_packet["packet"], self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if self._protocol == mqtt.MQTTv5 or qos > 1 or len(packet) < 2:
            return super()._handle_publish()
        topic_length = (packet[0] << 8) | packet[1]
        start = 2 + topic_length + (2 if qos else 0)
        if topic_length == 0 or start > len(packet):
            return super()._handle_publish()  # paho raises MalformedPacket
        message = _received_message()
        message.mid = (packet[start - 2] << 8) | packet[start - 1] if qos else 0
        with memoryview(packet) as view:
            message._topic = bytes(view[2:2 + topic_length])
            message.payload = bytes(view[start:])
        message.dup, message.qos, message.retain = bool(header & 0x08), qos, bool(header & 0x01)
        if self._logger is not None or self.on_log is not None:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBLISH (d%d, q%d, r%d, m%d), '%s', ...  (%d bytes)",
                           message.dup, qos, message.retain, message.mid,
                           message._topic.decode("utf-8", "backslashreplace"), len(message.payload))
        message.timestamp = mqtt.time_func()
        on_message = self.on_message
        if self._topic_callbacks or on_message is None:
            self._handle_on_message(message)  # paho's dispatch: per-topic callbacks, its error handling
        else:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    _topic_callbacks = False  # whether message_callback_add was ever called (then paho dispatches each message)

    def message_callback_add(self, sub: str, callback: object) -> None:
        self._topic_callbacks = True
        super().message_callback_add(sub, callback)  # type: ignore[arg-type]

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol == mqtt.MQTTv5 or len(packet) != 2 or self.on_publish is not None:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        if self._logger is not None or self.on_log is not None:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            if mid in self._out_messages:  # paho's _do_on_publish: the message is done, its in-flight slot freed
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """paho's ``ack`` (manual ack), a QoS 1 PUBACK packed here: 4 bytes, no generic command path."""
        if not (self._manual_ack and qos == 1):
            return super().ack(mid, qos)
        if self._logger is not None or self.on_log is not None:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Sending PUBACK (Mid: %d)", mid)
        return self._packet_queue(_PUBACK, bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)), mid, 1)

    # --- writing ------------------------------------------------------------------------------------

    def _sock_send(self, buf: bytes | bytearray) -> int:
        sent = super()._sock_send(buf)
        self.socket_writes += 1
        self.wire_sent_bytes += sent
        return sent

    def _packet_write(self) -> MQTTErrorCode:
        self._coalesce_queued()
        return super()._packet_write()

    def _coalesce_queued(self) -> None:
        """Join the small packets at the head of the out queue that need nothing after their write into one
        (network thread only: it alone takes packets from the queue's head; other threads append at its tail)."""
        out = getattr(self, "_out_packet", None)
        if out is None or len(out) < 2:
            return
        taken: list[dict] = []
        size = 0
        while out:
            head = out[0]
            if (not _needs_nothing_after_write(head) or head["to_process"] > COALESCE_PACKET_BYTES
                    or size + head["to_process"] > COALESCE_BYTES):
                break
            taken.append(out.popleft())
            size += head["to_process"]
        if len(taken) == 1:
            out.appendleft(taken[0])
        elif taken:
            joined = b"".join(p["packet"][p["pos"]:] for p in taken)
            out.appendleft({"command": _PUBACK, "mid": 0, "qos": 0, "pos": 0, "to_process": len(joined),
                            "packet": joined, "info": None})

    # --- one wake-up of the network thread per pass, not one per packet ---------------------------
    # paho writes a byte to its socket pair for every packet queued (publish, PUBACK), to break the network
    # thread out of select(): 2000+ syscalls (and GIL hand-offs) per 1000-device round on the main loop alone
    # (0.47 s of its profiled round). One byte is enough until the network thread's next write pass: the
    # packet is queued first, then the byte is skipped only if one was sent on the same socket pair since that
    # pass began (``loop_write`` clears the mark before it drains the queue, so it drains this packet too, or
    # leaves it for its next select(), which then waits for the socket to be writable).

    _wake_sent_on: object = None  # the socket pair a wake-up byte went to since the last write pass began

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        # paho's private attributes, read with defaults: a paho without them gets paho's own way, not a crash
        wake = getattr(self, "_sockpairW", None)
        out_packets = getattr(self, "_out_packet", None)
        if (getattr(self, "_thread", None) is None or getattr(self, "_on_socket_register_write", True) is not None
                or wake is None or out_packets is None):
            return super()._packet_queue(command, packet, mid, qos, info)  # not loop_start's thread: paho's way
        out_packets.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                            "packet": packet, "info": info})
        if self._wake_sent_on is not wake:
            self._wake_sent_on = wake
            try:
                wake.send(b"0")
            except BlockingIOError:  # the pair's buffer is full of wake-ups: the thread wakes anyway
                pass
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_write(self) -> MQTTErrorCode:
        self._wake_sent_on = None  # before the queue is drained: a packet queued from now on sends a byte
        return super().loop_write()
