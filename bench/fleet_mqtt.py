"""A lean MQTT 3.1.1 client connection for the fleet bench's fake agents (``bench/fleet_fakes.py``).

One :class:`FleetMqttConnection` is one device's TCP connection to the broker: an ``asyncio.Protocol``
that parses packets in ``data_received`` (no stream reader, no read task, no wake-up per packet beyond
the event loop's own), and writes each PUBLISH as its fixed header, topic and packet id followed by the
caller's payload pieces in one ``transport.writelines`` (uvloop sends them with one ``writev``, without
joining them). It speaks what the fakes need, with the semantics of any MQTT 3.1.1 client:

* CONNECT with clean session, a keepalive (a PINGREQ every half of it) and an optional will (topic,
  payload, QoS, retain); CONNACK's return code checked (:class:`MqttError` on refusal);
* SUBSCRIBE (one packet, any topic filters at QoS 0 or 1); SUBACK checked (a refused filter, 0x80, is
  an :class:`MqttError`);
* PUBLISH QoS 0 or 1, retained or not; a QoS 1 message keeps its packet id (1..65535, never one in
  flight) until its PUBACK; :meth:`wait_acked` returns once none is in flight;
* incoming PUBLISH QoS 0 or 1 (QoS 1 answered with PUBACK after the callback), handed to
  ``on_message(topic: str, payload: bytes)``; QoS 2 is refused (the fakes subscribe at QoS 1, so the
  broker never sends it);
* DISCONNECT on :meth:`disconnect` (the broker then drops the will).

Clean session, so nothing is resent after a reconnect; a fake never reconnects: a lost connection
fails its waiters with :class:`MqttError` and is counted by the fleet (the round then cannot complete).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable, Sequence

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    0x10, 0x20, 0x30, 0x40, 0x82, 0x90, 0xC0, 0xD0, 0xE0)
_U16 = struct.Struct("!H")
PINGREQ_PACKET = bytes([PINGREQ, 0])
DISCONNECT_PACKET = bytes([DISCONNECT, 0])


class MqttError(ConnectionError):
    """The broker refused something, sent what MQTT 3.1.1 does not allow here, or the connection was lost."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length) for ``0 <= n < 2**28``."""
    if not 0 <= n < 1 << 28:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8_field(text: str | bytes) -> bytes:
    """A length-prefixed MQTT string (``text`` as UTF-8 if a ``str``)."""
    raw = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(raw)) + raw


