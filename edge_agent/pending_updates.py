"""Unacknowledged updates kept on disk, so an agent restarted before its Ack still delivers them.

One file per (run, round) in ``<state_dir>/pending/``: a JSON header line (topic, the deadline on
this device's own wall clock, format version) then the Update encoded without key and seq (the
agent signs and numbers it afresh at each publish). Files are written to a temporary name,
fsync'd, renamed, and the directory fsync'd, so a crash leaves the old file or the new one, never
a half-written one. An unreadable file is moved aside (``*.bad``) and reported, never fatal.

Deadlines: the device clock may be wrong by minutes, but it is the same clock before and after a
restart, so storing the deadline as this clock's time keeps the remaining time right.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from durable_files import write_file_durably
from protocol import ProtocolError, Update, decode_message, encode_message

log = logging.getLogger("feddst.agent.pending")

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StoredUpdate:
    topic: str
    update: Update
    deadline_wall: float  # this device's wall clock (its offset included), seconds


class PendingUpdateStore:
    """The ``pending`` directory under an agent's state dir."""

    def __init__(self, state_dir: str | Path) -> None:
        self.directory = Path(state_dir) / "pending"
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str, server_round: int) -> Path:
        return self.directory / f"{run_id}.{server_round}.update"

    def save(self, stored: StoredUpdate) -> None:
        """Write one update durably (:func:`durable_files.write_file_durably`)."""
        update = stored.update
        header = json.dumps({"format": FORMAT_VERSION, "topic": stored.topic, "deadline_wall": stored.deadline_wall})
        path = self._path(update.run_id, update.server_round)
        write_file_durably(path, header.encode() + b"\n" + encode_message(update, None, seq=0))

    def remove(self, run_id: str, server_round: int) -> None:
        self._path(run_id, server_round).unlink(missing_ok=True)

    def load(self) -> list[StoredUpdate]:
        """Every stored update; unreadable files are renamed ``*.bad`` and logged."""
        out = []
        for path in sorted(self.directory.glob("*.update")):
            try:
                header_raw, _, body = path.read_bytes().partition(b"\n")
                header = json.loads(header_raw)
                if header.get("format") != FORMAT_VERSION:
                    raise ValueError(f"format {header.get('format')!r} is not {FORMAT_VERSION}")
                update = decode_message(body)
                if not isinstance(update, Update):
                    raise ValueError(f"holds a {type(update).__name__}, not an Update")
                out.append(StoredUpdate(str(header["topic"]), update, float(header["deadline_wall"])))
            except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
                log.warning("pending update %s is unreadable (%s); moved aside as .bad", path, exc)
                path.rename(path.with_suffix(".bad"))
        return out
