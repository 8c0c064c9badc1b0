"""Device enrollment and revocation: bundles out, keys into the store, credentials into the broker.

``enroll(device_id)`` draws a new random HMAC-SHA256 key (32 bytes) and MQTT password for the device
(never shared with another device), stores the key as the device's ``active`` enrollment, creates the
device's broker user and ACL role (:mod:`cloud.broker_admin`, unless ``broker_admin = "none"``) and
returns a :class:`DeviceBundle`: everything the device needs, in one JSON file (mode 0600) that
``deploy/install_agent.sh --bundle FILE`` installs. ``revoke(device_id)`` marks the enrollment
``revoked`` and deletes the broker user (which disconnects the device at once).

Both take effect without a coordinator restart, also when done by another process (``feddst cloud
devices enroll|revoke``) on the same store: every message the coordinator receives after the change
committed is judged by it (:class:`DeviceKeyring`: a change counter in the store, read once per batch
of received messages, instead of the enrollments per message).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloud.broker_admin import DynsecAdmin
from cloud.errors import (
    BrokerAdminError,
    DeviceAlreadyEnrolledError,
    DeviceNotEnrolledError,
    InvalidDeviceIdError,
)
from cloud.settings import CloudSettings
from cloud.signing_key import load_or_create_signing_key, public_key_hex, write_private_file
from cloud.store import CoordinatorStore, EnrollmentRow
from protocol import COORDINATOR_ID, AuthenticationError, is_identifier

BUNDLE_FORMAT = "feddst-device-bundle"
BUNDLE_VERSION = 1
DEVICE_KEY_BYTES = 32
REVOKED_MARK = "is revoked"
"""Part of the error of every message rejected because its sender is revoked (counted apart)."""


@dataclass(frozen=True)
class DeviceBundle:
    """What one device needs to join the fleet (secrets: ``mqtt_password``, ``device_key_hex``).

    ``mqtt_password`` is None when the coordinator does not manage the broker (``broker_admin = "none"``);
    ``ca_certificate_pem`` is None when the broker's certificate chains to a public CA (or no TLS)."""

    device_id: str
    broker_url: str
    mqtt_username: str
    mqtt_password: str | None
    device_key_hex: str
    coordinator_public_key: str
    ca_certificate_pem: str | None
    issued_at: float
    format: str = BUNDLE_FORMAT
    version: int = BUNDLE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, path: Path) -> Path:
        """Write the bundle atomically with mode 0600 (it holds the device's secrets)."""
        write_private_file(path, self.to_json().encode())
        return path


def check_device_id(device_id: str) -> str:
    if not is_identifier(device_id):
        raise InvalidDeviceIdError(f"{device_id!r} is not a valid device id: use 1-64 characters of A-Z a-z 0-9 _ . - "
                         "(not starting with . or -), e.g. dev-003")
    if device_id == COORDINATOR_ID:
        raise InvalidDeviceIdError(f"{device_id!r} is the coordinator's id; pick another device id")
    return device_id


@dataclass(frozen=True)
class KeyringSnapshot:
    """The enrollments (and legacy keys) as of one read of the store's enrollment generation.

    ``verifying``: whether messages are authenticated at all; ``lookup``/``admits`` as in
    :class:`DeviceKeyring`, answered from memory (no store access)."""

    generation: int
    rows: Mapping[str, EnrollmentRow]
    legacy_keys: Mapping[str, bytes] | None
    require: bool
    rejected: Counter[str]  # the keyring's counter (shared, so counts survive refreshes)

    @property
    def verifying(self) -> bool:
        return self.require or self.legacy_keys is not None or bool(self.rows)

    def lookup(self, device_id: str) -> bytes | None:
        """The device's HMAC key; None (counted ``not_enrolled``) for a device known to neither store nor
        legacy file; ``AuthenticationError`` naming :data:`REVOKED_MARK` (counted ``revoked``) if revoked."""
        row = self.rows.get(device_id)
        if row is not None and row.status == "active":
            return bytes.fromhex(row.device_key_hex)
        if row is not None:
            self.rejected["revoked"] += 1
            raise AuthenticationError(f"device {device_id!r} {REVOKED_MARK} (since {row.revoked_at:.0f})")
        key = (self.legacy_keys or {}).get(device_id)
        if key is None:
            self.rejected["not_enrolled"] += 1
        return key

    def admits(self, device_id: str) -> bool:
        """May this device be selected for a round (not revoked; enrolled or keyed when verifying)?"""
        row = self.rows.get(device_id)
        if row is not None:
            return row.status == "active"
        return not self.verifying or device_id in (self.legacy_keys or {})


