"""Comparing finished runs: any ``report.json`` (simulate, demo, live, trial) on shared axes.

A *report* is the ``report.json`` object (see README): ``rounds`` rows with ``round``, ``accuracy``,
cumulative ``upload_bytes`` / ``download_bytes`` and, where the run measured it, cumulative wall-clock
``elapsed_s``. All byte figures are bytes; budgets are given in bytes too (the CLI converts MB).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_ROW_KEYS = ("round", "accuracy", "upload_bytes")


class ReportError(ValueError):
    """A path that is not a readable run report; the message names the path and what is wrong."""


@dataclass(frozen=True)
class NamedReport:
    label: str  # what plots and tables call this run
    path: Path  # the report.json it was read from
    report: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.report["rounds"]


def read_report(path: Path) -> dict[str, Any]:
    """Read ``path`` (a report.json, or a run directory holding one) and check the fields comparisons need."""
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise ReportError(f"{path}: no such report (give a report.json or a run directory that holds one)")
    try:
        report = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{file}: not a JSON report ({exc})") from exc
    rows = report.get("rounds") if isinstance(report, dict) else None
    if not isinstance(rows, list):
        raise ReportError(f"{file}: no \"rounds\" list; expected a report.json written by feddst")
    for i, row in enumerate(rows):
        missing = [k for k in REQUIRED_ROW_KEYS if not isinstance(row, dict) or not isinstance(row.get(k), int | float)]
        if missing:
            raise ReportError(f"{file}: rounds[{i}] lacks numeric {', '.join(missing)}")
    return report


def label_reports(paths: Sequence[Path]) -> list[NamedReport]:
    """Read every path; label each run by its algorithm, adding the directory name where algorithms repeat."""
    reports = [(p, read_report(p)) for p in paths]
    algorithms = [str(r.get("algorithm", "run")) for _, r in reports]
    named = []
    for (path, report), algorithm in zip(reports, algorithms, strict=True):
        run_dir = path if path.is_dir() else path.parent
        label = algorithm if algorithms.count(algorithm) == 1 else f"{algorithm} ({run_dir.name or run_dir})"
        named.append(NamedReport(label, path, report))
    labels = [n.label for n in named]
    return [NamedReport(f"{n.label} #{i + 1}", n.path, n.report) if labels.count(n.label) > 1 else n
            for i, n in enumerate(named)]


def accuracy_within_budget(report: dict[str, Any], budget_bytes: int) -> float | None:
    """Accuracy of the last evaluated round whose cumulative upload fits in ``budget_bytes`` (None: none fits)."""
    fitting = [r["accuracy"] for r in report["rounds"] if r["upload_bytes"] <= budget_bytes]
    return fitting[-1] if fitting else None


def first_reaching(report: dict[str, Any], target: float) -> dict[str, Any] | None:
    """The first evaluated round whose accuracy is >= ``target`` (None: never reached)."""
    return next((r for r in report["rounds"] if r["accuracy"] >= target), None)


def default_budgets(reports: Sequence[NamedReport], fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0)) -> list[int]:
    """Upload caps (bytes) at fractions of the smallest total upload: every run can be judged at each."""
    totals = [n.rows[-1]["upload_bytes"] for n in reports if n.rows]
    return [int(min(totals) * f) for f in fractions] if totals else []


def comparison_rows(reports: Sequence[NamedReport], budgets: Sequence[int],
                    target: float | None) -> list[dict[str, Any]]:
    """One summary dict per run: final accuracy, totals, accuracy at each budget, cost of reaching ``target``."""
    out = []
    for n in reports:
        last = n.rows[-1] if n.rows else {}
        reached = first_reaching(n.report, target) if target is not None else None
        out.append({
            "label": n.label,
            "report": str(n.path),
            "final_accuracy": last.get("accuracy"),
            "rounds": last.get("round"),
            "total_upload_bytes": last.get("upload_bytes"),
            "total_download_bytes": last.get("download_bytes"),
            "wall_clock_s": last.get("elapsed_s"),
            "accuracy_at_budget": {str(b): accuracy_within_budget(n.report, b) for b in budgets},
            "target": None if target is None else {
                "accuracy": target,
                "round": reached["round"] if reached else None,
                "upload_bytes": reached["upload_bytes"] if reached else None,
                "download_bytes": reached.get("download_bytes") if reached else None,
                "elapsed_s": reached.get("elapsed_s") if reached else None,
            },
        })
    return out
