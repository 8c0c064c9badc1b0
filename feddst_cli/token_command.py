"""``feddst cloud token create|ls|revoke``: the REST API's bearer tokens, kept in the coordinator's state dir.

Works on the state directory directly (no running coordinator needed, and a running one sees the
change on its next request), which is also how a coordinator with no tokens yet is administered.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(
    name="token",
    help="API bearer tokens (roles viewer < operator < admin), stored hashed in the coordinator's state dir. "
    "Requests send `Authorization: Bearer TOKEN`.",
    no_args_is_help=True,
)


class TokenRole(StrEnum):
    """``cloud.access_tokens.ROLES``: viewer (GET), operator (+ create/start/stop runs), admin (+ devices, tokens)."""

    viewer = "viewer"
    operator = "operator"
    admin = "admin"


STATE_DIR_HELP = ("The coordinator's state directory. Default: the --config file's state_dir, else "
                  "FEDDST_CLOUD_STATE_DIR, else ./cloud-state (as `feddst cloud serve`).")
CONFIG_HELP = "The coordinator's JSON or TOML settings file (to find its state_dir)."


def _state_dir(config: Path | None, state_dir: Path | None) -> Path:
    from pydantic import ValidationError

    from cloud.settings import CloudSettings

    try:
        return CloudSettings.load(config, state_dir=state_dir).state_dir
    except (ValidationError, ValueError, OSError) as exc:
        typer.secho(f"error: invalid settings: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def _existing_state_dir(config: Path | None, state_dir: Path | None) -> Path:
    from cloud.access_tokens import DB_NAME

    path = _state_dir(config, state_dir)
    if not (path / DB_NAME).is_file():
        typer.secho(f"error: no coordinator state in {path} (no {DB_NAME}); pass the coordinator's --state-dir",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return path


@app.command("create")
def create(
    role: TokenRole = typer.Option(..., help="viewer: every GET; operator: also create/start/stop runs; "
                                   "admin: also devices and tokens."),
    name: str = typer.Option("", help="A label shown by `token ls` (who or what uses the token)."),
    state_dir: Path | None = typer.Option(None, help=STATE_DIR_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Create a token and print it on stdout (one line, shown only now: only its hash is kept)."""
    from cloud.access_tokens import TokenStore

    path = _state_dir(config, state_dir)
    store = TokenStore(path)
    try:
        token, info = store.create(role.value, name)
    finally:
        store.close()
    typer.echo(f"created API token {info.id} (role {info.role}) in {path}; it is shown only once", err=True)
    typer.echo(token)


@app.command("ls")
def list_tokens(
    state_dir: Path | None = typer.Option(None, help=STATE_DIR_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """List tokens: id, role, status, created, last used, name (never the tokens themselves)."""
    from cloud.access_tokens import TokenStore

    store = TokenStore(_existing_state_dir(config, state_dir))
    try:
        tokens = store.list()
    finally:
        store.close()
    typer.echo(f"{'ID':<12}  {'ROLE':<8}  {'STATUS':<7}  {'CREATED (UTC)':<19}  {'LAST USED (UTC)':<19}  NAME")
    for t in tokens:
        typer.echo(f"{t.id:<12}  {t.role:<8}  {'active' if t.active else 'revoked':<7}  {_utc(t.created_at):<19}  "
                   f"{_utc(t.last_used_at):<19}  {t.name}")


@app.command("revoke")
def revoke(
    token_id: str = typer.Argument(..., help="The token's id (second field of the token, or `token ls`)."),
    state_dir: Path | None = typer.Option(None, help=STATE_DIR_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Revoke a token: the coordinator refuses it (401) from the next request on."""
    from cloud.access_tokens import TokenNotFoundError, TokenStore

    store = TokenStore(_existing_state_dir(config, state_dir))
    try:
        info = store.revoke(token_id)
    except TokenNotFoundError as exc:
        typer.secho(f"error: {exc}; `feddst cloud token ls` lists them", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    typer.echo(f"revoked API token {info.id} (role {info.role})", err=True)


def _utc(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t is not None else "-"
