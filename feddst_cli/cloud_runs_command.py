"""``feddst cloud runs ls|create|start|stop|watch|report|model|delete``: runs over the coordinator's REST API.

Every command takes ``--url`` (env ``FEDDST_API_URL``) and ``--token`` (env ``FEDDST_API_TOKEN``);
an API error prints one line (``error: HTTP 409: ...``) and exits 1.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from feddst_cli.api_client import (
    DEFAULT_URL,
    CoordinatorClient,
    JsonOption,
    TokenOption,
    UrlOption,
    call_api,
    format_table,
    megabytes,
    percent,
    print_json,
    write_atomically,
)

app = typer.Typer(help="Create, start, stop, watch and inspect runs on a running coordinator (REST API).",
                  no_args_is_help=True)

RunId = Annotated[str, typer.Argument(help="Run id (from `feddst cloud runs ls`).")]
FINISHED = ("completed", "stopped", "failed", "interrupted")


def phase_text(run: dict[str, Any]) -> str:
    phase = run.get("phase")
    if not phase:
        return "-"
    return f"{phase['name']} {phase.get('progress', '')}".strip() + f" (round {phase['round']})"


@app.command("ls")
def list_runs(url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Every run: id, name, status, phase, rounds done, created (UTC), error."""
    runs = call_api(url, token, lambda client: client.get("/api/runs"))
    if as_json:
        print_json(runs)
        return
    rows = [(r["id"], r["name"] or "-", r["status"], phase_text(r), r["rounds_done"],
             time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created_at"])), r["error"]) for r in runs]
    typer.echo(format_table(("ID", "NAME", "STATUS", "PHASE", "ROUNDS", "CREATED", "ERROR"), rows))


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``eval.clients=4`` -> (["eval", "clients"], 4); the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE (e.g. rounds=20 or eval.clients=4), got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read the run config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"the run config {path} must be a JSON/TOML object (a table)")
    return data


@app.command("create")
def create(
    config: Annotated[Path | None, typer.Argument(help="JSON or TOML run config (RunConfig fields; see "
                                                  "docs/coordinator.md). Flags override it.")] = None,
    name: Annotated[str | None, typer.Option(help="Free-text label.")] = None,
    algorithm: Annotated[str | None, typer.Option(help="feddst, fedavg, fedavgm, fedprox or randommask.")] = None,
    model: Annotated[str | None, typer.Option(help="digits_cnn, mnist_cnn or cifar10_cnn.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run.")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="Devices selected per round.")] = None,
    min_devices: Annotated[int | None, typer.Option(help="Eligible devices a round waits for.")] = None,
    sparsity: Annotated[float | None, typer.Option(help="Target sparsity S in [0, 1).")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE for any RunConfig field, dotted for "
                                                   "nested ones (eval.clients=4); VALUE is JSON or a string. "
                                                   "Repeatable.")] = None,
    start: Annotated[bool, typer.Option("--start", help="Start the run right after creating it.")] = False,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Create a run (prints its id); the coordinator checks the config and names any field it rejects."""
    body: dict[str, Any] = load_config_file(config) if config is not None else {}
    flags = dict(name=name, algorithm=algorithm, model=model, rounds=rounds, clients_per_round=clients_per_round,
                 min_devices=min_devices, sparsity=sparsity, local_epochs=local_epochs)
    body.update({k: v for k, v in flags.items() if v is not None})
    for assignment in set_ or ():
        path, value = parse_assignment(assignment)
        target = body
        for key in path[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise typer.BadParameter(f"--set {assignment}: {key} is not an object")
        target[path[-1]] = value

    def create_and_start(client: CoordinatorClient) -> Any:
        run = client.post("/api/runs", body)
        return client.post(f"/api/runs/{run['id']}/start") if start else run

    run = call_api(url, token, create_and_start)
    if as_json:
        print_json(run)
    else:
        typer.echo(run["id"])


def _action(run_id: str, action: str, url: str, token: str | None, as_json: bool) -> None:
    run = call_api(url, token, lambda client: client.post(f"/api/runs/{run_id}/{action}"))
    if as_json:
        print_json(run)
    else:
        typer.echo(f"{run['id']}: {run['status']}")


@app.command("start")
def start_run(run_id: RunId, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
              as_json: JsonOption = False) -> None:
    """Start a created run (one run runs at a time)."""
    _action(run_id, "start", url, token, as_json)


@app.command("stop")
def stop_run(run_id: RunId, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
             as_json: JsonOption = False) -> None:
    """Stop a created or running run (devices get an Abort)."""
    _action(run_id, "stop", url, token, as_json)


@app.command("resume")
def resume_run(run_id: RunId, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
               as_json: JsonOption = False) -> None:
    """Resume an interrupted run from its last completed round (needed with resume_runs off)."""
    _action(run_id, "resume", url, token, as_json)


@app.command("delete")
def delete_run(run_id: RunId, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Delete a run that is not running, with its rounds and model files."""
    call_api(url, token, lambda client: client.delete(f"/api/runs/{run_id}"))
    typer.echo(f"{run_id}: deleted")


