"""A trial's outputs: per-algorithm ``report.json`` and ``DIR/trial.json``, ``trial.csv``, ``trial.html``.

``report.json`` is simulate's schema (``simulator.report.build_report``) extended with
``"trial": {"wall_clock_s", "round_seconds": [per round], "timeline": [{"round", "selected",
"accepted", "late", "retries"}], "devices": {device: {"payload_up", "wire_up", "wire_down"}},
"wire_by_round": [{device: {"up", "down"}}], "predicted_round_s" (when planned)}``. Every byte
figure is measured: payload bytes are the coordinator's encoded messages, wire bytes the devices'
own MQTT byte counters.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from simulator.engine import RoundRecord
from simulator.report import build_report, write_report

CSV_FIELDS = ("algorithm", "final_accuracy", "total_upload_bytes", "total_download_bytes", "wire_upload_bytes",
              "wire_download_bytes", "wall_clock_s", "mean_round_s", "predicted_mean_round_s",
              "target_accuracy", "seconds_to_target", "upload_bytes_to_target", "report")


def live_report(config: Any, records: list[dict], wire_rows: list[dict], wire_totals: dict[str, dict[str, int]],
                wall_clock_s: float) -> dict[str, Any]:
    rows = [RoundRecord(round=r["round"], upload_bytes=r["upload_bytes"], download_bytes=r["download_bytes"],
                        density=r["density"], train_loss=r.get("train_loss") or 0.0, seconds=r.get("seconds") or 0.0,
                        accuracy=r["accuracy"], global_accuracy=r["global_accuracy"]) for r in records]
    report = build_report(config.algorithm, config.report_config(), rows)
    payload_up: dict[str, int] = {}
    for r in records:
        for device, size in (r.get("upload_by_device") or {}).items():
            payload_up[device] = payload_up.get(device, 0) + int(size)
    status_bytes = int(records[-1].get("status_upload_bytes", 0)) if records else 0
    wire_up = sum(w["up"] for w in wire_totals.values())
    report["trial"] = {
        "wall_clock_s": wall_clock_s,
        "round_seconds": [r.get("seconds") or 0.0 for r in records],
        "timeline": [{"round": r["round"], "selected": len(r.get("selected", ())),
                      "accepted": len(r.get("accepted", ())), "late": len(r.get("late", ())),
                      "retries": r.get("retries", 0)} for r in records],
        "devices": {d: {"payload_up": payload_up.get(d, 0), "wire_up": w["up"], "wire_down": w["down"]}
                    for d, w in sorted(wire_totals.items())},
        "wire_by_round": wire_rows,
        "wire_upload_bytes": sum(w["up"] for w in wire_totals.values()),
        "wire_download_bytes": sum(w["down"] for w in wire_totals.values()),
        # heartbeats: the devices' Status messages (encoded bytes the coordinator received during the run)
        # over every byte the devices sent; lower it with the agents' --heartbeat-s on metered links
        "status_upload_bytes": status_bytes,
        "heartbeat_share": status_bytes / wire_up if wire_up else None,
    }
    return report


def to_target(report: dict[str, Any], target: float) -> tuple[float | None, int | None]:
    """(wall-clock seconds, upload bytes) when the run first reached ``target`` accuracy; None if never."""
    for row in report["rounds"]:
        if row["accuracy"] is not None and row["accuracy"] >= target:
            return row["elapsed_s"], row["upload_bytes"]
    return None, None


def default_target(reports: dict[str, dict[str, Any]], target: float) -> float:
    """The spec's target, or FedAvg's final accuracy minus 1 point (the lowest final accuracy without FedAvg)."""
    if target:
        return target
    base = reports.get("fedavg") or min(reports.values(), key=lambda r: r["final_accuracy"] or 0.0)
    return max(0.0, (base["final_accuracy"] or 0.0) - 0.01)


def write_trial(out: Path, spec: Any, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write every report and the trial files; returns the trial.json object."""
    target = default_target(reports, spec.trial.target_accuracy)
    runs = []
    for algorithm, report in reports.items():
        write_report(out / algorithm, report)
        t = report["trial"]
        seconds, up = to_target(report, target)
        round_s = t["round_seconds"]
        predicted = t.get("predicted_round_s")
        runs.append({"algorithm": algorithm, "final_accuracy": report["final_accuracy"],
                     "total_upload_bytes": report["total_upload_bytes"],
                     "total_download_bytes": report["total_download_bytes"],
                     "wire_upload_bytes": t["wire_upload_bytes"], "wire_download_bytes": t["wire_download_bytes"],
                     "wall_clock_s": t["wall_clock_s"], "mean_round_s": sum(round_s) / max(1, len(round_s)),
                     "predicted_mean_round_s": sum(predicted) / len(predicted) if predicted else None,
                     "target_accuracy": target, "seconds_to_target": seconds, "upload_bytes_to_target": up,
                     "report": f"{algorithm}/report.json"})
    trial = {"name": spec.trial.name, "spec": spec.model_dump(mode="json"), "runs": runs}
    (out / "trial.json").write_text(json.dumps(trial, indent=2) + "\n", encoding="utf-8")
    with open(out / "trial.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(runs)
    (out / "trial.html").write_text(trial_html(trial, reports), encoding="utf-8")
    return trial


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(reports: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    for name, r in reports.items():
        acc = [row["accuracy"] for row in r["rounds"]]
        axes[0].plot([row["upload_bytes"] / 1e6 for row in r["rounds"]], acc, marker="o", markersize=3, label=name)
        axes[1].plot([row["elapsed_s"] / 60 for row in r["rounds"]], acc, marker="o", markersize=3, label=name)
    axes[0].set_xlabel("cumulative upload (MB)")
    axes[1].set_xlabel("wall-clock (min)")
    axes[0].set_ylabel("accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    out.append(("Accuracy vs cumulative upload and vs wall-clock", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(11, 4), dpi=100)
    width = 0.8 / max(1, 2 * len(reports))
    for i, (name, r) in enumerate(reports.items()):
        devices = list(r["trial"]["devices"])
        xs = range(len(devices))
        ax.bar([x + (2 * i) * width for x in xs], [r["trial"]["devices"][d]["wire_up"] / 1e6 for d in devices],
               width, label=f"{name} up")
        ax.bar([x + (2 * i + 1) * width for x in xs], [r["trial"]["devices"][d]["wire_down"] / 1e6 for d in devices],
               width, label=f"{name} down")
        ax.set_xticks(list(xs), devices, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("MQTT wire MB")
    ax.legend()
    out.append(("Bytes up/down per device (MQTT wire bytes, device side)", _png(fig)))
    plt.close(fig)
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 3.5), dpi=100, squeeze=False)
    for ax, (name, r) in zip(axes[0], reports.items(), strict=True):
        tl = r["trial"]["timeline"]
        rounds = [t["round"] for t in tl]
        for key in ("selected", "accepted", "late", "retries"):
            ax.plot(rounds, [t[key] for t in tl], marker=".", label=key)
        secs = r["trial"]["round_seconds"]
        ax2 = ax.twinx()
        ax2.bar(rounds, secs, alpha=0.15, color="grey")
        predicted = r["trial"].get("predicted_round_s")
        if predicted:
            ax2.plot(rounds[:len(predicted)], predicted[:len(rounds)], color="black", linestyle="--", label="planned s")
        ax2.set_ylabel("round seconds (bars: measured)")
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    out.append(("Round timeline: devices selected, accepted, late (dropped), retries; measured vs planned seconds",
                _png(fig)))
    plt.close(fig)
    return out


def trial_html(trial: dict[str, Any], reports: dict[str, dict[str, Any]]) -> str:
    """A self-contained page (no external URL; images as data: URIs)."""
    esc = html.escape
    head = ("<tr><th>algorithm</th><th>final accuracy</th><th>upload MB (payload)</th><th>download MB (payload)"
            "</th><th>wire up MB</th><th>wire down MB</th><th>wall-clock s</th><th>mean round s (planned)</th>"
            "<th>target</th><th>s to target</th><th>upload MB to target</th></tr>")

    def cell(value: Any, scale: float = 1.0, digits: int = 2) -> str:
        return "never" if value is None else f"{value / scale:.{digits}f}"
    rows = "".join(
        f"<tr><td>{esc(r['algorithm'])}</td><td>{cell(r['final_accuracy'], digits=4)}</td>"
        f"<td>{cell(r['total_upload_bytes'], 1e6)}</td><td>{cell(r['total_download_bytes'], 1e6)}</td>"
        f"<td>{cell(r['wire_upload_bytes'], 1e6)}</td><td>{cell(r['wire_download_bytes'], 1e6)}</td>"
        f"<td>{cell(r['wall_clock_s'], digits=1)}</td><td>{cell(r['mean_round_s'])} "
        f"({cell(r['predicted_mean_round_s'])})</td><td>{cell(r['target_accuracy'], digits=4)}</td>"
        f"<td>{cell(r['seconds_to_target'], digits=1)}</td><td>{cell(r['upload_bytes_to_target'], 1e6)}</td></tr>"
        for r in trial["runs"])
    figures = "".join(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
                      for title, data in _figures(reports))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(trial['name'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
            "#ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>Field trial: {esc(trial['name'])}</h1><table>{head}{rows}</table>{figures}"
            f"<h2>Spec</h2><pre>{esc(json.dumps(trial['spec'], indent=2))}</pre></body></html>\n")
