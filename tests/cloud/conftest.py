"""Fixtures for coordinator tests: a coordinator on a real broker, fake devices, an API client."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_devices import FakeDevice  # noqa: E402

from cloud.coordinator import Coordinator  # noqa: E402
from cloud.settings import CloudSettings  # noqa: E402


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_coordinator(broker_url: str, state_dir: Path) -> Coordinator:
    settings = CloudSettings(broker_url=broker_url, state_dir=state_dir, heartbeat_s=1.0, mqtt_username=None)
    coordinator = Coordinator(settings)
    assert coordinator.start(), "coordinator could not connect to the broker"
    return coordinator


@pytest.fixture
def coordinator(mosquitto, tmp_path: Path) -> Iterator[Coordinator]:
    coord = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        yield coord
    finally:
        coord.close()


@pytest.fixture
def devices(mosquitto) -> Iterator[Callable[..., FakeDevice]]:
    started: list[FakeDevice] = []

    def start(device_id: str, **kwargs: object) -> FakeDevice:
        device = FakeDevice(device_id, mosquitto.port, **kwargs).start()  # type: ignore[arg-type]
        started.append(device)
        return device

    yield start
    for device in started:
        if not device._stop.is_set():
            device.stop()
