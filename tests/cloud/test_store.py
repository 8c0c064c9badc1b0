"""The coordinator store on both back ends: every test runs on SQLite (a file in tmp_path) and on the real
PostgreSQL server (a schema of its own, see tests/postgres_schemas.py), through the same public methods."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from alembic import command
from postgres_schemas import new_schema, unavailable_reason
from sqlalchemy import MetaData, Table, create_engine, text

from cloud.errors import ModelNotAvailableError, RunNotFoundError
from cloud.store import CoordinatorStore, DeviceErrorRow, DeviceRow, SequenceRow
from cloud.store_database import (
    DatabaseSchemaError,
    DatabaseUnavailableError,
    alembic_config,
    database_url,
    head_revision,
)
from feddst_core.model_file import decode_model_file

OpenStore = Callable[..., CoordinatorStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request) -> str | None:
    """None (SQLite in the state dir) or the URL of a new, empty PostgreSQL schema."""
    if request.param == "sqlite":
        return None
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return new_schema()


@pytest.fixture
def open_store(backend_url: str | None, tmp_path: Path) -> Iterator[OpenStore]:
    """Open a store on this test's database and state dir (again: as a restarted coordinator would)."""
    opened: list[CoordinatorStore] = []

    def open_(**kwargs: object) -> CoordinatorStore:
        store = CoordinatorStore(tmp_path / "state", backend_url, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> CoordinatorStore:
    return open_store()


def _model(value: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {"fc.weight": torch.full((3, 2), value), "fc.bias": torch.arange(3, dtype=torch.float32) + value}
    return params, {"fc.weight": torch.tensor([[True, False], [False, True], [True, True]])}


# --- runs and rounds ------------------------------------------------------------------------------

def test_runs_keep_their_config_status_times_and_counters(store: CoordinatorStore):
    config = {"name": "x", "rounds": 3, "nested": {"lr": 0.05, "list": [1, 2]}}
    created = store.create_run("r1", "x", config)
    assert (created.status, created.config, created.counters, created.model_round) == ("created", config, {}, None)
    store.create_run("r0", "y", {})
    store.set_run_status("r1", "running")
    started = store.get_run("r1").started_at
    assert started is not None
    time.sleep(0.01)
    store.set_run_status("r1", "running")  # a second start keeps the first start time
    assert store.get_run("r1").started_at == started
    store.set_run_counters("r1", {"updates_accepted": 7, "bytes": 2**40})
    store.set_run_status("r1", "failed", "all devices failed")
    run = store.get_run("r1")
    assert (run.status, run.error, run.counters) == ("failed", "all devices failed", {"updates_accepted": 7,
                                                                                      "bytes": 2**40})
    assert run.finished_at is not None and run.finished_at >= started
    assert [r.id for r in store.list_runs()] == ["r1", "r0"]  # creation order
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")


def test_runs_left_running_become_interrupted(store: CoordinatorStore):
    for run_id in ("a", "b", "c"):
        store.create_run(run_id, run_id, {})
    store.set_run_status("a", "running")
    store.set_run_status("c", "running")
    assert sorted(store.mark_unfinished_runs_interrupted()) == ["a", "c"]
    assert [store.get_run(r).status for r in ("a", "b", "c")] == ["interrupted", "created", "interrupted"]
    assert store.get_run("a").error == "coordinator restarted during the run"


def test_round_records_read_back_as_written_and_in_round_order(store: CoordinatorStore):
    store.create_run("r", "r", {})
    records = [{"round": r, "accuracy": None if r % 2 else r / 10, "upload_bytes": 100 * r,
                "selected": [f"d{r}"], "layer_density": {"w": 0.5}, "train_loss": float("nan") if r == 3 else 1.0}
               for r in (3, 1, 2, 4)]
    for record in records:
        store.add_round("r", record)
    store.add_round("r", {**records[2], "accuracy": 0.99})  # replaces round 2
    got = store.rounds("r")
    assert [g["round"] for g in got] == [1, 2, 3, 4]
    assert json.dumps(got[2]) == json.dumps(records[0])  # NaN survives as json.dumps wrote it
    assert math.isnan(got[2]["train_loss"]) and got[1]["accuracy"] == 0.99
    assert [g["round"] for g in store.rounds("r", since=1, limit=2)] == [2, 3]
    assert store.rounds("other") == []


def test_run_progress_is_the_last_rounds_bytes_and_last_evaluated_accuracy(store: CoordinatorStore):
    rounds = {"a": [(1, 0.2, 10, 5), (2, None, 30, 9), (3, float("nan"), 60, 12)],
              "b": [(1, None, 7, 1)]}
    for run_id, rows in rounds.items():
        store.create_run(run_id, run_id, {})
        for r, acc, up, down in rows:
            store.add_round(run_id, {"round": r, "accuracy": acc, "upload_bytes": up, "download_bytes": down})
    store.create_run("empty", "empty", {})
    # the oracle: computed here from the records, by hand
    assert store.run_progress() == {"a": {"upload_bytes": 60, "download_bytes": 12, "latest_accuracy": 0.2},
                                    "b": {"upload_bytes": 7, "download_bytes": 1, "latest_accuracy": None}}


def test_device_rounds_match_whole_ids_only_newest_first(store: CoordinatorStore):
    store.create_run("r", "r", {})
    tricky = ["a_b", "a%b", 'q"x', "a\\b"]
    store.add_round("r", {"round": 1, "selected": ["axb", "a%b"], "closed_at": 100.0})
    store.add_round("r", {"round": 2, "selected": tricky, "closed_at": 300.0})
    store.add_round("r", {"round": 3, "selected": ["a_b"], "closed_at": 200.0})
    store.add_round("r", {"round": 4, "selected": ["a_b"], "accepted": ["x"], "closed_at": None})
    store.add_round("r", {"round": 5, "selected": ["other"], "accepted": ["a_b"], "closed_at": 400.0})
    assert [rec["round"] for _, rec in store.device_rounds("a_b", 10)] == [2, 3, 4]  # unclosed last
    assert [rec["round"] for _, rec in store.device_rounds("a%b", 10)] == [2, 1]
    assert [rec["round"] for _, rec in store.device_rounds('q"x', 10)] == [2]
    assert [rec["round"] for _, rec in store.device_rounds("a\\b", 10)] == [2]
    assert store.device_rounds("axb", 10)[0][0] == "r" and len(store.device_rounds("a_b", 2)) == 2
    assert store.device_rounds("ab", 10) == []


def test_delete_run_takes_its_rounds_errors_and_files_only(store: CoordinatorStore):
    for run_id in ("gone", "kept"):
        store.create_run(run_id, run_id, {})
        store.add_round(run_id, {"round": 1, "selected": ["d"]})
        store.add_device_error(DeviceErrorRow("d", run_id, 1, "bad_data", run_id, time.time()))
        store.save_model(run_id, 0, *_model(0.0))
    store.delete_run("gone")
    assert [r.id for r in store.list_runs()] == ["kept"]
    assert store.rounds("gone") == [] and len(store.rounds("kept")) == 1
    assert store.last_device_errors()["d"].run_id == "kept"
    assert not (store.models_dir / "gone").exists() and store.model_file("kept").exists()
    with pytest.raises(RunNotFoundError):
        store.delete_run("gone")


# --- devices, errors, enrollments, sequences ------------------------------------------------------

def test_devices_are_upserted_with_64_bit_byte_counts(store: CoordinatorStore):
    store.save_device(DeviceRow("d2", {"ram_mb": 512}, 10, "online", 5.0, 1, 2**40, 3))
    store.save_device(DeviceRow("d1", {}, 0, "offline", 0.0, 0, 0, 0))
    store.save_device(DeviceRow("d2", {"ram_mb": 1024}, 11, "busy", 6.5, 2, 2**40 + 1, 2**33))
    assert store.load_devices() == [DeviceRow("d1", {}, 0, "offline", 0.0, 0, 0, 0),
                                    DeviceRow("d2", {"ram_mb": 1024}, 11, "busy", 6.5, 2, 2**40 + 1, 2**33)]


def test_devices_are_saved_in_one_batch(store: CoordinatorStore):
    store.save_device(DeviceRow("d0", {}, 1, "online", 1.0, 0, 0, 0))
    batch = [DeviceRow(f"d{i}", {"cores": i}, i, "online", float(i), i, i, i) for i in range(300)]
    store.save_devices(batch)  # d0 updated, d1..d299 inserted
    store.save_devices([])
    assert store.load_devices() == sorted(batch, key=lambda row: row.id)


def test_last_device_error_is_the_latest_per_device(store: CoordinatorStore):
    for device, at, code in (("a", 2.0, "oom"), ("a", 3.0, "bad_data"), ("a", 1.0, "late"), ("b", 1.5, "x")):
        store.add_device_error(DeviceErrorRow(device, "r", int(at), code, f"{code} detail", at))
    last = store.last_device_errors()
    assert last == {"a": DeviceErrorRow("a", "r", 3, "bad_data", "bad_data detail", 3.0),
                    "b": DeviceErrorRow("b", "r", 1, "x", "x detail", 1.5)}


def test_enrollments_enroll_revoke_and_reissue(store: CoordinatorStore):
    assert not store.has_enrollments() and store.revoke_enrollment("ghost") is None
    first = store.save_enrollment("d1", "aa" * 32)
    assert (first.status, first.revoked_at, first.device_key_hex) == ("active", None, "aa" * 32)
    revoked = store.revoke_enrollment("d1")
    assert revoked is not None and revoked.status == "revoked" and revoked.revoked_at is not None
    again = store.revoke_enrollment("d1")
    assert again is not None and again.revoked_at == revoked.revoked_at  # the first revocation time stays
    reissued = store.save_enrollment("d1", "bb" * 32)
    assert (reissued.status, reissued.revoked_at, reissued.device_key_hex) == ("active", None, "bb" * 32)
    store.save_enrollment("d0", "cc" * 32)
    assert [e.device_id for e in store.list_enrollments()] == ["d0", "d1"] and store.has_enrollments()
    assert store.get_enrollment("nobody") is None


def test_sequences_keep_unsigned_64_bit_values(store: CoordinatorStore):
    store.save_sequences([])
    store.save_sequences([SequenceRow("b", 2**64 - 1, 2**63, True), SequenceRow("a", 1)])
    store.save_sequences([SequenceRow("a", 5, 6, False)])
    assert store.load_sequences() == [SequenceRow("a", 5, 6, False), SequenceRow("b", 2**64 - 1, 2**63, True)]


def _reversed_table(table: Table) -> Table:
    """``table`` with its columns in the reverse order (same names, types and keys), in a metadata of its own."""
    return Table(table.name, MetaData(), *(column._copy() for column in reversed(table.columns)))


def test_upserts_name_their_columns_whatever_the_tables_column_order(store: CoordinatorStore, monkeypatch):
    """The devices and replay-state tables rebuilt with their columns in the reverse order (in the database and in
    the store's schema objects): rows still land in their own columns (an upsert that took the table's column
    order for its values' order would write a device's capabilities into bytes_down)."""
    import cloud.store
    from cloud.store_schema import device_sequences, devices

    for table in (devices, device_sequences):
        flipped = _reversed_table(table)
        with store._engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table.name}"))
            flipped.create(conn)
        monkeypatch.setattr(cloud.store, table.name, flipped)
    store.save_devices([DeviceRow("d1", {"ram_mb": 512}, 10, "online", 5.0, 1, 2**40, 3)])
    store.save_devices([DeviceRow("d1", {"ram_mb": 1024}, 11, "busy", 6.5, 2, 2**40 + 1, 2**33),
                        DeviceRow("d0", {}, 0, "offline", 0.0, 0, 0, 0)])
    store.save_sequences([SequenceRow("b", 2**64 - 1, 2**63, True), SequenceRow("a", 1)])
    store.save_sequences([SequenceRow("a", 5, 6, False)])
    with store._engine.connect() as conn:  # read by name, straight from the database
        device_rows = conn.execute(text("SELECT id, capabilities, sample_count, state, last_seen, rounds_done, "
                                        "bytes_up, bytes_down FROM devices ORDER BY id")).all()
        sequence_rows = conn.execute(text("SELECT device_id, last_seq, will_seq, will_used FROM device_sequences "
                                          "ORDER BY device_id")).all()
    assert [tuple(r) for r in device_rows] == [("d0", "{}", 0, "offline", 0.0, 0, 0, 0),
                                               ("d1", '{"ram_mb": 1024}', 11, "busy", 6.5, 2, 2**40 + 1, 2**33)]
    assert [tuple(r) for r in sequence_rows] == [("a", "5", "6", 0), ("b", str(2**64 - 1), str(2**63), 1)]


def test_a_reopened_store_sees_everything(open_store: OpenStore):
    first = open_store()
    first.create_run("r", "r", {"k": 1})
    first.add_round("r", {"round": 1, "upload_bytes": 9})
    first.save_model("r", 1, *_model(1.0))
    first.save_enrollment("d", "ab")
    first.close()
    second = open_store()
    assert second.get_run("r").model_round == 1 and second.rounds("r") == [{"round": 1, "upload_bytes": 9}]
    assert second.load_model("r")[0]["fc.weight"].eq(1.0).all() and second.get_enrollment("d") is not None


def test_two_stores_and_threads_write_at_once(open_store: OpenStore):
    """As the coordinator and `feddst cloud devices enroll` do: two stores on one database, several threads."""
    stores = [open_store(), open_store()]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                stores[n % 2].save_device(DeviceRow(f"t{n}-{i}", {}, i, "online", float(i), 0, 0, 0))
                stores[(n + 1) % 2].save_enrollment(f"t{n}-{i}", "ab")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stores[0].load_devices()) == 100 and len(stores[1].list_enrollments()) == 100


