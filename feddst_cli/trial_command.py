"""``feddst trial run SPEC --out DIR`` and ``feddst trial plan SPEC``: field trials on shaped links."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from feddst_cli.stack_lifetime import stack_lifetime

app = typer.Typer(help="Field trials: FedDST and its baselines over a real broker and real agents on shaped links "
                  "(run), or predicted in the simulator with a link model (plan). Spec format: docs/field_trials.md.",
                  no_args_is_help=True)


def _load(spec_path: Path) -> Any:
    from field_trial.spec import TrialSpecError, load_spec

    try:
        return load_spec(spec_path)
    except TrialSpecError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def _eta(info: dict[str, Any]) -> str:
    done = info["round"]
    left = (info["rounds"] - done) * info["elapsed_s"] / max(1, done)
    return f"{left:.0f}s"


def _progress(info: dict[str, Any]) -> None:
    acc = "-" if info["accuracy"] is None else f"{info['accuracy']:.4f}"
    typer.echo(f"[{info['algorithm']}] round {info['round']}/{info['rounds']}  acc {acc}  "
               f"up {info['upload_bytes'] / 1e6:.2f} MB  down {info['download_bytes'] / 1e6:.2f} MB  "
               f"elapsed {info['elapsed_s']:.0f}s  ETA {_eta(info)}", err=True)


def plan_rounds(spec: Any, algorithm: str, host_cores: int | None) -> list[Any]:
    from field_trial.plan import PlannedTrial

    return list(PlannedTrial(spec, algorithm, host_cores=host_cores).rounds())


@app.command("plan")
def plan(spec_path: Path = typer.Argument(..., metavar="SPEC", help="Trial spec (TOML)."),
         host_cores: int = typer.Option(0, min=0, help="Scale compute as if the round's agents shared this many "
                                        "cores (what `feddst trial run` on one machine does); 0: each device has "
                                        "its own CPU."),
         json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Predict wall-clock and bytes per algorithm in the simulator with the spec's link model."""
    spec = _load(spec_path)
    result = {}
    for algorithm in spec.trial.algorithms:
        rounds = plan_rounds(spec, algorithm, host_cores or None)
        last = rounds[-1]
        final = [r for r in rounds if r.accuracy is not None][-1]
        result[algorithm] = {"final_accuracy": final.accuracy, "total_upload_bytes": last.upload_bytes,
                             "total_download_bytes": last.download_bytes,
                             "predicted_wall_clock_s": last.elapsed_predicted_s,
                             "predicted_mean_round_s": last.elapsed_predicted_s / len(rounds),
                             "dropped_updates": sum(r.dropped for r in rounds)}
        if not json_out:
            r = result[algorithm]
            typer.echo(f"{algorithm}: accuracy {r['final_accuracy']:.4f}, up {r['total_upload_bytes'] / 1e6:.2f} MB, "
                       f"down {r['total_download_bytes'] / 1e6:.2f} MB, predicted {r['predicted_wall_clock_s']:.0f} s "
                       f"({r['predicted_mean_round_s']:.1f} s a round), {r['dropped_updates']} updates past the "
                       "deadline")
    if json_out:
        typer.echo(json.dumps(result))


@app.command("run")
def run(spec_path: Path = typer.Argument(..., metavar="SPEC", help="Trial spec (TOML)."),
        out: Path = typer.Option(..., help="Output directory: <algorithm>/report.json, trial.json, trial.csv, "
                                 "trial.html, logs/, wire/."),
        plan_first: bool = typer.Option(True, "--plan/--no-plan", help="Also run `trial plan` (on this "
                                        "machine's cores) so the report shows predicted vs measured round times.")
        ) -> None:
    """Run every algorithm of SPEC live (broker, coordinator, one agent process per device), one after another."""
    from feddst_cli.demo_command import DemoError
    from field_trial.live import TrialStack
    from field_trial.netem import NetemError, require_netem
    from field_trial.trial_report import write_trial

    spec = _load(spec_path)
    if spec.trial.shaper == "netem":
        try:
            require_netem()
        except NetemError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
    out.mkdir(parents=True, exist_ok=True)
    predicted: dict[str, list[float]] = {}
    if plan_first:
        for algorithm in spec.trial.algorithms:
            typer.echo(f"planning {algorithm} in the simulator ...", err=True)
            predicted[algorithm] = [r.predicted_s for r in plan_rounds(spec, algorithm, os.cpu_count() or 1)]
    stack = TrialStack(out, spec)
    reports: dict[str, dict[str, Any]] = {}
    with stack_lifetime(stack, (DemoError, NetemError)):
        url = stack.start_broker() if spec.trial.broker == "embedded" else spec.trial.broker
        stack.start_coordinator(url)
        stack.start_agents(url)
        for algorithm in spec.trial.algorithms:
            started = time.monotonic()
            report = stack.run_algorithm(algorithm, _progress)
            if algorithm in predicted:
                report["trial"]["predicted_round_s"] = predicted[algorithm]
            reports[algorithm] = report
            typer.echo(f"[{algorithm}] done in {time.monotonic() - started:.0f}s: accuracy "
                       f"{report['final_accuracy']:.4f}", err=True)
    trial = write_trial(out, spec, reports)
    for r in trial["runs"]:
        typer.echo(f"{r['algorithm']}: accuracy {r['final_accuracy']:.4f}, payload up "
                   f"{r['total_upload_bytes'] / 1e6:.2f} MB, wire up {r['wire_upload_bytes'] / 1e6:.2f} MB / "
                   f"down {r['wire_download_bytes'] / 1e6:.2f} MB, "
                   f"{r['wall_clock_s']:.0f} s")
    typer.echo(f"wrote {out / 'trial.json'}, {out / 'trial.csv'}, {out / 'trial.html'}")
