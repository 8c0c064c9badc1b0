"""Durable state of the coordinator: a database (runs, rounds, devices...) + one safetensors file per round.

The database is SQLite in ``state_dir`` (default) or PostgreSQL (setting ``database_url``), through
SQLAlchemy Core on the tables of :mod:`cloud.store_schema`; :mod:`cloud.store_database` opens it and
migrates its schema. Layout of ``state_dir``::

    coordinator.sqlite3                         (SQLite only) runs, rounds, devices, enrollments (device
                                                keys), device sequence numbers; API tokens on either
    models/<run_id>/round-00012.safetensors     global model after round 12 (and round-00000: initial)

Model files hold every parameter under its own name plus each mask as ``<name>.mask`` (bool);
they are written atomically and durably (:mod:`cloud.model_files`), and with ``checkpoint_retention``
N > 0 only round 0, the current round and the last N rounds keep their files. All methods are
thread-safe; a restarted coordinator sees every past run.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import Column, Connection, Table, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from cloud import model_files
from cloud.errors import ModelNotAvailableError, RunNotFoundError
from cloud.store_database import WRITE, open_database
from cloud.store_rows import (
    ENROLLMENT_STATUSES,
    RUN_STATUSES,
    DeviceErrorRow,
    DeviceRow,
    EnrollmentRow,
    RunRow,
    SequenceRow,
)
from cloud.store_schema import (
    RUN_TABLES,
    device_errors,
    device_sequences,
    devices,
    enrollment_generation,
    enrollments,
    rounds,
    runs,
)
from feddst_core.model_file import MASK_SUFFIX, decode_model_file, encode_model_file

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

__all__ = ["ENROLLMENT_STATUSES", "MASK_SUFFIX", "RUN_STATUSES", "CoordinatorStore", "DeviceErrorRow", "DeviceRow",
           "EnrollmentRow", "RunRow", "SequenceRow"]

RUN_COLUMNS = (runs.c.id, runs.c.name, runs.c.config, runs.c.status, runs.c.created_at, runs.c.started_at,
               runs.c.finished_at, runs.c.error, runs.c.model_round, runs.c.counters)
DEVICE_COLUMNS = (devices.c.id, devices.c.capabilities, devices.c.sample_count, devices.c.state, devices.c.last_seen,
                  devices.c.rounds_done, devices.c.bytes_up, devices.c.bytes_down)
"""A device row's columns in the order of :meth:`CoordinatorStore.save_device_values`' tuples (and of its reads)."""
SEQUENCE_COLUMNS = (device_sequences.c.device_id, device_sequences.c.last_seq, device_sequences.c.will_seq,
                    device_sequences.c.will_used)
"""A replay-state row's columns in the order :meth:`CoordinatorStore.save_sequences` writes (and reads) them."""
READ_ENROLLMENT_GENERATION = (f"SELECT {enrollment_generation.c.generation.name} FROM {enrollment_generation.name} "
                              f"WHERE {enrollment_generation.c.id.name} = 1")
BUMP_ENROLLMENT_GENERATION = enrollment_generation.update().where(enrollment_generation.c.id == 1).values(
    generation=enrollment_generation.c.generation + 1)
ENROLLMENT_COLUMNS = (enrollments.c.device_id, enrollments.c.device_key, enrollments.c.status,
                      enrollments.c.enrolled_at, enrollments.c.revoked_at)