# --- model files ----------------------------------------------------------------------------------

def test_models_round_trip_and_missing_ones_say_so(store: CoordinatorStore):
    store.create_run("r", "r", {})
    with pytest.raises(ModelNotAvailableError, match="no global model yet"):
        store.model_file("r")
    store.save_model("r", 0, *_model(0.5))
    path = store.save_model("r", 1, *_model(2.0))
    params, masks = store.load_model("r")
    assert params["fc.weight"].eq(2.0).all() and masks["fc.weight"].tolist() == _model(0)[1]["fc.weight"].tolist()
    assert store.model_file("r") == path == store.round_model_file("r", 1)
    decoded = decode_model_file(store.round_model_file("r", 0).read_bytes())
    assert decoded.params["fc.bias"].tolist() == [0.5, 1.5, 2.5]
    with pytest.raises(ModelNotAvailableError, match="saved rounds: 0..1"):
        store.round_model_file("r", 7)


def test_retention_keeps_round_zero_the_last_n_and_the_final_round(open_store: OpenStore):
    store = open_store(checkpoint_retention=2)
    store.create_run("r", "r", {})
    run_dir = store.models_dir / "r"
    for r in range(8):
        store.save_model("r", r, *_model(float(r)))
        (run_dir / f"round-{r:05d}.sidecar.json").write_text("{}")  # a file written beside a round's model
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "round-00000.safetensors", "round-00000.sidecar.json", "round-00006.safetensors", "round-00006.sidecar.json",
        "round-00007.safetensors", "round-00007.sidecar.json"]
    assert store.load_model("r")[0]["fc.weight"].eq(7.0).all()
    with pytest.raises(ModelNotAvailableError, match="saved rounds: 0, 6..7"):
        store.round_model_file("r", 3)
    keep_all = open_store()  # checkpoint_retention 0 (default): nothing removed
    keep_all.create_run("all", "all", {})
    for r in range(5):
        keep_all.save_model("all", r, *_model(float(r)))
    assert len(list((keep_all.models_dir / "all").glob("round-*.safetensors"))) == 5


