"""Helpers shared by the coordinator and end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cloud.coordinator import Coordinator
from cloud.settings import CloudSettings


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_coordinator(broker_url: str, state_dir: Path, **settings_kwargs: object) -> Coordinator:
    settings = CloudSettings(broker_url=broker_url, state_dir=state_dir, heartbeat_s=1.0, mqtt_username=None,
                             **settings_kwargs)  # type: ignore[arg-type]
    coordinator = Coordinator(settings)
    assert coordinator.start(), "coordinator could not connect to the broker"
    return coordinator


def bearer(coordinator: Coordinator, role: str = "admin") -> dict[str, str]:
    """Headers with a new API token of ``role``, created in the coordinator's state dir."""
    token, _ = coordinator.tokens.create(role, name=f"test {role}")
    return {"Authorization": f"Bearer {token}"}
