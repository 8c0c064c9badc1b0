"""The agent's link shaper against a fake clock: token bucket rates, delays, counters, daily cap."""

from __future__ import annotations

import json

import pytest

from edge_agent.config import AgentConfigError, load_settings
from edge_agent.link_shaping import LinkLimits, LinkShaper, TokenBucket


class FakeClock:
    """time.monotonic / time.sleep stand-ins: sleeping advances the clock, nothing really waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_sustains_its_rate_after_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_bytes_s=1000, burst_bytes=100, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(50):  # 5000 bytes in 100-byte pieces: the first 100 are the burst, the rest at 1000 B/s
        bucket.take(100)
    assert clock.now - start == pytest.approx(4.9, rel=1e-9)


def test_token_bucket_refills_while_idle_but_not_beyond_its_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_bytes_s=1000, burst_bytes=100, clock=clock, sleep=clock.sleep)
    bucket.take(100)
    clock.now += 60.0  # a minute idle earns only the burst back
    assert bucket.wait_time(100) == 0.0
    bucket.take(100)
    assert bucket.wait_time(50) == pytest.approx(0.05)


def test_charge_pays_a_debt_larger_than_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_bytes_s=1000, burst_bytes=100, clock=clock, sleep=clock.sleep)
    assert bucket.charge(1100) == pytest.approx(1.0)  # 100 in the bucket, 1000 more at 1000 B/s


def test_bad_bucket_is_refused():
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(0, 10)


def _socket_stub(accept: int | None = None):
    sent: list[bytes] = []

    def raw_send(buf: bytes) -> int:
        n = len(buf) if accept is None else min(accept, len(buf))
        sent.append(bytes(buf[:n]))
        return n
    return sent, raw_send


def test_uplink_shaping_counts_what_the_socket_took_and_takes_its_time():
    clock = FakeClock()
    shaper = LinkShaper("dev-1", LinkLimits(uplink_kbps=80), clock=clock, sleep=clock.sleep)  # 10_000 B/s
    sent, raw_send = _socket_stub()
    payload = bytes(range(256)) * 400  # 102_400 bytes
    start, offset = clock.now, 0
    while offset < len(payload):
        offset += shaper.send(raw_send, payload[offset:])
    assert b"".join(sent) == payload
    assert shaper.counters.sent_bytes == len(payload)
    burst = shaper._up.burst  # type: ignore[union-attr]
    assert clock.now - start == pytest.approx((len(payload) - burst) / 10_000, rel=1e-6)


def test_partial_socket_writes_get_their_tokens_back():
    clock = FakeClock()
    shaper = LinkShaper("dev-1", LinkLimits(uplink_kbps=80), clock=clock, sleep=clock.sleep)
    sent, raw_send = _socket_stub(accept=10)
    for _ in range(100):
        assert shaper.send(raw_send, bytes(500)) == 10
    assert shaper.counters.sent_bytes == 1000
    assert clock.now - 1000.0 < 0.1  # 1000 bytes at 10 kB/s fit (mostly) in the burst: no 5 s of phantom waits


def test_downlink_pays_after_reading_and_delay_applies_after_idle():
    clock = FakeClock()
    shaper = LinkShaper("dev-1", LinkLimits(downlink_kbps=8, latency_ms=200), clock=clock, sleep=clock.sleep)
    asked: list[int] = []

    def raw_recv(n: int) -> bytes:
        asked.append(n)
        return bytes(n)
    data = shaper.recv(raw_recv, 65536)
    assert asked == [1500] and len(data) == 1500  # at most one burst per read (1000 B/s: burst is one frame)
    assert clock.slept[0] == pytest.approx(0.1)  # one-way delay: half the round trip
    assert clock.now - 1000.0 == pytest.approx(0.1)  # the burst was full: no rate wait yet
    shaper.recv(raw_recv, 65536)  # immediately again: no delay, 1500 bytes at 1000 B/s
    assert clock.slept[-1] == pytest.approx(1.5)
    assert shaper.counters.received_bytes == 3000


def test_daily_cap_declines_after_the_cap_and_survives_a_restart(tmp_path):
    path = tmp_path / "wire.json"
    shaper = LinkShaper("dev-1", LinkLimits(daily_upload_cap_bytes=1000), path)
    _sent, raw_send = _socket_stub()
    shaper.send(raw_send, bytes(600))
    assert not shaper.daily_cap_reached()
    shaper.write_counters()
    again = LinkShaper("dev-1", LinkLimits(daily_upload_cap_bytes=1000), path)  # the agent restarted
    again.send(raw_send, bytes(400))
    assert again.daily_cap_reached()
    again.write_counters()
    saved = json.loads(path.read_text())
    assert saved["sent_bytes"] == 400 and saved["day_sent_bytes"] == 1000 and saved["device_id"] == "dev-1"


def test_agent_settings_name_bad_link_values():
    base = {"device_id": "dev-1", "insecure_unsigned_coordinator": True}
    with pytest.raises(AgentConfigError, match="--max-uplink-kbps"):
        load_settings({**base, "max_uplink_kbps": -1.0}, environ={})
    with pytest.raises(AgentConfigError, match="--upload-format"):
        load_settings({**base, "upload_format": "float8"}, environ={})
    with pytest.raises(AgentConfigError, match="--compute-factor"):
        load_settings({**base, "compute_factor": 0.5}, environ={})
    settings = load_settings({**base, "daily_upload_cap_mb": 2.5, "max_uplink_kbps": 500.0}, environ={})
    assert settings.link_limits == LinkLimits(uplink_kbps=500.0, daily_upload_cap_bytes=2_500_000)