def round_line(record: dict[str, Any], rounds: int | str) -> str:
    """One progress line: round, accuracy, cumulative MB up/down, devices, seconds."""
    return (f"round {record['round']}/{rounds}  accuracy {percent(record.get('accuracy'))}  "
            f"up {megabytes(record['upload_bytes'])}  down {megabytes(record['download_bytes'])}  "
            f"devices {len(record.get('accepted', []))}/{len(record.get('selected', []))}  "
            f"{record.get('seconds') or 0.0:.1f} s")


@app.command("watch")
def watch(
    run_id: RunId,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls of GET /api/runs/{id}.")] = 1.0,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per new round (JSON lines).")] = False,
) -> None:
    """Follow a run: one line per completed round and one per phase change, until it finishes.

    Exits 0 when the run completed, 1 when it failed, was stopped or interrupted (its error printed)."""

    def follow(client: CoordinatorClient) -> Any:
        seen, last_phase = 0, None
        while True:
            run = client.get(f"/api/runs/{run_id}")
            total = run["config"].get("rounds", "?")
            for record in run["rounds"][seen:]:
                typer.echo(json.dumps(record, sort_keys=True) if as_json else round_line(record, total))
            seen = len(run["rounds"])
            phase = phase_text(run)
            if not as_json and run["status"] == "running" and phase != last_phase:
                typer.echo(f"{run_id}: {phase}", err=True)
            last_phase = phase
            if run["status"] in FINISHED:
                return run
            time.sleep(interval)

    run = call_api(url, token, follow)
    summary = f"{run_id}: {run['status']}" + (f": {run['error']}" if run["error"] else "")
    if run["status"] == "completed":
        typer.echo(summary, err=True)
        return
    typer.secho(summary, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command("report")
def report(run_id: RunId, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
           as_json: JsonOption = False) -> None:
    """A run's status, totals and per-round table (accuracy, bytes, density, devices, seconds)."""
    run = call_api(url, token, lambda client: client.get(f"/api/runs/{run_id}"))
    if as_json:
        print_json(run)
        return
    c = run["config"]
    typer.echo(f"{run['id']} {run['name'] or ''}".rstrip())
    typer.echo(f"status {run['status']}  phase {phase_text(run)}  rounds {len(run['rounds'])}/{c.get('rounds')}  "
               f"algorithm {c.get('algorithm')}  model {c.get('model')}  sparsity {c.get('sparsity')}")
    typer.echo(f"final accuracy {percent(run['final_accuracy'])}  upload {megabytes(run['total_upload_bytes'])}  "
               f"download {megabytes(run['total_download_bytes'])}" + (f"\nerror {run['error']}" if run["error"]
                                                                        else ""))
    rows = [(r["round"], percent(r.get("accuracy")), percent(r.get("global_accuracy")), megabytes(r["upload_bytes"]),
             megabytes(r["download_bytes"]), f"{r['density']:.4f}",
             f"{len(r.get('accepted', []))}/{len(r.get('selected', []))}", r.get("retries", 0),
             f"{r.get('seconds') or 0.0:.2f}") for r in run["rounds"]]
    if rows:
        typer.echo(format_table(("ROUND", "ACCURACY", "GLOBAL", "UP(CUM)", "DOWN(CUM)", "DENSITY", "DEVICES",
                                 "RETRIES", "SECONDS"), rows))


@app.command("model")
def model(
    run_id: RunId,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default RUN_ID.safetensors).")]
    = None,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None,
) -> None:
    """Download the run's current global model (safetensors; masks as '<name>.mask')."""
    path = out or Path(f"{run_id}.safetensors")
    data = call_api(url, token, lambda client: client.request("GET", f"/api/runs/{run_id}/model").content,
                    timeout_s=300.0)
    write_atomically(path, data)
    typer.echo(f"{path} ({len(data)} bytes)")
