"""``RunEventLog``: an in-memory ring of recent events per run, the source of ``GET /api/runs/{id}/events``.

The coordinator's main loop publishes (``round`` after a round is recorded, ``status`` when a run
changes status, ``device_error`` when a device reports a failed task); the SSE endpoint reads with
:meth:`RunEventLog.after`. Event ids increase across every run of the process and start at the
process's start time in milliseconds, so ids of a restarted coordinator are larger than those of
the one before (a client resuming with an old ``Last-Event-ID`` gets the new process's events).
Each run keeps its last ``capacity`` events; older ones are dropped (a client that resumes past
the ring's start re-reads ``GET /api/runs/{id}/rounds?since=N``). Thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

EVENT_KINDS = ("round", "status", "device_error")


@dataclass(frozen=True)
class RunEvent:
    """One event: ``id`` (increasing), ``kind`` (one of ``EVENT_KINDS``), ``data`` (JSON object) and
    ``published_at`` (Unix seconds when the coordinator published it)."""

    id: int
    run_id: str
    kind: str
    data: dict[str, Any]
    published_at: float

    def to_sse(self) -> str:
        """The event in the ``text/event-stream`` format (``published_at`` joins the JSON data)."""
        payload = json.dumps({**self.data, "published_at": self.published_at}, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.kind}\ndata: {payload}\n\n"


class RunEventLog:
    """The last ``capacity`` events of each of the last ``max_runs`` runs."""

    def __init__(self, capacity: int = 512, max_runs: int = 16):
        self.capacity, self.max_runs = capacity, max_runs
        self._lock = threading.Lock()
        self._next_id = int(time.time() * 1000)
        self._runs: OrderedDict[str, deque[RunEvent]] = OrderedDict()

    def publish(self, run_id: str, kind: str, data: dict[str, Any]) -> RunEvent:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
        with self._lock:
            self._next_id += 1
            event = RunEvent(self._next_id, run_id, kind, dict(data), time.time())
            ring = self._runs.get(run_id)
            if ring is None:
                ring = self._runs[run_id] = deque(maxlen=self.capacity)
                while len(self._runs) > self.max_runs:
                    self._runs.popitem(last=False)
            self._runs.move_to_end(run_id)
            ring.append(event)
        return event

    def after(self, run_id: str, last_id: int | None) -> list[RunEvent]:
        """The run's kept events with an id above ``last_id`` (all kept events for ``None``), oldest first."""
        with self._lock:
            ring = self._runs.get(run_id)
            if not ring:
                return []
            if last_id is None:
                return list(ring)
            if ring[-1].id <= last_id:
                return []
            return [e for e in ring if e.id > last_id]
