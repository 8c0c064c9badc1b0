"""Real MQTT brokers for tests: the product's :class:`~field_trial.private_mosquitto.PrivateMosquitto` (the
Debian ``mosquitto`` binary on a free loopback port, its config written by it, with auth, ACLs, the
dynamic-security plugin or TLS lines as a test needs), stopped and restarted on the same port to test
reconnects. Nothing is mocked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from field_trial.private_mosquitto import PrivateMosquitto, find_mosquitto, free_port, wait_for_port

MosquittoBroker = PrivateMosquitto  # the name the tests use

__all__ = ["MosquittoBroker", "free_port", "init_dynsec", "mosquitto_binary", "start_mosquitto", "wait_for_port"]


def mosquitto_binary() -> str:
    path = find_mosquitto()
    if path is None:
        raise RuntimeError("mosquitto is not installed: run `make setup` (apt-get install -y mosquitto)")
    return path


def init_dynsec(path: Path, admin: str, password: str) -> Path:
    """A new dynamic-security plugin file whose only user is ``admin`` (``mosquitto_ctrl dynsec init``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(path), admin, password], check=True, capture_output=True)
    return path


def start_mosquitto(workdir: Path, passwords: dict[str, str] | None = None,
                    acl_lines: Iterable[str] = ()) -> PrivateMosquitto:
    return PrivateMosquitto(workdir, passwords=dict(passwords or {}), acl_lines=list(acl_lines)).start()
