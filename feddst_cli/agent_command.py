"""``feddst agent run``: the edge agent (one device) as a command."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from feddst_core import choices

BROKER = "Broker and identity"
DATA = "Local data"
RUNTIME = "Runtime"
MODEL = "Using the model on the device"
LINK = "Link caps and trial emulation"

app = typer.Typer(
    name="agent",
    help="The edge agent: connects a device to the coordinator over MQTT and trains on its local data.\n\n"
    "Run `feddst agent run --help` for every setting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _value(option: Any) -> Any:
    if isinstance(option, Path):
        return str(option)
    return option


RUN_HELP = (
    "Run the edge agent (one device) until SIGTERM or Ctrl-C.\n\n"
    "It connects with a persistent MQTT session and a last-will 'offline' status, registers its capabilities, "
    "heartbeats, and for each task that selects it trains one round on its local data and publishes the sparse "
    "update (re-sent until acknowledged or the task's deadline).\n\n"
    "Settings come from flags, then environment variables (FEDDST_<NAME>, e.g. FEDDST_BROKER_URL, FEDDST_PASSWORD), "
    "then the --config file, then the defaults.\n\n"
    "Example: feddst agent run --broker mqtt://127.0.0.1:1883 --device-id dev-003 --dataset digits "
    "--partition 3/8\n\n"
    "Exit codes: 0 stopped by a signal, 1 unexpected error, 2 bad settings or data, 3 the broker refused "
    "the credentials."
)


def setting_option(name: str, panel: str) -> Any:
    """The typer option of agent setting ``name``: its flags, help and default text from ``AgentSettings``
    (``edge_agent.settings_reference``), for ``Annotated[T | None, ...] = None``: None means "not given"
    (the environment, the config file or the default decide)."""
    from edge_agent import settings_reference

    return typer.Option(*settings_reference.cli_flags(name), help=settings_reference.option_help(name),
                        show_default=False, rich_help_panel=panel)


@app.command("run", help=RUN_HELP)
def run(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML (or YAML) file of settings; keys are "
                                       "the flag names, e.g. device_id = \"dev-003\". Env: FEDDST_CONFIG.",
                                       rich_help_panel=BROKER),
    broker_url: Annotated[str | None, setting_option("broker_url", BROKER)] = None,
    device_id: Annotated[str | None, setting_option("device_id", BROKER)] = None,
    username: Annotated[str | None, setting_option("username", BROKER)] = None,
    password: Annotated[str | None, setting_option("password", BROKER)] = None,
    key_file: Annotated[Path | None, setting_option("key_file", BROKER)] = None,
    coordinator_public_key: Annotated[str | None, setting_option("coordinator_public_key", BROKER)] = None,
    insecure_unsigned_coordinator: Annotated[bool | None,
                                             setting_option("insecure_unsigned_coordinator", BROKER)] = None,
    coordinator_key_file: Annotated[Path | None, setting_option("coordinator_key_file", BROKER)] = None,
    mqtt_protocol: Annotated[choices.MqttProtocolChoice | None, setting_option("mqtt_protocol", BROKER)] = None,
    ca_file: Annotated[Path | None, setting_option("ca_file", BROKER)] = None,
    tls_cert_file: Annotated[Path | None, setting_option("tls_cert_file", BROKER)] = None,
    tls_key_file: Annotated[Path | None, setting_option("tls_key_file", BROKER)] = None,
    dataset: Annotated[choices.DataSourceName | None, setting_option("dataset", DATA)] = None,
    data_dir: Annotated[Path | None, setting_option("data_dir", DATA)] = None,
    label_column: Annotated[str | None, setting_option("label_column", DATA)] = None,
    partition: Annotated[str | None, setting_option("partition", DATA)] = None,
    partition_kind: Annotated[choices.PartitionName | None, setting_option("partition_kind", DATA)] = None,
    classes_per_client: Annotated[int | None, setting_option("classes_per_client", DATA)] = None,
    samples_per_class: Annotated[int | None, setting_option("samples_per_class", DATA)] = None,
    beta: Annotated[float | None, setting_option("beta", DATA)] = None,
    seed: Annotated[int | None, setting_option("seed", DATA)] = None,
    threads: Annotated[int | None, setting_option("threads", RUNTIME)] = None,
    kernels: Annotated[choices.KernelName | None, setting_option("kernels", RUNTIME)] = None,
    kernel_thresholds: Annotated[Path | None, setting_option("kernel_thresholds", RUNTIME)] = None,
    cpu_policy: Annotated[choices.CpuPolicyName | None, setting_option("cpu_policy", RUNTIME)] = None,
    preload_training: Annotated[bool | None, setting_option("preload_training", RUNTIME)] = None,
    heartbeat_s: Annotated[float | None, setting_option("heartbeat_s", RUNTIME)] = None,
    max_packet: Annotated[int | None, setting_option("max_packet", RUNTIME)] = None,
    max_message_bytes: Annotated[int | None, setting_option("max_message_bytes", RUNTIME)] = None,
    ack_timeout_s: Annotated[float | None, setting_option("ack_timeout_s", RUNTIME)] = None,
    state_dir: Annotated[Path | None, setting_option("state_dir", RUNTIME)] = None,
    clock_offset_s: Annotated[float | None, setting_option("clock_offset_s", RUNTIME)] = None,
    log_level: Annotated[choices.LogLevel | None, setting_option("log_level", RUNTIME)] = None,
    model_onnx_path: Annotated[Path | None, setting_option("model_onnx_path", MODEL)] = None,
    model_onnx_every: Annotated[int | None, setting_option("model_onnx_every", MODEL)] = None,
    upload_format: Annotated[choices.UploadFormatName | None, setting_option("upload_format", LINK)] = None,
    max_uplink_kbps: Annotated[float | None, setting_option("max_uplink_kbps", LINK)] = None,
    daily_upload_cap_mb: Annotated[float | None, setting_option("daily_upload_cap_mb", LINK)] = None,
    downlink_kbps: Annotated[float | None, setting_option("downlink_kbps", LINK)] = None,
    link_latency_ms: Annotated[float | None, setting_option("link_latency_ms", LINK)] = None,
    link_jitter_ms: Annotated[float | None, setting_option("link_jitter_ms", LINK)] = None,
    compute_factor: Annotated[float | None, setting_option("compute_factor", LINK)] = None,
    wire_counters_file: Annotated[Path | None, setting_option("wire_counters_file", LINK)] = None,
) -> None:
    from edge_agent.config import AgentConfigError, load_settings, read_key_file

    # Every parameter but --config is the setting of the same name (None: not given on the command line).
    flags = {name: _value(value) for name, value in ctx.params.items() if name != "config"}
    try:
        settings = load_settings(flags, config_file=config)
        key = read_key_file(settings.key_file) if settings.key_file else None
    except AgentConfigError as exc:
        _fail(str(exc))
    raise typer.Exit(run_agent(settings, key))


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def configure_logging(level: str, device_id: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s [{device_id}] %(name)s: %(message)s")


def run_agent(settings: Any, key: bytes | None) -> int:
    """Load the data, then run the agent until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(settings.log_level, settings.device_id)
    from edge_agent.agent import EdgeAgent
    from edge_agent.data import LocalDataError, load_local_data
    from edge_agent.local_training import set_torch_threads
    from edge_agent.memory import release_free_memory
    from edge_agent.scheduling import apply_cpu_policy

    # Before any thread exists: threads started later (MQTT, training, OpenMP workers) inherit the policy.
    policy = apply_cpu_policy(settings.cpu_policy)
    logging.getLogger("feddst.agent").info("CPU scheduling: %s", policy)
    set_torch_threads(settings.threads)  # torch itself is imported at the first round, not while idle
    try:
        data = load_local_data(settings)
    except LocalDataError as exc:
        _fail(str(exc))
    release_free_memory()  # the whole dataset was read to keep this device's share
    agent = EdgeAgent(settings, data, key=key)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("feddst.agent").info("received %s; going offline", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run(stop)