class DeviceKeyring:
    """The coordinator's key lookup over the store's enrollments (plus a legacy key file).

    Messages are authenticated (``verifying()``) when a device is enrolled, a ``device_keys_file`` is set,
    or ``require_device_keys``. Then an active enrollment's key verifies its device's messages, a revoked
    device's messages raise ``AuthenticationError`` (containing :data:`REVOKED_MARK`), and a device known
    to neither store nor file is rejected.

    Freshness guarantee: :meth:`snapshot` reads the store's enrollment generation (one primary-key read;
    the store bumps it in the transaction of every enroll and revoke, whichever process commits it) and
    reloads the enrollments only when it moved. The coordinator's decoder takes one snapshot per batch of
    received packets, *after* taking the batch off its queue, so every message received after an enroll or
    revoke committed (by this or another process, e.g. ``feddst cloud devices revoke``) is judged by it;
    the main loop takes one per device selection. ``lookup``/``admits``/``verifying`` take a snapshot per
    call. Thread-safe.
    """

    def __init__(self, store: CoordinatorStore, legacy_keys: dict[str, bytes] | None = None, require: bool = False):
        self.store = store
        self.legacy_keys = legacy_keys
        self.require = require
        self.rejected: Counter[str] = Counter()
        self.reloads = 0  # times the enrollments were read in full (the generation moved)
        self._lock = threading.Lock()
        self._current: KeyringSnapshot | None = None

    def snapshot(self) -> KeyringSnapshot:
        """The enrollments as committed when this call began (or later): see the class docstring."""
        generation = self.store.enrollment_generation()
        with self._lock:
            current = self._current
            if current is not None and current.generation == generation:
                return current
            # read after the generation: a change committed in between is included, and the next call,
            # seeing a newer generation, reloads again
            rows = {row.device_id: row for row in self.store.list_enrollments()}
            self._current = KeyringSnapshot(generation, rows, self.legacy_keys, self.require, self.rejected)
            self.reloads += 1
            return self._current

    def verifying(self) -> bool:
        return self.snapshot().verifying

    def lookup(self, device_id: str) -> bytes | None:
        return self.snapshot().lookup(device_id)

    def admits(self, device_id: str) -> bool:
        """May this device be selected for a round (not revoked; enrolled or keyed when verifying)?"""
        return self.snapshot().admits(device_id)

    def verification_key_lookup(self) -> Callable[[str], bytes | None] | None:
        """For one decoder batch: the snapshot's ``lookup`` when messages are authenticated, else None."""
        snapshot = self.snapshot()
        return snapshot.lookup if snapshot.verifying else None


class EnrollmentService:
    """Enroll and revoke devices for one coordinator (its settings and store)."""

    def __init__(self, settings: CloudSettings, store: CoordinatorStore):
        self.settings = settings
        self.store = store

    def _admin(self) -> DynsecAdmin:
        s = self.settings
        if s.broker_admin_password is None:
            raise BrokerAdminError("broker_admin_password is not set (FEDDST_CLOUD_BROKER_ADMIN_PASSWORD): it is "
                                   f"the password of the dynsec admin user {s.broker_admin_username!r}; or set "
                                   "broker_admin = \"none\" to manage broker users yourself")
        return DynsecAdmin(s.broker_host, s.broker_port, s.broker_admin_username,
                           s.broker_admin_password.get_secret_value(), tls=s.tls_files() if s.broker_tls else None)

    def _ensure_coordinator(self, admin: DynsecAdmin) -> None:
        if self.settings.mqtt_username:
            secret = self.settings.mqtt_password
            admin.ensure_coordinator(self.settings.mqtt_username, secret.get_secret_value() if secret else None)

    def setup_broker(self) -> None:
        """Create the coordinator's broker user (mqtt_username/mqtt_password) with its ACL role, if missing."""
        if self.settings.broker_admin == "dynsec":
            with self._admin() as admin:
                self._ensure_coordinator(admin)

    def enroll(self, device_id: str, reissue: bool = False) -> DeviceBundle:
        """Issue a new bundle; an active device needs ``reissue`` (its old bundle then stops working)."""
        check_device_id(device_id)
        existing = self.store.get_enrollment(device_id)
        if existing is not None and existing.status == "active" and not reissue:
            raise DeviceAlreadyEnrolledError(f"device {device_id!r} is already enrolled (since "
                                             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(existing.enrolled_at))} "
                                             "UTC); re-issue its credentials with --reissue (API: {\"reissue\": true})")
        signing_key = load_or_create_signing_key(self.settings.signing_key_path)
        device_key = secrets.token_hex(DEVICE_KEY_BYTES)
        password: str | None = None
        if self.settings.broker_admin == "dynsec":
            password = secrets.token_urlsafe(24)
            with self._admin() as admin:
                self._ensure_coordinator(admin)
                admin.add_device(device_id, password)
        row = self.store.save_enrollment(device_id, device_key)
        ca_pem = self.settings.ca_file.read_text() if self.settings.ca_file else None
        return DeviceBundle(device_id, self.settings.bundle_broker_url, device_id, password, device_key,
                            public_key_hex(signing_key), ca_pem, row.enrolled_at)

    def revoke(self, device_id: str) -> EnrollmentRow:
        """Revoke now: the store first (the coordinator rejects its messages), then the broker user."""
        check_device_id(device_id)
        row = self.store.revoke_enrollment(device_id)
        if row is None:
            raise DeviceNotEnrolledError(f"device {device_id!r} is not enrolled")
        if self.settings.broker_admin == "dynsec":
            with self._admin() as admin:
                admin.remove_device(device_id)
        return row

    def list(self) -> list[EnrollmentRow]:
        return self.store.list_enrollments()


def enrollment_summary(row: EnrollmentRow) -> dict[str, Any]:
    """An enrollment without its key (for listings)."""
    return {"device_id": row.device_id, "status": row.status, "enrolled_at": row.enrolled_at,
            "revoked_at": row.revoked_at}