def test_model_files_are_fsynced_before_the_rename_and_the_directory_after(store: CoordinatorStore, monkeypatch):
    """Spies on the real os.fsync/os.replace (they still run) to see the order the durability contract needs."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    store.create_run("r", "r", {})
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = store.save_model("r", 3, *_model(3.0))
    monkeypatch.undo()
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert Path(events[0][1]).parent == path.parent and Path(events[0][1]).name.endswith(".tmp")  # the temp file
    assert events[1][1] == str(path) and events[2][1] == str(path.parent)  # then the directory
    assert not list(path.parent.glob("*.tmp"))


# --- schema migrations ----------------------------------------------------------------------------

def test_a_database_newer_than_the_code_is_refused_in_one_line(open_store: OpenStore, backend_url, tmp_path):
    open_store().close()
    url = database_url(tmp_path / "state", backend_url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(DatabaseSchemaError) as caught:
        open_store()
    message = str(caught.value)
    assert "\n" not in message and "database_url" in message and "9999_from_the_future" in message
    assert "upgrade" in message and head_revision() in message


def test_downgrade_to_nothing_and_upgrade_again(open_store: OpenStore, backend_url, tmp_path):
    store = open_store()
    store.create_run("r", "r", {})
    store.close()
    engine = create_engine(database_url(tmp_path / "state", backend_url))
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar() == 0
    engine.dispose()
    again = open_store()
    assert again.list_runs() == [] and again.run_progress() == {}


LEGACY_SQLITE_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT, model_round INTEGER,
    counters TEXT NOT NULL DEFAULT '{}');
CREATE TABLE rounds (run_id TEXT NOT NULL, round INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (run_id, round));
CREATE TABLE devices (id TEXT PRIMARY KEY, capabilities TEXT NOT NULL DEFAULT '{}',
    sample_count INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'offline', last_seen REAL NOT NULL DEFAULT 0,
    rounds_done INTEGER NOT NULL DEFAULT 0, bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0);
CREATE TABLE enrollments (device_id TEXT PRIMARY KEY, device_key TEXT NOT NULL, status TEXT NOT NULL,
    enrolled_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE api_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, last_used_at REAL);
"""
"""A state dir written before migrations (and before device_errors/device_sequences existed)."""


