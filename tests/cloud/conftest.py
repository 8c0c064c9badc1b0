"""Fixtures for coordinator tests: a coordinator on a real broker, fake devices, an API client."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import MosquittoBroker  # noqa: E402
from coordinator_harness import make_coordinator, wait_until  # noqa: E402,F401
from fake_devices import FakeDevice  # noqa: E402

from cloud.coordinator import Coordinator  # noqa: E402
from cloud.embedded_broker import EmbeddedBroker  # noqa: E402


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request, tmp_path: Path):
    """Every coordinator test runs against a real mosquitto and against the embedded amqtt broker."""
    if request.param == "mosquitto":
        server = MosquittoBroker(tmp_path / "mosquitto").start()
    else:
        server = EmbeddedBroker().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def coordinator(broker, tmp_path: Path) -> Iterator[Coordinator]:
    coord = make_coordinator(broker.url, tmp_path / "state")
    try:
        yield coord
    finally:
        coord.close()


@pytest.fixture
def devices(broker) -> Iterator[Callable[..., FakeDevice]]:
    started: list[FakeDevice] = []

    def start(device_id: str, **kwargs: object) -> FakeDevice:
        device = FakeDevice(device_id, broker.port, **kwargs).start()  # type: ignore[arg-type]
        started.append(device)
        return device

    yield start
    for device in started:
        if not device._stop.is_set():
            device.stop()
