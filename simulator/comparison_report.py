"""Writing a comparison: one PNG of the runs on shared axes, one self-contained HTML page (image inline)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from durable_files import write_file_durably
from simulator.comparison import NamedReport
from simulator.report import figure_png


def plot_comparison(reports: Sequence[NamedReport], path: Path) -> None:
    """Accuracy vs cumulative upload (MB, log), vs round and, where every run measured it, vs wall-clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = all(n.rows and all("elapsed_s" in r for r in n.rows) for n in reports)
    panels = 3 if timed else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 4.2), dpi=110, sharey=True)
    for n in reports:
        accuracy = [r["accuracy"] for r in n.rows]
        axes[0].plot([r["upload_bytes"] / 1e6 for r in n.rows], accuracy, marker="o", markersize=3, label=n.label)
        axes[1].plot([r["round"] for r in n.rows], accuracy, marker="o", markersize=3, label=n.label)
        if timed:
            axes[2].plot([r["elapsed_s"] / 60 for r in n.rows], accuracy, marker="o", markersize=3, label=n.label)
    axes[0].set_xscale("log")  # sparse and dense runs differ ~5x in bytes: a log axis keeps both readable
    axes[0].set_xlabel("cumulative upload (MB, log scale)")
    axes[1].set_xlabel("round")
    if timed:
        axes[2].set_xlabel("wall-clock (min)")
    axes[0].set_ylabel("accuracy (mean over clients' local test sets)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Accuracy per uploaded byte, per round" + (" and per minute" if timed else ""))
    fig.tight_layout()
    write_file_durably(path, figure_png(fig))


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def comparison_table(rows: Sequence[dict[str, Any]], budgets: Sequence[int]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the summary table (the terminal and the HTML page show the same cells)."""
    header = ["run", "final acc", "rounds", "upload MB", "download MB", "wall-clock s"]
    header += [f"acc@{b / 1e6:.2f}MB" for b in budgets]
    target = rows[0]["target"] if rows else None
    if target is not None:
        header += [f"round to {target['accuracy']:.3f}", "MB up to target", "s to target"]
    body = []
    for r in rows:
        cells = [r["label"], _cell(r["final_accuracy"], ".4f"), _cell(r["rounds"], "d"),
                 _cell(r["total_upload_bytes"] and r["total_upload_bytes"] / 1e6, ".2f"),
                 _cell(r["total_download_bytes"] and r["total_download_bytes"] / 1e6, ".2f"),
                 _cell(r["wall_clock_s"], ".1f")]
        cells += [_cell(r["accuracy_at_budget"][str(b)], ".4f") for b in budgets]
        if r["target"] is not None:
            t = r["target"]
            cells += [_cell(t["round"], "d"), _cell(t["upload_bytes"] and t["upload_bytes"] / 1e6, ".2f"),
                      _cell(t["elapsed_s"], ".1f")]
        body.append(cells)
    return header, body


def write_comparison_html(header: Sequence[str], body: Sequence[Sequence[str]], png: Path, path: Path) -> None:
    """A page with no external URL: the plot is inlined as a data: URI."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>FedDST run comparison</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}img{{max-width:100%}}
table{{border-collapse:collapse;margin-top:1rem}}th,td{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
th:first-child,td:first-child{{text-align:left}}th{{background:#f3f3f3}}</style></head>
<body><h1>FedDST run comparison</h1>
<img alt="accuracy against cumulative upload, round and wall-clock" src="data:image/png;base64,{image}">
<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<p>Accuracy is the mean over clients of the global model's accuracy on their local test sets; bytes are the
encoded protocol messages the runs counted; acc@X is the last evaluated accuracy within X MB uploaded.</p>
</body></html>
"""
    write_file_durably(path, page.encode())
