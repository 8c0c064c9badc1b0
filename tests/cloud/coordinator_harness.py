"""Helpers shared by the coordinator and end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from postgres_schemas import coordinator_tests_use_postgresql, new_schema

from cloud.coordinator import Coordinator
from cloud.settings import CloudSettings
from cloud.signing_key import DEFAULT_SIGNING_KEY_NAME

TEST_SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(150, 182)))
"""The signing key of coordinators made by :func:`make_coordinator` (test provisioning, like an operator's)."""
TEST_COORDINATOR_PUBLIC_KEY = TEST_SIGNING_KEY.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
"""What agents started by the tests are given as ``--coordinator-public-key``."""


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def provision_signing_key(state_dir: Path) -> Path:
    """Install :data:`TEST_SIGNING_KEY` as the state dir's signing key (if there is none yet)."""
    path = Path(state_dir) / DEFAULT_SIGNING_KEY_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(TEST_SIGNING_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        path.chmod(0o600)
    return path


def make_coordinator(broker_url: str, state_dir: Path, **settings_kwargs: object) -> Coordinator:
    """A started coordinator whose signing key is :data:`TEST_SIGNING_KEY` (other settings: ``settings_kwargs``).

    With ``FEDDST_TEST_DATABASE_URL`` set, its store is on that PostgreSQL server, in a schema of its own
    per state dir (so a coordinator restarted on the same state dir finds its runs)."""
    provision_signing_key(state_dir)
    if coordinator_tests_use_postgresql() and "database_url" not in settings_kwargs:
        settings_kwargs["database_url"] = new_schema(str(Path(state_dir).resolve()))  # same state dir, same schema
    settings = CloudSettings(broker_url=broker_url, state_dir=state_dir, heartbeat_s=1.0, mqtt_username=None,
                             **settings_kwargs)  # type: ignore[arg-type]
    coordinator = Coordinator(settings)
    assert coordinator.start(), "coordinator could not connect to the broker"
    return coordinator


def bearer(coordinator: Coordinator, role: str = "admin") -> dict[str, str]:
    """Headers with a new API token of ``role``, created in the coordinator's state dir."""
    token, _ = coordinator.tokens.create(role, name=f"test {role}")
    return {"Authorization": f"Bearer {token}"}
