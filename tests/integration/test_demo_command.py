"""``feddst demo`` end to end (small): exit 0, report.json in the simulator's schema, no orphans."""

from __future__ import annotations

import json
import subprocess
import sys
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
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if "demo-000" in " ".join(p.info["cmdline"] or []) and str(out) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers
