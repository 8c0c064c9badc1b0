"""``feddst demo`` end to end (small): exit 0, report.json in the simulator's schema, no orphans."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "feddst_cli.main", "demo", "--agents", "3", "--rounds", "2",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"algorithm", "config", "rounds", "final_accuracy", "total_upload_bytes",
                           "total_download_bytes"}
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert set(report["rounds"][0]) == {"round", "accuracy", "global_accuracy", "upload_bytes", "download_bytes",
                                        "density", "train_loss", "seconds", "elapsed_s"}
    assert 0 < report["total_upload_bytes"] < report["live"]["dense_fedavg_upload_bytes"]
    assert (out / "accuracy_vs_upload.png").exists() and (out / "metrics.csv").exists()
    assert "dense FedAvg would have uploaded" in proc.stdout
    assert not processes_writing_under(out / "logs")  # every agent wrote its log there and is gone


def processes_writing_under(directory: Path) -> list[psutil.Process]:
    """Live processes holding a file under ``directory`` open (the demo's agents hold their log as stdout)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if any(Path(f.path).is_relative_to(directory) for f in proc.open_files()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_the_orphan_check_sees_a_process_writing_a_log(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "agent-000.log", "wb") as log:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=log)
    try:
        deadline = time.monotonic() + 10
        while child.pid not in [p.pid for p in processes_writing_under(logs)]:
            assert time.monotonic() < deadline, "a live process writing a log under logs/ was not found"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert child.pid not in [p.pid for p in processes_writing_under(logs)]
