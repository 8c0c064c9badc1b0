"""``feddst agent run``: the edge agent (one device) as a command."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer

from feddst_core.choices import (
    CpuPolicyName,
    DataSourceName,
    KernelName,
    LogLevel,
    MqttProtocolChoice,
    PartitionName,
    UploadFormatName,
)

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
    (``edge_agent.settings_reference``); the value None means "not given" (env, file or default decide)."""
    from edge_agent import settings_reference

    return typer.Option(None, *settings_reference.cli_flags(name), help=settings_reference.option_help(name),
                        show_default=False, rich_help_panel=panel)


@app.command("run", help=RUN_HELP)
def run(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML (or YAML) file of settings; keys are "
                                       "the flag names, e.g. device_id = \"dev-003\". Env: FEDDST_CONFIG.",
                                       rich_help_panel=BROKER),
    broker_url: str | None = setting_option("broker_url", BROKER),
    device_id: str | None = setting_option("device_id", BROKER),
    username: str | None = setting_option("username", BROKER),
    password: str | None = setting_option("password", BROKER),
    key_file: Path | None = setting_option("key_file", BROKER),
    coordinator_public_key: str | None = setting_option("coordinator_public_key", BROKER),
    insecure_unsigned_coordinator: bool | None = setting_option("insecure_unsigned_coordinator", BROKER),
    coordinator_key_file: Path | None = setting_option("coordinator_key_file", BROKER),
    mqtt_protocol: MqttProtocolChoice | None = setting_option("mqtt_protocol", BROKER),
    ca_file: Path | None = setting_option("ca_file", BROKER),
    tls_cert_file: Path | None = setting_option("tls_cert_file", BROKER),
    tls_key_file: Path | None = setting_option("tls_key_file", BROKER),
    dataset: DataSourceName | None = setting_option("dataset", DATA),
    data_dir: Path | None = setting_option("data_dir", DATA),
    label_column: str | None = setting_option("label_column", DATA),
    partition: str | None = setting_option("partition", DATA),
    partition_kind: PartitionName | None = setting_option("partition_kind", DATA),
    classes_per_client: int | None = setting_option("classes_per_client", DATA),
    samples_per_class: int | None = setting_option("samples_per_class", DATA),
    beta: float | None = setting_option("beta", DATA),
    seed: int | None = setting_option("seed", DATA),
    threads: int | None = setting_option("threads", RUNTIME),
    kernels: KernelName | None = setting_option("kernels", RUNTIME),
    kernel_thresholds: Path | None = setting_option("kernel_thresholds", RUNTIME),
    cpu_policy: CpuPolicyName | None = setting_option("cpu_policy", RUNTIME),
    heartbeat_s: float | None = setting_option("heartbeat_s", RUNTIME),
    max_packet: int | None = setting_option("max_packet", RUNTIME),
    max_message_bytes: int | None = setting_option("max_message_bytes", RUNTIME),
    ack_timeout_s: float | None = setting_option("ack_timeout_s", RUNTIME),
    state_dir: Path | None = setting_option("state_dir", RUNTIME),
    clock_offset_s: float | None = setting_option("clock_offset_s", RUNTIME),
    log_level: LogLevel | None = setting_option("log_level", RUNTIME),
    model_onnx_path: Path | None = setting_option("model_onnx_path", MODEL),
    model_onnx_every: int | None = setting_option("model_onnx_every", MODEL),
    upload_format: UploadFormatName | None = setting_option("upload_format", LINK),
    max_uplink_kbps: float | None = setting_option("max_uplink_kbps", LINK),
    daily_upload_cap_mb: float | None = setting_option("daily_upload_cap_mb", LINK),
    downlink_kbps: float | None = setting_option("downlink_kbps", LINK),
    link_latency_ms: float | None = setting_option("link_latency_ms", LINK),
    link_jitter_ms: float | None = setting_option("link_jitter_ms", LINK),
    compute_factor: float | None = setting_option("compute_factor", LINK),
    wire_counters_file: Path | None = setting_option("wire_counters_file", LINK),
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
    import torch

    from edge_agent.agent import EdgeAgent
    from edge_agent.data import LocalDataError, load_local_data
    from edge_agent.scheduling import apply_cpu_policy

    # Before any thread exists: threads started later (MQTT, training, OpenMP workers) inherit the policy.
    policy = apply_cpu_policy(settings.cpu_policy)
    logging.getLogger("feddst.agent").info("CPU scheduling: %s", policy)
    torch.set_num_threads(settings.threads)
    try:
        data = load_local_data(settings)
    except LocalDataError as exc:
        _fail(str(exc))
    agent = EdgeAgent(settings, data, key=key)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("feddst.agent").info("received %s; going offline", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run(stop)
