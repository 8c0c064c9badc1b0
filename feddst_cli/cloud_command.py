"""``feddst cloud serve``: the coordinator (FastAPI REST API + MQTT client); ``runs``/``devices``/``token`` groups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from cloud.coordinator import Coordinator
    from cloud.settings import CloudSettings

from feddst_cli import cloud_devices_command, cloud_runs_command, devices_command, token_command

app = typer.Typer(help="The cloud coordinator: serve it, manage its API tokens, and drive its runs and devices "
                  "from a terminal over its REST API (--url / FEDDST_API_URL, --token / FEDDST_API_TOKEN).",
                  no_args_is_help=True)
app.add_typer(token_command.app, name="token")
app.add_typer(devices_command.app, name="devices")
keys_app = typer.Typer(help="The coordinator's Ed25519 signing key (devices verify every coordinator message "
                       "with its public half).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(cloud_runs_command.app, name="runs")
devices_command.app.command("ls")(cloud_devices_command.list_devices)  # over the REST API


@app.command("serve")
def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help="JSON or TOML file of settings (keys as "
                                       "the env vars without the FEDDST_CLOUD_ prefix, lower case)."),
    broker: str | None = typer.Option(None, help="Broker URL mqtt://HOST:PORT. Env: FEDDST_CLOUD_BROKER_URL. "
                                      "Default: mqtt://127.0.0.1:1883."),
    username: str | None = typer.Option(None, help="MQTT user name. Env: FEDDST_CLOUD_MQTT_USERNAME. "
                                        "Default: coordinator."),
    password: str | None = typer.Option(None, help="MQTT password; prefer the env var "
                                        "FEDDST_CLOUD_MQTT_PASSWORD (flags show up in ps)."),
    api_host: str | None = typer.Option(None, help="REST API bind address. Default: 127.0.0.1."),
    api_port: int | None = typer.Option(None, help="REST API port. Default: 8080."),
    state_dir: Path | None = typer.Option(None, help="Where runs, devices and models are kept. "
                                          "Default: ./cloud-state."),
    heartbeat_s: float | None = typer.Option(None, help="Device heartbeat period (online = seen within 3x)."),
    device_keys_file: Path | None = typer.Option(None, help="JSON {device id: hex HMAC key}: require "
                                                 "authenticated updates."),
    signing_key_file: Path | None = typer.Option(None, help="The coordinator's Ed25519 private key (PEM, "
                                                 "created on first start); it signs every message sent to "
                                                 "devices. Env: FEDDST_CLOUD_SIGNING_KEY_FILE. Default: "
                                                 "<state-dir>/coordinator-signing.key."),
    embedded_broker: bool = typer.Option(False, "--embedded-broker", help="Start an in-process amqtt broker "
                                         "(MQTT 3.1.1, anonymous, loopback) and use it: for demos only."),
    broker_port: int = typer.Option(1883, help="Port of the embedded broker."),
    log_level: str | None = typer.Option(None, "--log-level", help="debug, info, warning or error: lines on "
                                         "stderr with time and level, one INFO line per round. "
                                         "Env: FEDDST_CLOUD_LOG_LEVEL. Default: info."),
    resume_runs: bool | None = typer.Option(None, "--resume-runs/--no-resume-runs", help="Resume the run the "
                                            "previous coordinator process was running, from its last completed "
                                            "round. Env: FEDDST_CLOUD_RESUME_RUNS. Default: on."),
    data_root: list[Path] | None = typer.Option(None, "--data-root", help="A directory run configs may name "
                                                "evaluation data under (repeatable). Env: FEDDST_CLOUD_DATA_ROOTS "
                                                "(JSON list). Default: none (only the built-in digits)."),
) -> None:
    """Serve the coordinator: REST API on --api-host:--api-port, MQTT client to --broker.

    OpenAPI is served at /openapi.json (docs at /docs). Every /api request needs a bearer token:
    create the first one with `feddst cloud token create --role admin --state-dir STATE_DIR`.
    """
    import uvicorn
    from pydantic import ValidationError

    from cloud.app import create_app
    from cloud.embedded_broker import EmbeddedBroker
    from cloud.logging_config import configure_logging
    from cloud.settings import CloudSettings
    from cloud.startup_checks import StartupError, check_startup, settings_error_line

    try:
        settings = CloudSettings.load(config, broker_url=broker, mqtt_username=username, mqtt_password=password,
                                      api_host=api_host, api_port=api_port, state_dir=state_dir,
                                      heartbeat_s=heartbeat_s, device_keys_file=device_keys_file,
                                      data_roots=data_root or None, signing_key_file=signing_key_file,
                                      log_level=log_level, resume_runs=resume_runs)
        check_startup(settings)
    except ValidationError as exc:
        _fail(f"invalid settings: {settings_error_line(exc)}")
    except StartupError as exc:
        _fail(str(exc))
    except (ValueError, OSError) as exc:  # the config file itself: missing, not JSON/TOML
        _fail(f"config file {config}: {exc}; fix the file or drop --config")
    configure_logging(settings.log_level)
    broker_process = None
    if embedded_broker:
        try:
            broker_process = EmbeddedBroker(port=broker_port).start()
        except (OSError, RuntimeError) as exc:
            _fail(f"--broker-port {broker_port}: the embedded broker could not start ({exc}); choose a free port")
        typer.echo(f"embedded MQTT broker on {broker_process.url}")
        settings = settings.model_copy(update={"broker_url": broker_process.url})
    try:
        coordinator = _start_coordinator(settings)
        try:
            uvicorn.run(create_app(coordinator=coordinator), host=settings.api_host, port=settings.api_port,
                        log_config=None, log_level=settings.log_level)
        finally:
            coordinator.close()
    finally:
        if broker_process is not None:
            broker_process.stop()


def _fail(line: str) -> NoReturn:
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _start_coordinator(settings: CloudSettings) -> Coordinator:
    """The coordinator, its main loop started; an unreachable broker only makes it start degraded."""
    import logging

    from cloud.coordinator import Coordinator
    from cloud.signing_key import SigningKeyError

    try:
        coordinator = Coordinator(settings)
    except SigningKeyError as exc:
        _fail(f"signing_key_file: {exc}")
    except OSError as exc:
        _fail(f"state_dir: {settings.state_dir}: {exc}; check the directory and its files")
    if not coordinator.start(connect_timeout_s=5.0):
        logging.getLogger("cloud.coordinator").warning(
            "the MQTT broker %s is not reachable; serving degraded until it is (runs cannot start meanwhile)",
            settings.broker_url)
    return coordinator


@keys_app.command("public")
def keys_public(
    state_dir: Path | None = typer.Option(None, help="The coordinator's state dir (its key is "
                                          "<state-dir>/coordinator-signing.key). Default: ./cloud-state."),
    signing_key_file: Path | None = typer.Option(None, help="The signing key file, if not in the state dir."),
    config: Path | None = typer.Option(None, "--config", "-c", help="The coordinator's settings file, to find "
                                       "its state dir or signing key file."),
) -> None:
    """Print the coordinator's Ed25519 public key (64 hex characters, one line), creating the key if needed.

    Give it to every agent as `--coordinator-public-key` (or `coordinator_public_key` in its config file):
    agents drop any coordinator message it did not sign.
    """
    from pydantic import ValidationError

    from cloud.settings import CloudSettings
    from cloud.signing_key import SigningKeyError, load_or_create_signing_key, public_key_hex

    try:
        settings = CloudSettings.load(config, state_dir=state_dir, signing_key_file=signing_key_file)
        key = load_or_create_signing_key(settings.signing_key_path)
    except (ValidationError, ValueError, OSError, SigningKeyError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(public_key_hex(key))