def test_a_pre_migration_sqlite_file_is_adopted_with_its_rows(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "coordinator.sqlite3")
    db.executescript(LEGACY_SQLITE_SCHEMA)
    db.execute("INSERT INTO runs (id, name, config, status, created_at, model_round) "
               "VALUES ('old', 'old', '{\"rounds\": 2}', 'completed', 1.0, 2)")
    for r, acc in ((1, 0.4), (2, None)):
        db.execute("INSERT INTO rounds VALUES ('old', ?, ?)",
                   (r, json.dumps({"round": r, "accuracy": acc, "upload_bytes": 10 * r, "download_bytes": r,
                                   "selected": ["dev"], "closed_at": float(r)})))
    db.execute("INSERT INTO enrollments VALUES ('dev', 'ab', 'active', 1.0, NULL)")
    db.execute("INSERT INTO api_tokens VALUES ('t', '', 'admin', 'x', 1.0, NULL, NULL)")
    db.commit()
    db.close()
    store = CoordinatorStore(state)
    try:
        assert store.get_run("old").config == {"rounds": 2} and store.get_enrollment("dev") is not None
        assert store.run_progress() == {"old": {"upload_bytes": 20, "download_bytes": 2, "latest_accuracy": 0.4}}
        assert [rec["round"] for _, rec in store.device_rounds("dev", 5)] == [2, 1]
        store.add_device_error(DeviceErrorRow("dev", "old", 2, "oom", "", 3.0))  # a table 0001 created
        store.save_sequences([SequenceRow("dev", 3)])
    finally:
        store.close()
    db = sqlite3.connect(state / "coordinator.sqlite3")
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    assert db.execute("SELECT COUNT(*) FROM api_tokens").fetchone() == (1,)  # another module's table is kept
    db.close()


