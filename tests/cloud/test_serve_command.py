"""``feddst cloud serve`` as deployed (a subprocess with uvicorn and the embedded broker), driven over HTTP:
a fresh coordinator refuses /api until a token is created on its state dir; --data-root is honoured;
--database-url: an unreachable database is one error line, PostgreSQL keeps runs across restarts."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
from brokers import free_port
from postgres_schemas import new_schema, unavailable_reason
from served_coordinator import create_token, feddst_env, served_coordinator
from sqlalchemy import create_engine, text

from datasources import load_dataset


def test_serve_with_a_data_root_and_a_token_made_by_the_cli(tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    digits = load_dataset("digits")
    np.savez(data / "d.npz", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)
    with served_coordinator(state, "--data-root", str(data)) as served:
        base = served.url
        assert httpx.get(f"{base}/api/runs").status_code == 401
        created = create_token(state, "operator")
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        run = {"eval": {"dataset": "npz", "data_dir": str(data / "d.npz"), "clients": 4}}
        assert httpx.post(f"{base}/api/runs", json=run, headers=headers).status_code == 201
        outside = httpx.post(f"{base}/api/runs", json={"eval": {"dataset": "mnist", "data_dir": "/work"}},
                             headers=headers)
        assert outside.status_code == 422 and "data_roots" in outside.text
    assert "no API tokens yet" in served.output and "feddst cloud token create --role admin" in served.output


def test_serve_with_an_unreachable_database_is_one_line_and_a_failure(tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/x"
    done = subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--embedded-broker",
                           "--broker-port", str(free_port()), "--api-port", str(free_port()),
                           "--state-dir", str(tmp_path / "state"), "--database-url", url],
                          env=feddst_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "database_url" in errors[0] and "127.0.0.1:1" in errors[0] and "start the database server" in errors[0]


def test_serve_on_postgresql_keeps_runs_across_restarts(tmp_path):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    state, url = tmp_path / "state", new_schema()
    token = None
    with served_coordinator(state, "--database-url", url) as served:
        created = create_token(state, "operator")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        made = httpx.post(f"{served.url}/api/runs", json={"name": "on-postgres"}, headers=headers)
        assert made.status_code == 201, made.text
    with served_coordinator(state, "--database-url", url) as served:
        runs = httpx.get(f"{served.url}/api/runs", headers=headers).json()
        assert [r["name"] for r in runs] == ["on-postgres"]
    engine = create_engine(url)
    with engine.connect() as conn:  # the run is in PostgreSQL, not in a SQLite file
        assert conn.execute(text("SELECT name FROM runs")).scalars().all() == ["on-postgres"]
    engine.dispose()
