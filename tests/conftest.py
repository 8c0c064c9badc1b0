"""Shared fixtures: a real mosquitto broker per test (free port, config written by the test)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))  # for `brokers`; after the real packages

from brokers import MosquittoBroker  # noqa: E402
from postgres_schemas import drop_schemas  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _drop_postgresql_schemas() -> Iterator[None]:
    """The PostgreSQL schemas tests made (tests/postgres_schemas.py) go at the end of the session."""
    yield
    drop_schemas()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """An anonymous mosquitto on a free loopback port; ``.restart()`` keeps the port."""
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()
