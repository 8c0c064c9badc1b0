"""Durable state of the coordinator: SQLite (runs, rounds, devices) + one safetensors file per round.

Layout of ``state_dir``::

    coordinator.sqlite3                         runs, rounds, devices, enrollments (device keys), device
                                                sequence numbers
    models/<run_id>/round-00012.safetensors     global model after round 12 (and round-00000: initial)

Model files hold every parameter under its own name plus each mask as ``<name>.mask`` (bool);
they are written atomically (temp file + ``os.replace``). All methods are thread-safe (one
connection guarded by a lock); a restarted coordinator sees every past run.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cloud.errors import ModelNotAvailableError, RunNotFoundError
from feddst_core.model_file import MASK_SUFFIX, decode_model_file, encode_model_file

RUN_STATUSES = ("created", "running", "completed", "stopped", "failed", "interrupted")
__all__ = ["MASK_SUFFIX", "CoordinatorStore", "DeviceErrorRow", "DeviceRow", "RunRow"]
RUN_TABLES = ("rounds", "device_errors")  # tables keyed by run_id whose rows go with the run (delete_run)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
    model_round INTEGER, counters TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS device_errors (
    device_id TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL, code TEXT NOT NULL,
    detail TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS device_errors_by_device ON device_errors (device_id, at);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, capabilities TEXT NOT NULL DEFAULT '{}', sample_count INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'offline', last_seen REAL NOT NULL DEFAULT 0,
    rounds_done INTEGER NOT NULL DEFAULT 0, bytes_up INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS enrollments (
    device_id TEXT PRIMARY KEY, device_key TEXT NOT NULL, status TEXT NOT NULL,
    enrolled_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS device_sequences (
    device_id TEXT PRIMARY KEY, last_seq TEXT NOT NULL, will_seq TEXT NOT NULL DEFAULT '0',
    will_used INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class RunRow:
    id: str
    name: str
    config: dict[str, Any]
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    model_round: int | None
    counters: dict[str, int]


@dataclass(frozen=True)
class SequenceRow:
    """Replay state of one device: the highest seq accepted, and its current last will (u64 values)."""

    device_id: str
    last_seq: int
    will_seq: int = 0
    will_used: bool = False


@dataclass(frozen=True)
class DeviceErrorRow:
    """One error a device reported: the task (run, round) it could not do, a reason code, a text, when."""

    device_id: str
    run_id: str
    round: int
    code: str
    detail: str
    at: float


@dataclass
class DeviceRow:
    id: str
    capabilities: dict[str, Any]
    sample_count: int
    state: str
    last_seen: float
    rounds_done: int
    bytes_up: int
    bytes_down: int


ENROLLMENT_STATUSES = ("active", "revoked")


@dataclass(frozen=True)
class EnrollmentRow:
    """An enrolled device: its HMAC key (hex) and whether it is ``active`` or ``revoked`` (Unix times)."""

    device_id: str
    device_key_hex: str
    status: str
    enrolled_at: float
    revoked_at: float | None


class CoordinatorStore:
    """Runs, rounds and devices in SQLite; global models as safetensors files."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        db_path = self.state_dir / "coordinator.sqlite3"
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        os.chmod(db_path, 0o600)  # it holds the device keys; SQLite gives its -wal/-shm files the same mode
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- runs -------------------------------------------------------------------------------------

    def create_run(self, run_id: str, name: str, config: Mapping[str, Any]) -> RunRow:
        self._execute("INSERT INTO runs (id, name, config, status, created_at) VALUES (?, ?, ?, 'created', ?)",
                      (run_id, name, json.dumps(config), time.time()))
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRow:
        rows = self._execute("SELECT id, name, config, status, created_at, started_at, finished_at, error, "
                             "model_round, counters FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(f"no run {run_id!r}")
        return self._run_row(rows[0])

    def list_runs(self) -> list[RunRow]:
        rows = self._execute("SELECT id, name, config, status, created_at, started_at, finished_at, error, "
                             "model_round, counters FROM runs ORDER BY created_at, id")
        return [self._run_row(r) for r in rows]

    @staticmethod
    def _run_row(r: tuple) -> RunRow:
        return RunRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9]))

    def set_run_status(self, run_id: str, status: str, error: str | None = None) -> None:
        assert status in RUN_STATUSES, status
        now = time.time()
        if status == "running":
            self._execute("UPDATE runs SET status = ?, started_at = COALESCE(started_at, ?), finished_at = NULL, "
                          "error = NULL WHERE id = ?", (status, now, run_id))  # NULLs: a resumed run
        elif status in ("completed", "stopped", "failed", "interrupted"):
            self._execute("UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                          (status, now, error, run_id))
        else:
            self._execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))

    def mark_unfinished_runs_interrupted(self) -> list[str]:
        """At start-up: runs left 'running' by a previous process become 'interrupted'."""
        ids = [r[0] for r in self._execute("SELECT id FROM runs WHERE status = 'running'")]
        for run_id in ids:
            self.set_run_status(run_id, "interrupted", "coordinator restarted during the run")
        return ids

    def set_run_counters(self, run_id: str, counters: Mapping[str, int]) -> None:
        self._execute("UPDATE runs SET counters = ? WHERE id = ?", (json.dumps(dict(counters)), run_id))

    def delete_run(self, run_id: str) -> None:
        """Remove the run, its rounds and its model files (``RunNotFoundError`` if there is no such run)."""
        self.get_run(run_id)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for table in RUN_TABLES:
                    self._db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        shutil.rmtree(self.state_dir / "models" / run_id, ignore_errors=True)

    # --- rounds -----------------------------------------------------------------------------------

    def add_round(self, run_id: str, record: Mapping[str, Any]) -> None:
        self._execute("INSERT OR REPLACE INTO rounds (run_id, round, record) VALUES (?, ?, ?)",
                      (run_id, int(record["round"]), json.dumps(dict(record))))

    def rounds(self, run_id: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Round records of a run with ``round > since``, in round order, at most ``limit`` of them."""
        return [json.loads(text) for text in self.round_texts(run_id, since, limit)]

    def round_texts(self, run_id: str, since: int = 0, limit: int | None = None) -> list[str]:
        """The same records as :meth:`rounds`, as their stored JSON text (one object each), for callers
        that validate JSON straight into schemas (the API: far cheaper than ``json.loads`` per record)."""
        rows = self._execute("SELECT record FROM rounds WHERE run_id = ? AND round > ? ORDER BY round LIMIT ?",
                             (run_id, since, -1 if limit is None else limit))
        return [r[0] for r in rows]

    def run_progress(self) -> dict[str, dict[str, Any]]:
        """Per run with rounds: ``upload_bytes``/``download_bytes`` (cumulative, of its last round) and
        ``latest_accuracy`` (of its last evaluated round, None if none was evaluated)."""
        last = self._execute(
            "SELECT r.run_id, json_extract(r.record, '$.upload_bytes'), json_extract(r.record, '$.download_bytes') "
            "FROM rounds r JOIN (SELECT run_id, MAX(round) AS m FROM rounds GROUP BY run_id) t "
            "ON r.run_id = t.run_id AND r.round = t.m")
        accuracy = self._execute(
            "SELECT r.run_id, json_extract(r.record, '$.accuracy') FROM rounds r JOIN (SELECT run_id, MAX(round) AS m "
            "FROM rounds WHERE json_extract(record, '$.accuracy') IS NOT NULL GROUP BY run_id) t "
            "ON r.run_id = t.run_id AND r.round = t.m")
        out = {run_id: {"upload_bytes": up or 0, "download_bytes": down or 0, "latest_accuracy": None}
               for run_id, up, down in last}
        for run_id, acc in accuracy:
            out.setdefault(run_id, {"upload_bytes": 0, "download_bytes": 0})["latest_accuracy"] = acc
        return out

    def device_rounds(self, device_id: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """(run id, round record) of the latest ``limit`` rounds the device was selected for, newest first."""
        pattern = "%" + json.dumps(device_id).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._execute("SELECT run_id, record FROM rounds WHERE record LIKE ? ESCAPE '\\' "
                             "ORDER BY json_extract(record, '$.closed_at') DESC, round DESC", (pattern,))
        out = []
        for run_id, text in rows:
            record = json.loads(text)
            if device_id in record.get("selected", ()):
                out.append((run_id, record))
                if len(out) >= limit:
                    break
        return out

    # --- models -----------------------------------------------------------------------------------

    def model_path(self, run_id: str, server_round: int) -> Path:
        return self.state_dir / "models" / run_id / f"round-{server_round:05d}.safetensors"

    def save_model(self, run_id: str, server_round: int, params: Mapping[str, torch.Tensor],
                   masks: Mapping[str, torch.Tensor]) -> Path:
        """Write the global model of ``server_round`` atomically and make it the run's current model
        (layout: ``feddst_core.model_file``)."""
        path = self.model_path(run_id, server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(encode_model_file(params, masks, {"run_id": run_id, "round": str(server_round)}))
        os.replace(tmp, path)
        self._execute("UPDATE runs SET model_round = ? WHERE id = ?", (server_round, run_id))
        return path

    def model_file(self, run_id: str) -> Path:
        """The current global model file of a run (raises if the run has none yet)."""
        run = self.get_run(run_id)
        if run.model_round is None or not self.model_path(run_id, run.model_round).exists():
            raise ModelNotAvailableError(f"run {run_id!r} has no global model yet")
        return self.model_path(run_id, run.model_round)

    def round_model_file(self, run_id: str, server_round: int) -> Path:
        """The global model file saved after ``server_round`` (raises if there is none)."""
        self.get_run(run_id)
        path = self.model_path(run_id, server_round)
        if not path.exists():
            saved = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("round-*.safetensors"))
            raise ModelNotAvailableError(f"run {run_id!r} has no global model of round {server_round}"
                                         + (f"; saved rounds: {saved[0]}..{saved[-1]}" if saved else ""))
        return path

    def load_model(self, run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(params, masks) of the run's current global model."""
        path = self.model_file(run_id)
        model = decode_model_file(path.read_bytes(), str(path))
        return model.params, model.masks

    # --- devices ----------------------------------------------------------------------------------

    def save_device(self, row: DeviceRow) -> None:
        self._execute(
            "INSERT OR REPLACE INTO devices (id, capabilities, sample_count, state, last_seen, rounds_done, "
            "bytes_up, bytes_down) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, json.dumps(row.capabilities), row.sample_count, row.state, row.last_seen, row.rounds_done,
             row.bytes_up, row.bytes_down))

    def add_device_error(self, error: DeviceErrorRow) -> None:
        self._execute("INSERT INTO device_errors (device_id, run_id, round, code, detail, at) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
                      (error.device_id, error.run_id, error.round, error.code, error.detail, error.at))

    def last_device_errors(self) -> dict[str, DeviceErrorRow]:
        """Device id -> its latest reported error."""
        rows = self._execute("SELECT device_id, run_id, round, code, detail, MAX(at) FROM device_errors "
                             "GROUP BY device_id")
        return {r[0]: DeviceErrorRow(*r) for r in rows}

    def load_devices(self) -> list[DeviceRow]:
        rows = self._execute("SELECT id, capabilities, sample_count, state, last_seen, rounds_done, bytes_up, "
                             "bytes_down FROM devices ORDER BY id")
        return [DeviceRow(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]

    # --- enrollments ------------------------------------------------------------------------------

    def save_enrollment(self, device_id: str, device_key_hex: str) -> EnrollmentRow:
        """Enroll (or re-enroll) a device with a new key: status ``active``, enrolled now."""
        self._execute("INSERT OR REPLACE INTO enrollments (device_id, device_key, status, enrolled_at, revoked_at) "
                      "VALUES (?, ?, 'active', ?, NULL)", (device_id, device_key_hex, time.time()))
        row = self.get_enrollment(device_id)
        assert row is not None
        return row

    def revoke_enrollment(self, device_id: str) -> EnrollmentRow | None:
        """Mark an active enrollment revoked (a revoked one keeps its first revocation time); None: unknown."""
        self._execute("UPDATE enrollments SET status = 'revoked', revoked_at = COALESCE(revoked_at, ?) "
                      "WHERE device_id = ?", (time.time(), device_id))
        return self.get_enrollment(device_id)

    def get_enrollment(self, device_id: str) -> EnrollmentRow | None:
        rows = self._execute("SELECT device_id, device_key, status, enrolled_at, revoked_at FROM enrollments "
                             "WHERE device_id = ?", (device_id,))
        return EnrollmentRow(*rows[0]) if rows else None

    def list_enrollments(self) -> list[EnrollmentRow]:
        rows = self._execute("SELECT device_id, device_key, status, enrolled_at, revoked_at FROM enrollments "
                             "ORDER BY device_id")
        return [EnrollmentRow(*r) for r in rows]

    def has_enrollments(self) -> bool:
        return bool(self._execute("SELECT EXISTS (SELECT 1 FROM enrollments)")[0][0])

    # --- device sequence numbers (replay protection) ----------------------------------------------

    def save_sequences(self, rows: list[SequenceRow]) -> None:
        """Persist devices' replay state in one transaction (u64 values are stored as decimal text)."""
        if not rows:
            return
        values = [(r.device_id, str(r.last_seq), str(r.will_seq), int(r.will_used)) for r in rows]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO device_sequences (device_id, last_seq, will_seq, "
                                     "will_used) VALUES (?, ?, ?, ?)", values)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def load_sequences(self) -> list[SequenceRow]:
        rows = self._execute("SELECT device_id, last_seq, will_seq, will_used FROM device_sequences ORDER BY device_id")
        return [SequenceRow(r[0], int(r[1]), int(r[2]), bool(r[3])) for r in rows]
