"""``feddst compare`` and the comparison math, on reports whose answers are worked out by hand."""

import json
import re

import pytest
from simulate_args import SMALL
from typer.testing import CliRunner

from feddst_cli.main import app
from simulator.comparison import ReportError, comparison_rows, label_reports, read_report

runner = CliRunner()


def write(path, algorithm, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps({"algorithm": algorithm, "rounds": rows}))
    return path


def row(r, acc, up, elapsed=None):
    out = {"round": r, "accuracy": acc, "upload_bytes": up, "download_bytes": 2 * up}
    if elapsed is not None:
        out["elapsed_s"] = elapsed
    return out


@pytest.fixture
def two_runs(tmp_path):
    sparse = write(tmp_path / "sparse", "feddst", [row(1, 0.5, 1_000_000, 10.0), row(2, 0.8, 2_000_000, 20.0),
                                                    row(3, 0.9, 3_000_000, 30.0)])
    dense = write(tmp_path / "dense", "fedavg", [row(1, 0.6, 5_000_000, 40.0), row(2, 0.85, 10_000_000, 80.0)])
    return sparse, dense


def test_budgets_and_target_worked_by_hand(two_runs):
    named = label_reports(list(two_runs))
    rows = comparison_rows(named, budgets=[2_500_000, 6_000_000], target=0.8)
    sparse, dense = rows
    assert sparse["accuracy_at_budget"] == {"2500000": 0.8, "6000000": 0.9}
    assert dense["accuracy_at_budget"] == {"2500000": None, "6000000": 0.6}
    assert sparse["target"] == {"accuracy": 0.8, "round": 2, "upload_bytes": 2_000_000, "download_bytes": 4_000_000,
                                "elapsed_s": 20.0}
    assert dense["target"]["round"] == 2 and dense["target"]["elapsed_s"] == 80.0
    assert sparse["wall_clock_s"] == 30.0 and dense["total_upload_bytes"] == 10_000_000
    never = comparison_rows(named, budgets=[], target=0.95)
    assert never[0]["target"]["round"] is None and never[1]["target"]["upload_bytes"] is None


def test_cli_table_json_png_and_self_contained_html(two_runs, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", *map(str, two_runs), "--target", "0.8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["run", "final"]
    # default budgets: 1/8, 1/4, 1/2 and all of the smallest total upload (3 MB)
    assert "acc@0.38MB" in lines[0] and "acc@3.00MB" in lines[0]
    sparse_line = next(line for line in lines if line.startswith("feddst"))
    assert sparse_line.split()[1] == "0.9000" and sparse_line.split()[-3:] == ["2", "2.00", "20.0"]
    page = (out / "compare.html").read_text()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.findall(r'(?:src|href)="([^"]+)"', page) and all(
        u.startswith("data:image/png;base64,") for u in re.findall(r'(?:src|href)="([^"]+)"', page))
    assert "<td>feddst</td>" in page
    as_json = runner.invoke(app, ["compare", *map(str, two_runs), "--budget-mb", "6", "--json", "--out", str(out)])
    data = json.loads(as_json.output)
    assert data["budgets_bytes"] == [6_000_000]
    assert [r["accuracy_at_budget"]["6000000"] for r in data["runs"]] == [0.9, 0.6]


def test_same_algorithm_twice_is_told_apart(tmp_path):
    a = write(tmp_path / "lr01", "feddst", [row(1, 0.5, 10)])
    b = write(tmp_path / "lr02", "feddst", [row(1, 0.6, 10)])
    assert [n.label for n in label_reports([a, b])] == ["feddst (lr01)", "feddst (lr02)"]
    assert [n.label for n in label_reports([a, a / "report.json"])] == ["feddst (lr01) #1", "feddst (lr01) #2"]


def test_bad_reports_name_the_file(tmp_path):
    with pytest.raises(ReportError, match="nowhere: no such report"):
        read_report(tmp_path / "nowhere")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ReportError, match="junk.json: not a JSON report"):
        read_report(tmp_path / "junk.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match='list.json: no "rounds" list'):
        read_report(tmp_path / "list.json")
    write(tmp_path / "partial", "feddst", [row(1, 0.5, 10), {"round": 2, "accuracy": None}])
    with pytest.raises(ReportError, match=r"rounds\[1\] lacks numeric accuracy, upload_bytes"):
        read_report(tmp_path / "partial")
    result = runner.invoke(app, ["compare", str(tmp_path / "junk.json"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "junk.json: not a JSON report" in result.output
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_compares_real_simulate_reports(tmp_path):
    for algorithm in ("feddst", "fedavg"):
        done = runner.invoke(app, ["simulate", *SMALL, "--algorithm", algorithm, "--out", str(tmp_path / algorithm)])
        assert done.exit_code == 0, done.output
    result = runner.invoke(app, ["compare", str(tmp_path / "feddst"), str(tmp_path / "fedavg" / "report.json"),
                                 "--json", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    runs = {r["label"]: r for r in json.loads(result.output)["runs"]}
    sims = {a: json.loads((tmp_path / a / "report.json").read_text()) for a in ("feddst", "fedavg")}
    for algorithm, report in sims.items():
        assert runs[algorithm]["total_upload_bytes"] == report["total_upload_bytes"]
        assert runs[algorithm]["wall_clock_s"] == report["rounds"][-1]["elapsed_s"] > 0
    assert runs["feddst"]["total_upload_bytes"] < runs["fedavg"]["total_upload_bytes"]
