"""``feddst cloud serve`` as deployed (a subprocess with uvicorn and the embedded broker), driven over HTTP:
a fresh coordinator refuses /api until a token is created on its state dir; --data-root is honoured."""

from __future__ import annotations

import httpx
import numpy as np
from served_coordinator import create_token, served_coordinator

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