def connect_packet(client_id: str, keepalive_s: int, will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session; ``will`` = (topic, payload, qos, retain) or None."""
    flags = 0x02
    body = utf8_field(client_id)
    if will is not None:
        topic, payload, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        body += utf8_field(topic) + utf8_field(payload)
    variable = utf8_field("MQTT") + bytes([4, flags]) + _U16.pack(keepalive_s)
    return bytes([CONNECT]) + varint(len(variable) + len(body)) + variable + body


def publish_header(topic: bytes, payload_bytes: int, qos: int, retain: bool, mid: int) -> bytes:
    """The PUBLISH packet's bytes up to its payload (fixed header, topic, packet id if QoS 1)."""
    remaining = 2 + len(topic) + (2 if qos else 0) + payload_bytes
    head = bytes([PUBLISH | (qos << 1) | (1 if retain else 0)]) + varint(remaining) + _U16.pack(len(topic)) + topic
    return head + _U16.pack(mid) if qos else head


class FleetMqttConnection(asyncio.Protocol):
    """One MQTT 3.1.1 client connection (see the module docstring); make it with :func:`open_connection`."""

    def __init__(self, on_message: Callable[[str, bytes], object] | None = None) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None  # why the connection ended, once it did (None while open)
        self._buffer = bytearray()
        self._next_mid = 0
        self._inflight: set[int] = set()  # QoS 1 packet ids sent and not yet acknowledged
        self._waiters: dict[int, asyncio.Future] = {}  # CONNACK (key 0) and SUBACK (their mid)
        self._acked_waiters: list[asyncio.Future] = []
        self._ping: asyncio.TimerHandle | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or MqttError("the broker closed the connection")
        if self._ping is not None:
            self._ping.cancel()
        for waiter in [*self._waiters.values(), *self._acked_waiters]:
            if not waiter.done():
                waiter.set_exception(MqttError(f"connection lost: {self.lost}"))
        self._waiters.clear()
        self._acked_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._buffer and len(data) == 4 and data[0] == PUBACK and data[1] == 2:  # the common case
            self._on_puback(data[2] << 8 | data[3])
            return
        buffer = self._buffer
        buffer += data
        pos = 0
        while True:
            start, length = self._packet_bounds(buffer, pos)
            if start < 0:
                break
            self._dispatch(buffer[pos], bytes(buffer[start:start + length]))
            pos = start + length
        del buffer[:pos]

    @staticmethod
    def _packet_bounds(buffer: bytearray, pos: int) -> tuple[int, int]:
        """(start of the body, body length) of the packet at ``pos``, or (-1, 0) if it is not all here."""
        length, shift, i = 0, 0, pos + 1
        while i < len(buffer):
            byte = buffer[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return (i, length) if i + length <= len(buffer) else (-1, 0)
            shift += 7
            if shift > 21:
                raise MqttError("malformed remaining length")
        return -1, 0

    def _dispatch(self, first_byte: int, body: bytes) -> None:
        kind = first_byte & 0xF0
        if kind == PUBLISH:
            self._on_publish(first_byte, body)
        elif kind == PUBACK:
            self._on_puback(_U16.unpack_from(body)[0])
        elif kind == CONNACK:
            self._resolve(0, body[1])
        elif kind == SUBACK:
            self._resolve(_U16.unpack_from(body)[0], max(body[2:], default=0x80))
        elif kind != PINGRESP:
            self._fail(MqttError(f"unexpected packet type 0x{first_byte:02x} from the broker"))

    def _on_publish(self, first_byte: int, body: bytes) -> None:
        qos = (first_byte >> 1) & 3
        topic_end = 2 + _U16.unpack_from(body)[0]
        if qos > 1:
            self._fail(MqttError("QoS 2 PUBLISH from the broker (the fakes subscribe at QoS 1)"))
            return
        payload_start = topic_end + (2 if qos else 0)
        if self.on_message is not None:
            self.on_message(body[2:topic_end].decode(), body[payload_start:])
        if qos:
            self.transport.write(bytes([PUBACK, 2]) + body[topic_end:payload_start])  # type: ignore[union-attr]

    def _on_puback(self, mid: int) -> None:
        self._inflight.discard(mid)
        if not self._inflight and self._acked_waiters:
            waiters, self._acked_waiters = self._acked_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _resolve(self, key: int, code: int) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(code)

    def _fail(self, error: MqttError) -> None:
        self.lost = error
        if self.transport is not None:
            self.transport.close()

    # --- the client's calls ---------------------------------------------------------------------------

    def _new_mid(self) -> int:
        if len(self._inflight) >= 65535:
            raise MqttError("65535 QoS 1 messages in flight on one connection")
        mid = self._next_mid
        while True:
            mid = mid % 65535 + 1
            if mid not in self._inflight and mid not in self._waiters:
                self._next_mid = mid
                return mid

    def _expect(self, key: int) -> asyncio.Future:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        return waiter

    async def handshake(self, client_id: str, keepalive_s: int, will: tuple[str, bytes, int, bool] | None) -> None:
        """Send CONNECT and wait for CONNACK; :class:`MqttError` unless the broker accepted."""
        connack = self._expect(0)
        self.transport.write(connect_packet(client_id, keepalive_s, will))  # type: ignore[union-attr]
        code = await connack
        if code != 0:
            raise MqttError(f"the broker refused {client_id!r}: CONNACK return code {code}")
        self._schedule_ping(keepalive_s / 2)

    def _schedule_ping(self, every_s: float) -> None:
        def ping() -> None:
            if self.lost is None:
                self.transport.write(PINGREQ_PACKET)  # type: ignore[union-attr]
                self._ping = asyncio.get_running_loop().call_later(every_s, ping)

        self._ping = asyncio.get_running_loop().call_later(every_s, ping)

    async def subscribe(self, filters: Iterable[tuple[str, int]]) -> None:
        """One SUBSCRIBE of ``(filter, qos)`` pairs; waits for its SUBACK (:class:`MqttError` if refused)."""
        pairs = list(filters)
        mid = self._new_mid()
        suback = self._expect(mid)
        body = _U16.pack(mid) + b"".join(utf8_field(f) + bytes([qos]) for f, qos in pairs)
        self.transport.write(bytes([SUBSCRIBE]) + varint(len(body)) + body)  # type: ignore[union-attr]
        if await suback >= 0x80:
            raise MqttError(f"the broker refused a subscription of {[f for f, _ in pairs]}")

    def publish(self, topic: bytes, pieces: Sequence[bytes | memoryview], qos: int = 1, retain: bool = False) -> None:
        """PUBLISH the concatenation of ``pieces`` on ``topic`` (UTF-8 bytes), without joining them."""
        if self.lost is not None:
            raise MqttError(f"connection lost: {self.lost}")
        mid = self._new_mid() if qos else 0
        if qos:
            self._inflight.add(mid)
        size = sum(len(p) for p in pieces)
        self.transport.writelines([publish_header(topic, size, qos, retain, mid), *pieces])  # type: ignore

    @property
    def in_flight(self) -> int:
        """QoS 1 messages sent and not yet acknowledged."""
        return len(self._inflight)

    async def wait_acked(self) -> None:
        """Return once no QoS 1 message of this connection is in flight (:class:`MqttError` if it is lost)."""
        if self.lost is not None:
            raise MqttError(f"connection lost: {self.lost}")
        if self._inflight:
            waiter = asyncio.get_running_loop().create_future()
            self._acked_waiters.append(waiter)
            await waiter

    async def disconnect(self) -> None:
        """DISCONNECT (the broker discards the will) and close."""
        if self.lost is None and self.transport is not None:
            self.transport.write(DISCONNECT_PACKET)
            self.transport.close()
        await self.closed


async def open_connection(host: str, port: int, client_id: str, keepalive_s: int = 300,
                          will: tuple[str, bytes, int, bool] | None = None,
                          on_message: Callable[[str, bytes], object] | None = None) -> FleetMqttConnection:
    """Connect to ``host:port`` and complete the MQTT handshake (see :class:`FleetMqttConnection`)."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(lambda: FleetMqttConnection(on_message), host, port)
    await connection.handshake(client_id, keepalive_s, will)
    return connection
