"""Replay protection for device messages: a device's sequence numbers must keep increasing.

Rule (``docs/protocol.md`` section 4, ``docs/security.md``): a Register, Status or Update from a
device is accepted only if its envelope ``seq`` is above the highest ``seq`` already accepted from
that device; anything else is a replay (or a QoS 1 redelivery, which is dropped the same way).
The state of a Register, an Update or an offline Status is written to the store before the message
is acted on, so the rule holds across coordinator restarts; heartbeats (online/busy Status) are
written in batches by :meth:`ReplayGuard.flush`, which the coordinator calls every ~2 s and at
shutdown (after a crash, a heartbeat of the last seconds could be replayed once: it only says the
device was online then).

The one exception is the device's **last will**: the broker publishes a ``Status(offline)`` that
the device composed when it connected, so its ``seq`` is below the connection's later messages.
Each Register announces the seq of its connection's will (``Register.will_seq``); a
``Status(offline)`` carrying exactly that seq is accepted once, even below the highest seq (an
older will, or the same will replayed, is refused).

Inside :meth:`ReplayGuard.batched` the durable writes of every message admitted in the block are
made in one transaction when the block ends (one fsync instead of one per message: 13 ms each on
this machine's SQLite); the coordinator admits a batch of queued messages this way and acts on them
only after the block, so "written before acted on" still holds.

Not thread-safe: the coordinator's main loop is its only user.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cloud.store import CoordinatorStore, SequenceRow
from protocol import Register, Status

REPLAYED = "replayed_seq"
"""Counter name for a message whose seq is not above the last one accepted from its device."""
RETAINED_SEEN = "retained_already_seen"
"""Counter name for a retained status the coordinator already accepted (seen again after a restart)."""


class ReplayGuard:
    """Per-device highest accepted seq and current will, persisted in the coordinator's store."""

    def __init__(self, store: CoordinatorStore) -> None:
        self.store = store
        self._rows: dict[str, SequenceRow] = {row.device_id: row for row in store.load_sequences()}
        self._dirty: set[str] = set()
        self._pending: set[str] | None = None  # devices with a durable change in the open batch (None: no batch)

    def last_seq(self, device_id: str) -> int | None:
        row = self._rows.get(device_id)
        return None if row is None else row.last_seq

    def admit(self, device_id: str, seq: int, message: object) -> bool:
        """True (and the seq recorded) if ``message`` from ``device_id`` is fresh; False if it is a replay."""
        row = self._rows.get(device_id)
        if row is not None and seq > row.last_seq and type(message) is Status and message.state != "offline":
            self._save(SequenceRow(device_id, seq, row.will_seq, row.will_used), False)  # a heartbeat
            return True
        if row is None or seq > row.last_seq:
            will_seq = row.will_seq if row is not None else 0
            will_used = row.will_used if row is not None else False
            if isinstance(message, Register):
                will_seq, will_used = message.will_seq, False
            elif _is_offline(message) and seq == will_seq:
                will_used = True
            durable = writes_durably(message)
            self._save(SequenceRow(device_id, seq, will_seq, will_used), durable)
            return True
        if _is_offline(message) and row.will_seq and seq == row.will_seq and not row.will_used:
            self._save(SequenceRow(device_id, row.last_seq, row.will_seq, True), True)  # the connection's will
            return True
        return False

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Defer the durable writes of the messages admitted in the block to one transaction at its end
        (also when the block raises: what was admitted is recorded)."""
        self._pending = set()
        try:
            yield
        finally:
            pending, self._pending = sorted(self._pending), None
            self._dirty.difference_update(pending)  # the newest state of each device is written now
            self.store.save_sequences([self._rows[d] for d in pending])

    def flush(self) -> None:
        """Write the state changed by heartbeats since the last flush."""
        rows = [self._rows[d] for d in sorted(self._dirty)]
        self._dirty.clear()
        self.store.save_sequences(rows)

    def _save(self, row: SequenceRow, durable: bool) -> None:
        self._rows[row.device_id] = row
        if durable:
            self._dirty.discard(row.device_id)
            if self._pending is not None:
                self._pending.add(row.device_id)
            else:
                self.store.save_sequences([row])
        else:
            self._dirty.add(row.device_id)


def writes_durably(message: object) -> bool:
    """Whether admitting ``message`` writes its device's replay state before it is acted on (a Register,
    an Update, a DeviceError, an offline Status); heartbeats are written by :meth:`ReplayGuard.flush`."""
    return not isinstance(message, Status) or message.state == "offline"


def _is_offline(message: object) -> bool:
    return isinstance(message, Status) and message.state == "offline"