class CoordinatorStore:
    """Runs, rounds and devices in SQLite or PostgreSQL; global models as safetensors files.

    ``database_url`` None: SQLite in ``state_dir``. ``checkpoint_retention`` 0 keeps every round's model
    file. Raises :class:`cloud.store_database.DatabaseError` when the database cannot be used."""

    def __init__(self, state_dir: Path, database_url: str | None = None, checkpoint_retention: int = 0):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_retention = int(checkpoint_retention)
        self._engine = open_database(self.state_dir, database_url)
        self.backend = self._engine.dialect.name  # "sqlite" or "postgresql"
        self._insert = postgresql_insert if self.backend == "postgresql" else sqlite_insert
        self._upserts: dict[tuple[str, tuple[str, ...]], Any] = {}  # (table, columns) -> its upsert statement
        self._placeholder = "?" if self._engine.dialect.paramstyle == "qmark" else "%s"
        self._row_upserts: dict[tuple[str, tuple[Any, ...]], str] = {}  # (table, columns) -> upsert (driver SQL)

    @classmethod
    def from_settings(cls, settings: CloudSettings) -> CoordinatorStore:
        """The store the coordinator's settings describe (``state_dir``, ``database_url``, ``checkpoint_retention``)."""
        return cls(settings.state_dir, settings.database_url, settings.checkpoint_retention)

    def close(self) -> None:
        self._engine.dispose()

    def _read(self, statement: Any) -> list[Any]:
        with self._engine.connect() as conn:
            return list(conn.execute(statement).all())

    def _write(self, *statements: Any) -> None:
        """Run ``statements`` in one transaction (``(statement, parameter list)`` pairs run as executemany)."""
        with self._writing() as conn, conn.begin():
            for statement in statements:
                if isinstance(statement, tuple):
                    conn.execute(*statement)
                else:
                    conn.execute(statement)

    def _writing(self) -> Connection:
        return self._engine.connect().execution_options(**{WRITE: True})

    def _upsert(self, table: Table, values: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
        """INSERT ... ON CONFLICT (primary key) DO UPDATE every other column (SQLite's INSERT OR REPLACE).

        The statement is built once per table and set of columns (building it cost ~150 us of the ~450 us of
        CPU of a one-row transaction; the replay guard writes one per batch of updates)."""
        shape = (table.name, tuple(values[0]))
        cached = self._upserts.get(shape)
        if cached is None:
            statement = self._insert(table)
            keys = [c.name for c in table.primary_key.columns]
            updated = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys and
                       c.name in values[0]}
            cached = self._upserts[shape] = statement.on_conflict_do_update(index_elements=keys, set_=updated)
        return cached, values

    def _upsert_rows(self, columns: tuple[Column[Any], ...], rows: list[tuple[Any, ...]]) -> None:
        """Upsert whole rows (values in the order of ``columns``, all of one table, its primary key among them)
        in one transaction, straight through the driver's ``executemany``: SQLAlchemy Core's per-row parameter
        processing and a dict per row cost more CPU than SQLite's own work (the coordinator writes ~100 000
        device rows per 10 000-device round). The statement names its columns, so the rows never depend on the
        table's column order. ``INSERT ... ON CONFLICT (key) DO UPDATE``: the same SQL on SQLite (>= 3.24) and
        PostgreSQL."""
        if not rows:
            return
        table = columns[0].table
        sql = self._row_upserts.get((table.name, columns))
        if sql is None:
            names = [c.name for c in columns]
            keys = [c.name for c in columns if c.primary_key]
            updated = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
            sql = self._row_upserts[(table.name, columns)] = (
                f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([self._placeholder] * len(names))})"
                f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updated}")
        with self._writing() as conn, conn.begin():
            conn.exec_driver_sql(sql, rows)

    # --- runs -------------------------------------------------------------------------------------

    def create_run(self, run_id: str, name: str, config: Mapping[str, Any]) -> RunRow:
        self._write(runs.insert().values(id=run_id, name=name, config=json.dumps(config), status="created",
                                         created_at=time.time()))
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRow:
        rows = self._read(select(*RUN_COLUMNS).where(runs.c.id == run_id))
        if not rows:
            raise RunNotFoundError(f"no run {run_id!r}")
        return self._run_row(rows[0])

    def list_runs(self) -> list[RunRow]:
        return [self._run_row(r) for r in self._read(select(*RUN_COLUMNS).order_by(runs.c.created_at, runs.c.id))]

    @staticmethod
    def _run_row(r: Any) -> RunRow:
        return RunRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9]))

    def set_run_status(self, run_id: str, status: str, error: str | None = None) -> None:
        assert status in RUN_STATUSES, status
        now = time.time()
        update = runs.update().where(runs.c.id == run_id)
        if status == "running":
            self._write(update.values(status=status, started_at=func.coalesce(runs.c.started_at, now),
                                      finished_at=None, error=None))  # NULLs: a resumed run
        elif status in ("completed", "stopped", "failed", "interrupted"):
            self._write(update.values(status=status, finished_at=now, error=error))
        else:
            self._write(update.values(status=status))

    def mark_unfinished_runs_interrupted(self) -> list[str]:
        """At start-up: runs left 'running' by a previous process become 'interrupted'."""
        ids = [r[0] for r in self._read(select(runs.c.id).where(runs.c.status == "running"))]
        for run_id in ids:
            self.set_run_status(run_id, "interrupted", "coordinator restarted during the run")
        return ids

    def set_run_counters(self, run_id: str, counters: Mapping[str, int]) -> None:
        self._write(runs.update().where(runs.c.id == run_id).values(counters=json.dumps(dict(counters))))

    def delete_run(self, run_id: str) -> None:
        """Remove the run, its rounds and its model files (``RunNotFoundError`` if there is no such run)."""
        self.get_run(run_id)
        self._write(*(table.delete().where(table.c.run_id == run_id) for table in RUN_TABLES),
                    runs.delete().where(runs.c.id == run_id))
        shutil.rmtree(self.models_dir / run_id, ignore_errors=True)

    # --- rounds -----------------------------------------------------------------------------------

    def add_round(self, run_id: str, record: Mapping[str, Any]) -> None:
        """Store (or replace) the record of round ``record["round"]`` (a JSON-able mapping)."""
        values = {"run_id": run_id, "round": int(record["round"]), "record": json.dumps(dict(record)),
                  **round_columns(record)}
        self._write(self._upsert(rounds, [values]))

    def rounds(self, run_id: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Round records of a run with ``round > since``, in round order, at most ``limit`` of them."""
        return [json.loads(text) for text in self.round_texts(run_id, since, limit)]

    def round_texts(self, run_id: str, since: int = 0, limit: int | None = None) -> list[str]:
        """The same records as :meth:`rounds`, as their stored JSON text (one object each), for callers
        that validate JSON straight into schemas (the API: far cheaper than ``json.loads`` per record)."""
        query = (select(rounds.c.record).where(rounds.c.run_id == run_id, rounds.c.round > since)
                 .order_by(rounds.c.round).limit(limit))
        return [r[0] for r in self._read(query)]

    def run_progress(self) -> dict[str, dict[str, Any]]:
        """Per run with rounds: ``upload_bytes``/``download_bytes`` (cumulative, of its last round) and
        ``latest_accuracy`` (of its last evaluated round, None if none was evaluated)."""
        last_round = select(rounds.c.run_id, func.max(rounds.c.round).label("m")).group_by(rounds.c.run_id).subquery()
        last = self._read(select(rounds.c.run_id, rounds.c.upload_bytes, rounds.c.download_bytes)
                          .join(last_round, (rounds.c.run_id == last_round.c.run_id)
                                & (rounds.c.round == last_round.c.m)))
        evaluated = (select(rounds.c.run_id, func.max(rounds.c.round).label("m"))
                     .where(rounds.c.accuracy.is_not(None)).group_by(rounds.c.run_id).subquery())
        accuracy = self._read(select(rounds.c.run_id, rounds.c.accuracy)
                              .join(evaluated, (rounds.c.run_id == evaluated.c.run_id)
                                    & (rounds.c.round == evaluated.c.m)))
        out: dict[str, dict[str, Any]] = {
            run_id: {"upload_bytes": up or 0, "download_bytes": down or 0, "latest_accuracy": None}
            for run_id, up, down in last}
        for run_id, acc in accuracy:
            out.setdefault(run_id, {"upload_bytes": 0, "download_bytes": 0})["latest_accuracy"] = acc
        return out

    def device_rounds(self, device_id: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """(run id, round record) of the latest ``limit`` rounds the device was selected for, newest first."""
        pattern = "%" + json.dumps(device_id).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read(select(rounds.c.run_id, rounds.c.record).where(rounds.c.record.like(pattern, escape="\\"))
                          .order_by(rounds.c.closed_at.desc().nulls_last(), rounds.c.round.desc()))
        out = []
        for run_id, text in rows:
            record = json.loads(text)
            if device_id in record.get("selected", ()):
                out.append((run_id, record))
                if len(out) >= limit:
                    break
        return out

    # --- models -----------------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    def model_path(self, run_id: str, server_round: int) -> Path:
        return model_files.round_file(self.models_dir, run_id, server_round)

    def save_model(self, run_id: str, server_round: int, params: Mapping[str, torch.Tensor],
                   masks: Mapping[str, torch.Tensor]) -> Path:
        """Write the global model of ``server_round`` atomically and durably, make it the run's current model
        (layout: ``feddst_core.model_file``), then apply ``checkpoint_retention`` to the run's files."""
        path = self.model_path(run_id, server_round)
        model_files.write_round_file(path, encode_model_file(params, masks,
                                                             {"run_id": run_id, "round": str(server_round)}))
        self._write(runs.update().where(runs.c.id == run_id).values(model_round=server_round))
        model_files.prune_round_files(path.parent, self.checkpoint_retention, server_round)
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
            saved = model_files.saved_rounds(path.parent)
            raise ModelNotAvailableError(f"run {run_id!r} has no global model of round {server_round}"
                                         + (f"; saved rounds: {model_files.describe_rounds(saved)}" if saved else ""))
        return path

    def load_model(self, run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(params, masks) of the run's current global model."""
        path = self.model_file(run_id)
        model = decode_model_file(path.read_bytes(), str(path))
        return model.params, model.masks

    # --- devices ----------------------------------------------------------------------------------

    def save_device(self, row: DeviceRow) -> None:
        self.save_devices([row])

    def save_devices(self, rows: list[DeviceRow]) -> None:
        """Upsert devices in one transaction (one commit, so one fsync on SQLite, however many rows)."""
        self.save_device_values([(row.id, json.dumps(row.capabilities), row.sample_count, row.state, row.last_seen,
                                  row.rounds_done, row.bytes_up, row.bytes_down) for row in rows])

    def save_device_values(self, values: list[tuple[str, str, int, str, float, int, int, int]]) -> None:
        """:meth:`save_devices` for rows given as ``(id, capabilities JSON, sample_count, state, last_seen,
        rounds_done, bytes_up, bytes_down)`` (the registry keeps each device's capabilities JSON)."""
        self._upsert_rows(DEVICE_COLUMNS, values)

    def add_device_error(self, error: DeviceErrorRow) -> None:
        self._write(device_errors.insert().values(device_id=error.device_id, run_id=error.run_id, round=error.round,
                                                  code=error.code, detail=error.detail, at=error.at))

    def last_device_errors(self) -> dict[str, DeviceErrorRow]:
        """Device id -> its latest reported error."""
        e = device_errors.c
        ranked = select(e.device_id, e.run_id, e.round, e.code, e.detail, e.at, func.row_number().over(
            partition_by=e.device_id, order_by=e.at.desc()).label("n")).subquery()
        rows = self._read(select(*(c for c in ranked.c if c.name != "n")).where(ranked.c.n == 1))
        return {r[0]: DeviceErrorRow(*r) for r in rows}

    def load_devices(self) -> list[DeviceRow]:
        rows = self._read(select(*DEVICE_COLUMNS).order_by(devices.c.id))
        return [DeviceRow(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]

    # --- enrollments ------------------------------------------------------------------------------

    def save_enrollment(self, device_id: str, device_key_hex: str) -> EnrollmentRow:
        """Enroll (or re-enroll) a device with a new key: status ``active``, enrolled now."""
        self._write(self._upsert(enrollments, [{"device_id": device_id, "device_key": device_key_hex,
                                                "status": "active", "enrolled_at": time.time(), "revoked_at": None}]),
                    BUMP_ENROLLMENT_GENERATION)
        row = self.get_enrollment(device_id)
        assert row is not None
        return row

    def revoke_enrollment(self, device_id: str) -> EnrollmentRow | None:
        """Mark an active enrollment revoked (a revoked one keeps its first revocation time); None: unknown."""
        self._write(enrollments.update().where(enrollments.c.device_id == device_id).values(
            status="revoked", revoked_at=func.coalesce(enrollments.c.revoked_at, time.time())),
            BUMP_ENROLLMENT_GENERATION)
        return self.get_enrollment(device_id)

    def get_enrollment(self, device_id: str) -> EnrollmentRow | None:
        rows = self._read(select(*ENROLLMENT_COLUMNS).where(enrollments.c.device_id == device_id))
        return EnrollmentRow(*rows[0]) if rows else None

    def list_enrollments(self) -> list[EnrollmentRow]:
        return [EnrollmentRow(*r) for r in self._read(select(*ENROLLMENT_COLUMNS).order_by(enrollments.c.device_id))]

    def has_enrollments(self) -> bool:
        return bool(self._read(select(enrollments.c.device_id).limit(1)))

    def enrollment_generation(self) -> int:
        """The enrollments' change counter: bumped in the same transaction as every :meth:`save_enrollment`
        and :meth:`revoke_enrollment`, by whichever process makes it (one primary-key read, straight on the
        driver's connection from the pool: the coordinator's decoder asks once per burst of received packets,
        and on SQLite this takes 15 us against 150 us through SQLAlchemy Core)."""
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(READ_ENROLLMENT_GENERATION)
            row = cursor.fetchone()
            cursor.close()
        finally:
            connection.close()  # back to the pool
        if row is None:
            raise RuntimeError("the enrollment_generation row is missing: the schema is not at migration 0003")
        return int(row[0])

    # --- device sequence numbers (replay protection) ----------------------------------------------

    def save_sequences(self, rows: list[SequenceRow]) -> None:
        """Persist devices' replay state in one transaction (u64 values are stored as decimal text)."""
        self._upsert_rows(SEQUENCE_COLUMNS, [(r.device_id, str(r.last_seq), str(r.will_seq), int(r.will_used))
                                             for r in rows])

    def load_sequences(self) -> list[SequenceRow]:
        rows = self._read(select(*SEQUENCE_COLUMNS).order_by(device_sequences.c.device_id))
        return [SequenceRow(r[0], int(r[1]), int(r[2]), bool(r[3])) for r in rows]


def round_columns(record: Mapping[str, Any]) -> dict[str, float | int | None]:
    """``closed_at``, ``upload_bytes``, ``download_bytes``, ``accuracy`` of a round record as column values
    (None where the record holds no finite number)."""
    out: dict[str, float | int | None] = {}
    for name, integer in (("closed_at", False), ("upload_bytes", True), ("download_bytes", True),
                          ("accuracy", False)):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            out[name] = None
        else:
            out[name] = int(value) if integer else float(value)
    return out
