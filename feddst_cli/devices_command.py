"""``feddst cloud devices enroll|revoke|list``: admit devices to the fleet and lock them out again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

app = typer.Typer(help="Enroll and revoke devices (per-device keys and broker users).", no_args_is_help=True)

CONFIG_HELP = "The coordinator's JSON or TOML settings file (as for `feddst cloud serve -c`)."
STATE_HELP = "The coordinator's state dir (its store and signing key). Default: ./cloud-state."


def _service(config: Path | None, state_dir: Path | None, **overrides: object):  # noqa: ANN202
    from pydantic import ValidationError

    from cloud.enrollment import EnrollmentService
    from cloud.settings import CloudSettings
    from cloud.store import CoordinatorStore
    from cloud.store_database import DatabaseError

    try:
        settings = CloudSettings.load(config, state_dir=state_dir, **overrides)
    except (ValidationError, ValueError, OSError) as exc:
        typer.secho(f"error: invalid settings: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    try:
        store = CoordinatorStore.from_settings(settings)  # the coordinator's database (database_url) too
    except DatabaseError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    return EnrollmentService(settings, store)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@app.command("enroll")
def enroll(
    device_id: str = typer.Argument(..., help="The new device's id (its MQTT user name), e.g. dev-003."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the bundle (JSON, mode 0600). "
                                    "Default: ./<DEVICE_ID>.bundle.json. `-` prints it on stdout."),
    state_dir: Path | None = typer.Option(None, help=STATE_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    broker_url: str | None = typer.Option(None, help="Broker URL as the device reaches it, written into the "
                                          "bundle. Default: the device_broker_url setting, else broker_url."),
    reissue: bool = typer.Option(False, "--reissue", help="The device is already enrolled: give it new "
                                 "credentials (its old bundle stops working at once)."),
) -> None:
    """Enroll a device: new HMAC key and MQTT password, broker user and ACL created, bundle written.

    The bundle holds everything the device needs (user name and password, its own key, the coordinator's
    public key, the broker URL and CA certificate); install it with
    `sudo deploy/install_agent.sh --bundle FILE`, then delete it. A running coordinator on the same state
    dir accepts the device at once (no restart).
    """
    from cloud.errors import BrokerAdminError, DeviceAlreadyEnrolledError

    service = _service(config, state_dir, device_broker_url=broker_url)
    try:
        bundle = service.enroll(device_id, reissue=reissue)
    except (ValueError, DeviceAlreadyEnrolledError, BrokerAdminError) as exc:
        raise _fail(exc) from exc
    finally:
        service.store.close()
    if out is not None and str(out) == "-":
        typer.echo(bundle.to_json(), nl=False)
        return
    path = bundle.write(out or Path(f"{device_id}.bundle.json"))
    typer.echo(f"enrolled {device_id}: bundle written to {path} (mode 0600; it holds the device's secrets)")
    if bundle.mqtt_password is None:
        typer.echo("note: broker_admin = none: create the device's broker user and ACL yourself "
                   "(deploy/make_broker_acl.py) and put its password into the agent's FEDDST_PASSWORD")


@app.command("revoke")
def revoke(
    device_id: str = typer.Argument(..., help="The device to lock out."),
    state_dir: Path | None = typer.Option(None, help=STATE_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Revoke a device now: the coordinator rejects its messages and its broker user is deleted (which
    disconnects it). Enroll it again to re-admit it with new credentials."""
    from cloud.errors import BrokerAdminError, DeviceNotEnrolledError

    service = _service(config, state_dir)
    try:
        row = service.revoke(device_id)
    except (ValueError, DeviceNotEnrolledError) as exc:
        raise _fail(exc) from exc
    except BrokerAdminError as exc:
        raise _fail(RuntimeError(f"{device_id} is revoked in the coordinator's store (its messages are "
                                 f"rejected), but the broker user could not be removed: {exc}")) from exc
    finally:
        service.store.close()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.revoked_at or 0))
    typer.echo(f"revoked {device_id} (at {when} UTC)")


@app.command("setup-broker")
def setup_broker(
    state_dir: Path | None = typer.Option(None, help=STATE_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
) -> None:
    """Create the coordinator's broker user (mqtt_username, mqtt_password) and its ACL role in mosquitto's
    dynamic-security plugin, as the dynsec admin (broker_admin_username/_password). Idempotent; run it
    once after `mosquitto_ctrl dynsec init`, before `feddst cloud serve` (enroll does it too)."""
    from cloud.errors import BrokerAdminError

    service = _service(config, state_dir)
    try:
        service.setup_broker()
    except BrokerAdminError as exc:
        raise _fail(exc) from exc
    finally:
        service.store.close()
    typer.echo(f"broker ready for coordinator user {service.settings.mqtt_username!r}")


@app.command("list")
def list_enrollments(
    state_dir: Path | None = typer.Option(None, help=STATE_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON array instead of a table."),
) -> None:
    """List enrolled devices with their status and enrollment/revocation times (never their keys)."""
    from cloud.enrollment import enrollment_summary

    service = _service(config, state_dir)
    rows = [enrollment_summary(r) for r in service.list()]
    service.store.close()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        revoked = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["revoked_at"])) if r["revoked_at"] else "-"
        typer.echo(f"{r['device_id']:<24} {r['status']:<8} enrolled "
                   f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(r['enrolled_at']))} revoked {revoked}")
