"""The coordinator's view of its devices: status, last seen, capabilities, rounds done, bytes.

A device is *online* when its last status is ``online`` or ``busy`` and it was seen (any message)
within ``3 x heartbeat_s``. Retained status messages (delivered when the coordinator subscribes)
count as seen at their envelope timestamp, so a device that died while the coordinator was down
is not mistaken for a live one. Thread-safe: the main loop writes, the API reads.

Writes: a Register or a state change is written promptly (at once, or at the end of the main loop's
batch: :meth:`DeviceRegistry.deferred_flush`), with the device's whole row; every other change (last seen,
bytes, rounds done: heartbeats, updates, tasks) is written by :meth:`DeviceRegistry.flush`, which the
coordinator calls every ~2 s, when a round closes and at shutdown (a crash loses at most those ~2 s of
them). A batch's prompt write does not take the other devices' pending changes along (at 10 000 devices
that was ~100 000 row writes per round instead of the ~40 000 heartbeat rows of the 2 s flushes).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace

from cloud.run_config import CapabilityFilter
from cloud.store import CoordinatorStore, DeviceErrorRow, DeviceRow
from protocol import Capabilities

ONLINE_STATES = ("online", "busy")


class DeviceRegistry:
    def __init__(self, store: CoordinatorStore, heartbeat_s: float):
        self.store = store
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceRow] = {row.id: row for row in store.load_devices()}
        self._dirty: set[str] = set()  # devices changed since they were last written
        self._changed: set[str] = set()  # of those, the ones with a Register or state change: written promptly
        self._capabilities_json: dict[str, str] = {}  # device -> json.dumps of its capabilities, as last written
        self._last_errors: dict[str, DeviceErrorRow] = store.last_device_errors()
        self._wire: dict[str, tuple[int, int]] = {}  # device -> cumulative (sent, received) MQTT bytes it reported
        self._deferring = False  # inside deferred_flush(): a state change's flush waits for the block's end
        self._flush_wanted = False

    def _get(self, device_id: str) -> DeviceRow:
        row = self._devices.get(device_id)
        if row is None:
            row = self._devices[device_id] = DeviceRow(device_id, {}, 0, "offline", 0.0, 0, 0, 0)
        self._dirty.add(device_id)
        return row

    def seen(self, device_id: str, at: float | None = None, bytes_up: int = 0) -> None:
        """Any message from the device (``at``: when it was sent, default now)."""
        with self._lock:
            row = self._get(device_id)
            row.last_seen = max(row.last_seen, time.time() if at is None else at)
            row.bytes_up += bytes_up

    def register(self, device_id: str, capabilities: Capabilities, sample_count: int, bytes_up: int) -> None:
        with self._lock:
            row = self._get(device_id)
            row.capabilities = asdict(capabilities)
            self._capabilities_json.pop(device_id, None)
            self._changed.add(device_id)
            row.sample_count = sample_count
            row.last_seen = time.time()
            row.bytes_up += bytes_up
            if row.state == "offline":
                row.state = "online"  # a register is sent right after connecting
        self._flush_soon()

    def status(self, device_id: str, state: str, at: float, bytes_up: int) -> None:
        with self._lock:
            row = self._get(device_id)
            changed = row.state != state
            if changed:
                self._changed.add(device_id)
            row.state = state
            row.last_seen = max(row.last_seen, at)
            row.bytes_up += bytes_up
        if changed:
            self._flush_soon()

    @contextmanager
    def deferred_flush(self) -> Iterator[None]:
        """Within the block, the flushes a Register or a status change asks for are made once, at its end
        (one transaction for a batch of inbound messages, not one fsync'd commit per changed device;
        main loop only). Also when the block raises."""
        self._deferring, self._flush_wanted = True, False
        try:
            yield
        finally:
            self._deferring = False
            if self._flush_wanted:
                self._flush_wanted = False
                self._flush_changed()

    def _flush_soon(self) -> None:
        if self._deferring:
            self._flush_wanted = True
        else:
            self._flush_changed()

    def wire_report(self, device_id: str, sent: int, received: int) -> None:
        """A device's cumulative MQTT wire bytes (``Status`` schema 2); kept in memory, never lowered
        within one agent process (a restarted agent starts from 0: a lower report replaces the old one)."""
        if sent or received:
            with self._lock:
                self._wire[device_id] = (sent, received)

    def wire_bytes(self, device_id: str) -> tuple[int, int]:
        """The last cumulative ``(sent, received)`` the device reported ((0, 0): none)."""
        with self._lock:
            return self._wire.get(device_id, (0, 0))

    def add_bytes_down(self, device_ids: list[str] | tuple[str, ...], nbytes: int) -> None:
        with self._lock:
            for device_id in device_ids:
                self._get(device_id).bytes_down += nbytes

    def error(self, error: DeviceErrorRow, bytes_up: int) -> None:
        """A device reported it could not do a task: stored (history) and kept as its ``last_error``."""
        self.store.add_device_error(error)
        with self._lock:
            row = self._get(error.device_id)
            row.last_seen = max(row.last_seen, error.at)
            row.bytes_up += bytes_up
            self._last_errors[error.device_id] = error

    def last_error(self, device_id: str) -> DeviceErrorRow | None:
        with self._lock:
            return self._last_errors.get(device_id)

    def round_done(self, device_id: str) -> None:
        with self._lock:
            self._get(device_id).rounds_done += 1

    def is_online(self, row: DeviceRow, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return row.state in ONLINE_STATES and now - row.last_seen <= 3 * self.heartbeat_s

    def online_ids(self, now: float | None = None) -> list[str]:
        """Sorted ids of the devices online now."""
        with self._lock:
            return sorted(d.id for d in self._devices.values() if self.is_online(d, now))

    def snapshot(self) -> list[tuple[DeviceRow, bool]]:
        """Copies of every device with its online flag, sorted by id."""
        now = time.time()
        with self._lock:
            return [(replace(d), self.is_online(d, now)) for d in sorted(self._devices.values(), key=lambda d: d.id)]

    def capabilities(self, device_id: str) -> dict:
        with self._lock:
            row = self._devices.get(device_id)
            return dict(row.capabilities) if row else {}

    def sample_count(self, device_id: str) -> int:
        """The sample count the device last registered (0 if it never registered)."""
        with self._lock:
            row = self._devices.get(device_id)
            return row.sample_count if row else 0

    def flush(self) -> None:
        """Persist every device changed since it was last written, in one transaction."""
        with self._lock:
            values = self._values(sorted(self._dirty))
            self._dirty.clear()
            self._changed.clear()
        self.store.save_device_values(values)

    def _flush_changed(self) -> None:
        """Persist the devices with a Register or state change not yet written (their whole rows)."""
        with self._lock:
            ids = sorted(self._changed)
            values = self._values(ids)
            self._dirty.difference_update(ids)
            self._changed.clear()
        self.store.save_device_values(values)

    def _values(self, device_ids: list[str]) -> list[tuple[str, str, int, str, float, int, int, int]]:
        """The store's values of these devices' rows now (under the lock; capabilities JSON made once)."""
        out = []
        for device_id in device_ids:
            row = self._devices[device_id]
            caps = self._capabilities_json.get(device_id)
            if caps is None:
                caps = self._capabilities_json[device_id] = json.dumps(row.capabilities)
            out.append((device_id, caps, row.sample_count, row.state, row.last_seen, row.rounds_done, row.bytes_up,
                        row.bytes_down))
        return out


def eligible_devices(registry: DeviceRegistry, select: CapabilityFilter | None,
                     admits: Callable[[str], bool] = lambda device_id: True) -> list[str]:
    """Sorted ids of the online devices that ``admits`` lets in and that meet every bound of the run's
    capability filter."""
    online = [d for d in registry.online_ids() if admits(d)]
    if select is None:
        return online
    out = []
    for device_id in online:
        caps = registry.capabilities(device_id)
        if select.min_cores is not None and caps.get("cores", 0) < select.min_cores:
            continue
        if select.min_memory_mb is not None and caps.get("memory_mb", 0) < select.min_memory_mb:
            continue
        if select.arch is not None and caps.get("arch") != select.arch:
            continue
        out.append(device_id)
    return out
