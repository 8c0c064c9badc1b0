"""``feddst demo --serve``: after the run the dashboard and the API stay up (URL and token printed) until
SIGTERM, which stops everything with exit 0 and no orphaned agents."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from brokers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_serve_keeps_the_dashboard_up_until_sigterm(tmp_path):
    out, port = tmp_path / "demo", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "feddst_cli.main", "demo", "--agents", "2", "--rounds", "2",
                             "--out", str(out), "--serve", "--api-port", str(port)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        lines: list[str] = []
        end = time.monotonic() + 240
        while not any(line.startswith("operator token") for line in lines):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line or proc.poll() is None, f"demo exited early: {lines}"
            lines.append(line)
            assert time.monotonic() < end, lines
        assert f"dashboard: http://127.0.0.1:{port}/" in "".join(lines)
        token = re.search(r"operator token .*: (\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/").status_code == 200
        runs = httpx.get(base + "/api/runs", headers={"Authorization": f"Bearer {token}"}).json()
        assert [(r["status"], r["rounds_done"]) for r in runs] == [("completed", 2)]
        devices = httpx.get(base + "/api/devices", headers={"Authorization": f"Bearer {token}"}).json()
        assert sorted(d["id"] for d in devices) == ["demo-000", "demo-001"]
        agents = [c for c in psutil.Process(proc.pid).children(recursive=True) if "agent" in " ".join(c.cmdline())]
        assert len(agents) == 2  # still up while serving (the devices table shows them online)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [a.pid for a in agents if a.is_running() and a.status() != psutil.STATUS_ZOMBIE]
