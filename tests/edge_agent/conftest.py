"""Fixtures for the edge-agent tests (a real mosquitto comes from ``tests/conftest.py``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_harness import DEVICE_KEY, AgentThread, FakeCoordinator  # noqa: E402


@pytest.fixture
def coordinator(mosquitto) -> Iterator[FakeCoordinator]:
    fake = FakeCoordinator(mosquitto.port, device_keys={"dev-003": DEVICE_KEY, "dev-005": DEVICE_KEY})
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """dev-003's device key (DEVICE_KEY, hex) in a file, for ``--key-file`` of an agent process."""
    path = tmp_path / "dev.key"
    path.write_text(DEVICE_KEY.hex() + "\n")
    return path


@pytest.fixture
def start_agent() -> Iterator[Callable[..., AgentThread]]:
    """Factory: ``start_agent(settings, **kwargs)``; every agent started is stopped at teardown."""
    started: list[AgentThread] = []

    def start(settings, **kwargs) -> AgentThread:  # type: ignore[no-untyped-def]
        agent = AgentThread(settings, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()
