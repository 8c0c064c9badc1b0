"""``feddst export onnx``: a global model as an ONNX file for devices that only run it."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import typer

app = typer.Typer(
    name="export",
    help="Export a trained global model for use outside FedDST (run `feddst export onnx --help`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SOURCE = "Where the model comes from (one of --from, --run)"
API_TIMEOUT_S = 60.0


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def describe_onnx(data: bytes) -> str:
    """One line about an exported model: its name, run, round, accuracy and mean density."""
    import onnx

    from inference.model_card import ModelCard

    model = onnx.load_from_string(data)
    card = ModelCard.from_properties({p.key: p.value for p in model.metadata_props})
    density = ", ".join(f"{name} {value:.3f}" for name, value in card.density.items())
    return (f"{card.model}, input {card.input_shape}, run {card.run_id or '-'}, round "
            f"{'-' if card.server_round is None else card.server_round}, accuracy "
            f"{'-' if card.accuracy is None else f'{card.accuracy:.4f}'}; weight densities: {density or '-'}")


def _from_file(source: Path, model: str | None, dataset: str | None, sparse: bool) -> bytes:
    from feddst_core.model_file import ModelFileError, decode_model_file
    from feddst_core.models import get_model_spec
    from feddst_core.onnx_export import OnnxExportError, export_model

    try:
        loaded = decode_model_file(source.read_bytes(), str(source))
    except OSError as exc:
        _fail(f"--from {source}: cannot read it ({exc})")
    except ModelFileError as exc:
        _fail(f"--from {exc}")
    meta = loaded.metadata
    name = model or meta.get("model") or ""
    if not name:
        _fail(f"--from {source} does not name its model; give --model (digits_cnn, mnist_cnn, cifar10_cnn)")
    try:
        spec = get_model_spec(name)
    except ValueError as exc:
        _fail(f"--model: {exc}")
    accuracy = meta.get("accuracy") or None
    server_round = meta.get("round")
    try:
        return export_model(spec, loaded.params, loaded.masks, dataset=dataset or meta.get("dataset") or None,
                            run_id=meta.get("run_id", ""),
                            server_round=int(server_round) if server_round and server_round.isdigit() else None,
                            accuracy=float(accuracy) if accuracy else None, sparse_weights=sparse)
    except OnnxExportError as exc:
        _fail(f"--from {source} does not fit --model {spec.name}: {exc}")
    raise AssertionError("unreachable")


def _from_state_dir(state_dir: Path, run_id: str, server_round: int | None, database_url: str | None) -> bytes:
    from cloud.errors import ModelNotAvailableError, RunNotFoundError
    from cloud.model_export import run_model_onnx
    from cloud.store import CoordinatorStore
    from cloud.store_database import DatabaseError

    if database_url is None and not (state_dir / "coordinator.sqlite3").is_file():
        _fail(f"--state-dir {state_dir} holds no coordinator.sqlite3; give the coordinator's --state-dir")
    try:
        store = CoordinatorStore(state_dir, database_url)
    except DatabaseError as exc:
        _fail(str(exc))
    try:
        return run_model_onnx(store, run_id, server_round)
    except (RunNotFoundError, ModelNotAvailableError) as exc:
        _fail(str(exc))
    finally:
        store.close()
    raise AssertionError("unreachable")


def _from_api(api: str, run_id: str, server_round: int | None, token: str | None) -> bytes:
    base = api.rstrip("/")
    url = f"{base}/api/runs/{urllib.parse.quote(run_id, safe='')}/model.onnx"
    if server_round is not None:
        url += f"?round={server_round}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:  # noqa: S310 - the user's URL
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        _fail(f"{url}: HTTP {exc.code}: {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _fail(f"--api {api}: cannot reach the coordinator ({getattr(exc, 'reason', exc)})")
    raise AssertionError("unreachable")


@app.command("onnx")
def export_onnx(
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write (atomically)."),
    from_file: Path | None = typer.Option(None, "--from", help="A model.safetensors: `feddst simulate --out DIR` "
                                          "writes DIR/model.safetensors; `GET /api/runs/{id}/model` returns one.",
                                          rich_help_panel=SOURCE),
    model: str | None = typer.Option(None, help="With --from: the model (digits_cnn, mnist_cnn, cifar10_cnn). "
                                     "Default: the one the file names.", rich_help_panel=SOURCE),
    dataset: str | None = typer.Option(None, help="With --from: the data source the model was trained on, whose "
                                       "normalisation and class labels go into the file (digits, mnist, cifar10, "
                                       "image-folder, csv, npz). Default: the one the file names, else the "
                                       "model's usual one.", rich_help_panel=SOURCE),
    run: str | None = typer.Option(None, help="A coordinator run id; read from --state-dir or --api.",
                                   rich_help_panel=SOURCE),
    server_round: int | None = typer.Option(None, "--round", min=0, help="With --run: the round whose model to "
                                            "export. Default: the latest.", rich_help_panel=SOURCE),
    state_dir: Path | None = typer.Option(None, help="With --run: the coordinator's --state-dir (read directly).",
                                          rich_help_panel=SOURCE),
    database_url: str | None = typer.Option(None, "--database-url", envvar="FEDDST_CLOUD_DATABASE_URL",
                                            help="With --state-dir: the coordinator's database_url when it "
                                            "is PostgreSQL (its models stay in --state-dir). Env: "
                                            "FEDDST_CLOUD_DATABASE_URL.", rich_help_panel=SOURCE),
    api: str | None = typer.Option(None, help="With --run: the coordinator's URL, e.g. http://coordinator:8000 "
                                   "(GET /api/runs/{id}/model.onnx).", rich_help_panel=SOURCE),
    token: str | None = typer.Option(None, envvar="FEDDST_API_TOKEN", help="With --api: a bearer token for the "
                                     "coordinator's API. Env: FEDDST_API_TOKEN.", rich_help_panel=SOURCE),
    sparse: bool = typer.Option(False, help="With --from: store the masked weights as ONNX sparse tensors (a "
                                "smaller file; onnxruntime densifies them on load, see docs/inference.md).",
                                rich_help_panel=SOURCE),
) -> None:
    """Export a global model as ONNX (opset 17, checked with onnx.checker) with its model card.

    The file carries in its metadata the model name, input shape, the input normalisation of the data it
    was trained on, class labels, run id, round, accuracy and each layer's density; pruned weights are
    zeros. Run it with `feddst predict --model FILE.onnx INPUT...` or any ONNX runtime.

    Examples:
      feddst export onnx --from runs/digits/model.safetensors --model digits_cnn --out digits.onnx
      feddst export onnx --run 3f2a... --state-dir /var/lib/feddst --out model.onnx
      feddst export onnx --run 3f2a... --round 20 --api http://coordinator:8000 --out model.onnx
    """
    if (from_file is None) == (run is None):
        _fail("give exactly one of --from FILE.safetensors or --run RUN_ID")
    if from_file is not None:
        if state_dir or api or server_round is not None:
            _fail("--state-dir, --api and --round go with --run, not --from")
        data = _from_file(from_file, model, dataset, sparse)
    else:
        assert run is not None
        if (state_dir is None) == (api is None):
            _fail("--run needs exactly one of --state-dir DIR (the coordinator's) or --api URL")
        if model or dataset or sparse:
            _fail("--model, --dataset and --sparse go with --from; a run's model and dataset come from its config")
        data = (_from_state_dir(state_dir, run, server_round, database_url) if state_dir is not None
                else _from_api(str(api), run, server_round, token))
    from inference.onnx_file import write_file_atomically

    try:
        write_file_atomically(out, data)
    except OSError as exc:
        _fail(f"--out {out}: cannot write it ({exc})")
    typer.echo(f"wrote {out} ({len(data) / 1e6:.2f} MB): {describe_onnx(data)}")
