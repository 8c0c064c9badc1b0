"""``feddst cloud serve`` as deployed (a subprocess with uvicorn and the embedded broker), driven over HTTP:
a fresh coordinator refuses /api until a token is created on its state dir; --data-root is honoured."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
from brokers import free_port

from datasources import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_serve_with_a_data_root_and_a_token_made_by_the_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    digits = load_dataset("digits")
    np.savez(data / "d.npz", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)
    api_port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "feddst_cli.main", "cloud", "serve", "--embedded-broker", "--broker-port",
         str(free_port()), "--api-port", str(api_port), "--state-dir", str(state), "--data-root", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{api_port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert serve.poll() is None and time.monotonic() < end, "coordinator did not come up"
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/runs").status_code == 401
        created = subprocess.run([sys.executable, "-m", "feddst_cli.main", "cloud", "token", "create", "--role",
                                  "operator", "--state-dir", str(state)], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        run = {"eval": {"dataset": "npz", "data_dir": str(data / "d.npz"), "clients": 4}}
        assert httpx.post(f"{base}/api/runs", json=run, headers=headers).status_code == 201
        outside = httpx.post(f"{base}/api/runs", json={"eval": {"dataset": "mnist", "data_dir": "/work"}},
                             headers=headers)
        assert outside.status_code == 422 and "data_roots" in outside.text
    finally:
        serve.terminate()
        output, _ = serve.communicate(timeout=30)
    assert "no API tokens yet" in output and "feddst cloud token create --role admin" in output
