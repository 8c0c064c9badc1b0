"""``feddst compare``: overlay finished runs (simulate, demo, live or trial reports) on shared axes."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def compare(
    reports: list[Path] = typer.Argument(..., help="report.json files, or run directories holding one "
                                         "(feddst simulate/demo --out, a trial's DIR/<algorithm>)."),
    target: float | None = typer.Option(None, min=0.0, max=1.0, help="Accuracy to reach: print the round, "
                                        "MB uploaded and seconds each run needed to reach it."),
    budget_mb: list[float] = typer.Option([], "--budget-mb", min=0.0, help="Upload cap in MB (repeatable): "
                                          "accuracy of each run within it. Default: 1/8, 1/4, 1/2 and all of "
                                          "the smallest run's total upload."),
    out: Path = typer.Option(Path("runs/compare"), help="Where compare.png and compare.html are written."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
) -> None:
    """Compare runs: accuracy vs cumulative upload, vs round and vs wall-clock (where measured).

    Prints accuracy at equal upload budgets and, with --target, what reaching that accuracy cost each run;
    writes OUT/compare.png and a self-contained OUT/compare.html.
    """
    from simulator.comparison import ReportError, comparison_rows, default_budgets, label_reports
    from simulator.comparison_report import comparison_table, plot_comparison, write_comparison_html

    try:
        named = label_reports(reports)
    except ReportError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    budgets = [int(mb * 1e6) for mb in budget_mb] or default_budgets(named)
    rows = comparison_rows(named, budgets, target)
    out.mkdir(parents=True, exist_ok=True)
    png, page = out / "compare.png", out / "compare.html"
    plot_comparison(named, png)
    header, body = comparison_table(rows, budgets)
    write_comparison_html(header, body, png, page)
    if json_output:
        typer.echo(json.dumps({"budgets_bytes": budgets, "runs": rows, "png": str(png), "html": str(page)}))
        return
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    typer.echo("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for row in body:
        typer.echo("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    typer.echo(f"wrote {png} and {page}")