def test_an_unreachable_database_is_one_line_naming_the_setting(tmp_path: Path):
    with pytest.raises(DatabaseUnavailableError) as caught:
        CoordinatorStore(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:1/x")
    message = str(caught.value)
    assert "\n" not in message and "database_url" in message and "127.0.0.1:1" in message
    with pytest.raises(DatabaseUnavailableError, match="not supported"):
        CoordinatorStore(tmp_path, "mysql://root@127.0.0.1/x")
    with pytest.raises(DatabaseUnavailableError) as caught:
        CoordinatorStore(tmp_path, "postgresql://nobody:s3cret@127.0.0.1:1/x")  # postgresql:// = psycopg 3
    assert "s3cret" not in str(caught.value) and "nobody:***@" in str(caught.value)


def test_settings_choose_the_back_end_from_the_environment(backend_url, tmp_path: Path, monkeypatch):
    from cloud.settings import CloudSettings

    if backend_url is not None:
        monkeypatch.setenv("FEDDST_CLOUD_DATABASE_URL", backend_url)
    monkeypatch.setenv("FEDDST_CLOUD_CHECKPOINT_RETENTION", "3")
    settings = CloudSettings.load(None, state_dir=tmp_path / "state", mqtt_username=None)
    store = CoordinatorStore.from_settings(settings)
    try:
        assert (store.backend, store.checkpoint_retention) == ("sqlite" if backend_url is None else "postgresql", 3)
    finally:
        store.close()
    assert (tmp_path / "state" / "coordinator.sqlite3").exists() == (backend_url is None)
    with pytest.raises(ValueError, match="back end 'mysql' is not supported"):
        CloudSettings(state_dir=tmp_path, database_url="mysql://root@127.0.0.1/x")


def test_an_upsert_statement_is_built_once_per_table_and_columns_and_rewrites_rows(store: CoordinatorStore,
                                                                                    open_store: OpenStore):
    from cloud.store_schema import device_sequences

    first = store._upsert(device_sequences, [{"device_id": "a", "last_seq": "1", "will_seq": "0", "will_used": 0}])[0]
    again = store._upsert(device_sequences, [{"device_id": "b", "last_seq": "2", "will_seq": "0", "will_used": 0}])[0]
    fewer = store._upsert(device_sequences, [{"device_id": "c", "last_seq": "3"}])[0]
    assert first is again and fewer is not first
    for seq in (5, 6, 7):  # the same statement, new values each time: each write lands
        store.save_sequences([SequenceRow("dev-1", seq, seq - 1, seq == 7), SequenceRow("dev-2", 10 * seq, 0, False)])
    rows = {row.device_id: row for row in open_store().load_sequences()}
    assert rows["dev-1"] == SequenceRow("dev-1", 7, 6, True) and rows["dev-2"].last_seq == 70
