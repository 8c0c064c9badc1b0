"""Writing a run's results: ``report.json`` (the contract), ``metrics.csv`` and ``accuracy_vs_upload.png``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from durable_files import write_file_durably
from feddst_core.model_file import encode_model_file
from simulator.engine import RoundRecord

MODEL_FILE = "model.safetensors"

ROW_FIELDS = ("round", "accuracy", "global_accuracy", "upload_bytes", "download_bytes", "density", "train_loss",
              "seconds", "elapsed_s")
"""Columns of a report row. ``train_loss`` is the mean local training loss of the round's clients,
``seconds`` the round's wall-clock seconds, ``elapsed_s`` the wall-clock seconds of rounds 1..round."""
WALL_CLOCK_FIELDS = ("seconds", "elapsed_s")
"""Row fields measured on the clock: the only ones that differ between two runs with the same seed."""


def build_report(algorithm: str, config: dict[str, Any], records: Sequence[RoundRecord]) -> dict[str, Any]:
    """The ``report.json`` object. Rows are the evaluated rounds; byte counts and ``elapsed_s`` are cumulative."""
    rows = []
    elapsed = 0.0
    for r in records:
        elapsed += r.seconds
        if r.accuracy is not None:
            row = {f: getattr(r, f) for f in ROW_FIELDS if f != "elapsed_s"}
            rows.append({**row, "elapsed_s": elapsed})
    last = records[-1] if records else None
    return {
        "algorithm": algorithm,
        "config": config,
        "rounds": rows,
        "final_accuracy": rows[-1]["accuracy"] if rows else None,
        "total_upload_bytes": last.upload_bytes if last else 0,
        "total_download_bytes": last.download_bytes if last else 0,
    }


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure rendered as PNG bytes; the figure is closed (its memory freed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_model(out_dir: str | Path, params: Mapping[str, Any], masks: Mapping[str, Any],
                metadata: Mapping[str, str]) -> Path:
    """Write the final global model as ``out_dir/model.safetensors`` (the layout of ``GET
    /api/runs/{id}/model``: ``feddst_core.model_file``), atomically; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_file_durably(out / MODEL_FILE, encode_model_file(params, masks, metadata))
    return out / MODEL_FILE


def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write report.json, metrics.csv and the plot into ``out_dir`` (created); returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_file_durably(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(report["rounds"])
    write_file_durably(out / "metrics.csv", table.getvalue().encode())
    plot_accuracy_vs_upload({report["algorithm"]: report}, out / "accuracy_vs_upload.png")
    return out / "report.json"


def plot_accuracy_vs_upload(reports: dict[str, dict[str, Any]], path: Path) -> None:
    """Accuracy (mean client local-test accuracy) against cumulative upload in MB, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, report in reports.items():
        rows = report["rounds"]
        ax.plot([r["upload_bytes"] / 1e6 for r in rows], [r["accuracy"] for r in rows], marker="o",
                markersize=3, label=label)
    ax.set_xscale("log")  # sparse and dense runs differ ~5x in bytes: a log axis keeps both readable
    ax.set_xlabel("cumulative upload (MB, log scale)")
    ax.set_ylabel("accuracy (mean over clients' local test sets)")
    ax.set_title("Accuracy per uploaded byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_file_durably(path, figure_png(fig))
