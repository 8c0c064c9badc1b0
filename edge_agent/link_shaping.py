"""The agent's link shaping and wire-byte counting (``shaper = "agent"`` of ``feddst trial``).

Sits between paho and the socket: :func:`install` wraps one paho client's ``_sock_send`` and
``_sock_recv`` (paho 2.x), so every byte the device really sends or receives over MQTT goes
through :class:`LinkShaper`. Bytes are the MQTT byte stream (fixed headers, topics, properties,
payloads, pings, acks, status: everything), measured where paho hands them to the socket (TLS
framing, when used, is below this layer and not counted).

Shaping, each direction on its own (0 = unlimited):

* rate: a token bucket (:class:`TokenBucket`) of ``kbit/s`` (1 kbit = 1000 bits) with a burst of
  ``BURST_S`` seconds of traffic; a send takes at most a burst's worth and waits for the tokens;
  a receive reads at most a burst and then waits for what it read (TCP back-pressure then slows
  the broker down, as a slow last mile does).
* delay: the first send (or receive) after an idle gap of ``IDLE_GAP_S`` waits the one-way delay
  ``latency_ms / 2`` plus a uniform draw in ``[0, jitter_ms]``. Loss is not emulated here (TCP
  would hide it as delay); ``shaper = "netem"`` emulates real loss in the kernel.

Counters (:class:`WireCounters`) are cumulative since the agent started; with a counters file
the shaper rewrites it (atomically, JSON ``{"device_id", "sent_bytes", "received_bytes", "day",
"day_sent_bytes", "updated_unix"}``) at most every ``WRITE_EVERY_S`` seconds and on close, so a
trial runner in another process reads them. ``daily_upload_cap_bytes`` counts sent bytes per UTC
day (continued from the file across restarts); :meth:`LinkShaper.daily_cap_reached` tells the
agent to decline tasks: the cap for metered SIM cards.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BURST_S = 0.05
"""Token bucket depth in seconds of traffic at the configured rate (at least one 1500-byte frame)."""
IDLE_GAP_S = 0.05
"""A direction idle this long pays the one-way delay again on its next bytes."""
WRITE_EVERY_S = 0.5


class TokenBucket:
    """``rate`` bytes/s, ``burst`` bytes deep; ``clock`` and ``sleep`` are injectable (tests use a fake).

    :meth:`take` blocks until ``n`` tokens (bytes) are available and takes them; :meth:`refund` returns
    tokens of bytes the socket did not accept."""

    def __init__(self, rate_bytes_s: float, burst_bytes: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bytes_s <= 0 or burst_bytes <= 0:
            raise ValueError(f"token bucket needs rate > 0 and burst > 0, got {rate_bytes_s}, {burst_bytes}")
        self.rate, self.burst = float(rate_bytes_s), float(burst_bytes)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def wait_time(self, n: int) -> float:
        """Seconds until ``n`` bytes (at most ``burst``) could be taken; 0 if now."""
        with self._lock:
            self._refill()
            return max(0.0, (min(n, self.burst) - self._tokens) / self.rate)

    def take(self, n: int) -> float:
        """Take ``n`` bytes' tokens (``n`` is capped at the burst), sleeping until they exist; returns the wait.

        The tokens are reserved before sleeping (the balance goes negative), so concurrent callers queue
        behind each other and rounding can never make the wait loop."""
        need = min(float(n), self.burst)
        with self._lock:
            self._refill()
            self._tokens -= need
            delay = max(0.0, -self._tokens / self.rate)
        if delay > 0:
            self._sleep(delay)
        return delay

    def charge(self, n: int) -> float:
        """Account ``n`` bytes already moved (may exceed the burst): waits until the debt is paid."""
        with self._lock:
            self._refill()
            self._tokens -= n
            debt = -self._tokens
        if debt > 0:
            self._sleep(debt / self.rate)
            return debt / self.rate
        return 0.0

    def refund(self, n: int) -> None:
        """Give back tokens taken for bytes that the socket did not accept."""
        with self._lock:
            self._tokens = min(self.burst, self._tokens + n)


@dataclass(frozen=True)
class LinkLimits:
    """One device's link as the agent shapes it; 0 means unlimited / none."""

    uplink_kbps: float = 0.0
    downlink_kbps: float = 0.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    daily_upload_cap_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("uplink_kbps", "downlink_kbps", "latency_ms", "jitter_ms", "daily_upload_cap_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def shapes(self) -> bool:
        return bool(self.uplink_kbps or self.downlink_kbps or self.latency_ms or self.jitter_ms)


def _bucket(kbps: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> TokenBucket | None:
    if not kbps:
        return None
    rate = kbps * 1000 / 8
    return TokenBucket(rate, max(1500.0, rate * BURST_S), clock, sleep)


class WireCounters:
    """Cumulative MQTT bytes of one device (thread-safe), and the current UTC day's sent bytes."""

    def __init__(self, device_id: str, clock_unix: Callable[[], float] = time.time) -> None:
        self.device_id = device_id
        self._clock_unix = clock_unix
        self.sent_bytes = 0
        self.received_bytes = 0
        self.day = self._today()
        self.day_sent_bytes = 0
        self._lock = threading.Lock()

    def _today(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self._clock_unix()))

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            today = self._today()
            if today != self.day:
                self.day, self.day_sent_bytes = today, 0
            self.sent_bytes += sent
            self.received_bytes += received
            self.day_sent_bytes += sent

    def resume_day(self, day: str, day_sent_bytes: int) -> None:
        """Continue today's upload count from an earlier process (same UTC day only)."""
        with self._lock:
            if day == self._today():
                self.day, self.day_sent_bytes = day, self.day_sent_bytes + int(day_sent_bytes)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"device_id": self.device_id, "sent_bytes": self.sent_bytes,
                    "received_bytes": self.received_bytes, "day": self.day,
                    "day_sent_bytes": self.day_sent_bytes, "updated_unix": self._clock_unix()}


class LinkShaper:
    """Rate, delay, counters and the daily cap of one device's MQTT link (shared by every paho client
    the agent builds, so counters survive the MQTT 5 -> 3.1.1 fall-back)."""

    def __init__(self, device_id: str, limits: LinkLimits, counters_file: str | Path | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.limits = limits
        self.counters = WireCounters(device_id)
        self._up = _bucket(limits.uplink_kbps, clock, sleep)
        self._down = _bucket(limits.downlink_kbps, clock, sleep)
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self._last_up = self._last_down = float("-inf")
        self._path = None if counters_file is None else Path(counters_file)
        self._written = float("-inf")
        self._timer: threading.Timer | None = None
        if self._path is not None and self._path.is_file():
            try:
                old = json.loads(self._path.read_text(encoding="utf-8"))
                self.counters.resume_day(str(old.get("day", "")), int(old.get("day_sent_bytes", 0)))
            except (OSError, ValueError):
                pass  # a torn or foreign file: start today's count afresh

    # ------------------------------------------------------------------ shaping (paho's threads)
    def _delay(self, last: float) -> None:
        if not (self.limits.latency_ms or self.limits.jitter_ms):
            return
        if self._clock() - last >= IDLE_GAP_S:
            self._sleep((self.limits.latency_ms / 2 + self._rng.uniform(0, self.limits.jitter_ms)) / 1000)

    def send(self, raw_send: Callable[[bytes | bytearray], int], buf: bytes | bytearray) -> int:
        """Send (part of) ``buf`` through ``raw_send`` within the uplink limits; returns bytes sent."""
        self._delay(self._last_up)
        piece = buf
        if self._up is not None:
            size = int(min(len(buf), self._up.burst))
            self._up.take(size)
            piece = buf[:size]
            try:
                sent = raw_send(piece)
            except BaseException:
                self._up.refund(size)
                raise
            self._up.refund(size - sent)
        else:
            sent = raw_send(piece)
        self._last_up = self._clock()
        self.counters.add(sent=sent)
        self._maybe_write()
        return sent

    def recv(self, raw_recv: Callable[[int], bytes], bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes through ``raw_recv``, then pay the downlink rate for them."""
        if self._down is not None:
            bufsize = int(min(bufsize, self._down.burst))
        data = raw_recv(bufsize)
        if data:
            self._delay(self._last_down)
            if self._down is not None:
                self._down.charge(len(data))
            self._last_down = self._clock()
            self.counters.add(received=len(data))
            self._maybe_write()
        return data

    # ------------------------------------------------------------------ cap and file (main thread too)
    def daily_cap_reached(self) -> bool:
        cap = self.limits.daily_upload_cap_bytes
        return bool(cap) and self.counters.snapshot()["day_sent_bytes"] >= cap

    def _maybe_write(self) -> None:
        """Write now if the last write is ``WRITE_EVERY_S`` old, else once when it will be (a timer), so the
        file never lags the counters by more than ``WRITE_EVERY_S``."""
        if self._path is None:
            return
        wait = self._written + WRITE_EVERY_S - time.monotonic()
        if wait <= 0:
            self.write_counters()
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._timed_write)
            self._timer.daemon = True
            self._timer.start()

    def _timed_write(self) -> None:
        self._timer = None
        self.write_counters()

    def write_counters(self) -> None:
        """Write the counters file now (atomic replace); no-op without one."""
        if self._path is None:
            return
        self._written = time.monotonic()
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(self.counters.snapshot()), encoding="utf-8")
            os.replace(tmp, self._path)
        except OSError:
            tmp.unlink(missing_ok=True)


def install(client: Any, shaper: LinkShaper) -> None:
    """Route ``client``'s socket reads and writes (paho 2.x ``_sock_send`` / ``_sock_recv``) through ``shaper``."""
    raw_send, raw_recv = client._sock_send, client._sock_recv
    client._sock_send = lambda buf: shaper.send(raw_send, buf)
    client._sock_recv = lambda bufsize: shaper.recv(raw_recv, bufsize)
