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


@app.command("run", help=RUN_HELP)
def run(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML (or YAML) file of settings; keys are "
                                       "the flag names, e.g. device_id = \"dev-003\". Env: FEDDST_CONFIG.",
                                       rich_help_panel=BROKER),
    broker: str | None = typer.Option(None, "--broker-url", "--broker", help="Broker URL: mqtt://HOST:PORT, or "
                                      "mqtts://HOST:PORT for TLS (setting broker_url, as the coordinator's). "
                                      "Env: FEDDST_BROKER_URL (FEDDST_BROKER still works, deprecated). "
                                      "Default: mqtt://127.0.0.1:1883.", rich_help_panel=BROKER),
    device_id: str | None = typer.Option(None, help="This device's id (MQTT client id and user name): 1-64 of "
                                         "A-Z a-z 0-9 _ . -. Required. Env: FEDDST_DEVICE_ID.",
                                         rich_help_panel=BROKER),
    username: str | None = typer.Option(None, help="MQTT user name; must be the device id (the broker "
                                        "uses it as client id and keys the ACL on it). Env: FEDDST_USERNAME. "
                                        "Default: the device id.", rich_help_panel=BROKER),
    password: str | None = typer.Option(None, help="MQTT password; prefer the env var FEDDST_PASSWORD (flags "
                                        "show up in `ps`).", rich_help_panel=BROKER),
    key_file: Path | None = typer.Option(None, help="File holding this device's HMAC key in hex; signs every "
                                         "message it sends. Env: FEDDST_KEY_FILE.", rich_help_panel=BROKER),
    coordinator_public_key: str | None = typer.Option(None, help="The coordinator's Ed25519 public key, 64 hex "
                                                      "characters (`feddst cloud keys public` prints it; it is "
                                                      "in the enrollment bundle). Every task, model and abort "
                                                      "must carry its signature: others are dropped. Required "
                                                      "unless --insecure-unsigned-coordinator. Env: "
                                                      "FEDDST_COORDINATOR_PUBLIC_KEY.", rich_help_panel=BROKER),
    insecure_unsigned_coordinator: bool | None = typer.Option(
        None, "--insecure-unsigned-coordinator/--secure-coordinator", "--insecure-accept-unsigned",
        help="Accept coordinator messages without verifying any signature (demos on a trusted network only; "
        "logged as a warning). Env: FEDDST_INSECURE_UNSIGNED_COORDINATOR.", show_default=False,
        rich_help_panel=BROKER),
    coordinator_key_file: Path | None = typer.Option(None, help="Removed (it was an HMAC key shared by every "
                                                     "device): giving it is an error; use "
                                                     "--coordinator-public-key.", hidden=False,
                                                     rich_help_panel=BROKER),
    mqtt_protocol: MqttProtocolChoice | None = typer.Option(None, help="MQTT version: 5, 3.1.1, or auto (5, falling "
                                                      "back to 3.1.1 when the broker refuses 5, as the embedded "
                                                      "demo broker does). Default: auto.", rich_help_panel=BROKER),
    ca_file: Path | None = typer.Option(None, help="CA bundle for mqtts:// Default: the system store. Env: "
                                        "FEDDST_CA_FILE.", rich_help_panel=BROKER),
    tls_cert_file: Path | None = typer.Option(None, help="PEM client certificate for mutual TLS (a broker with "
                                              "use_identity_as_username takes its CN as the user name: make it "
                                              "the device id). Env: FEDDST_TLS_CERT_FILE.", rich_help_panel=BROKER),
    tls_key_file: Path | None = typer.Option(None, help="PEM private key of --tls-cert-file. Env: "
                                             "FEDDST_TLS_KEY_FILE.", rich_help_panel=BROKER),
    dataset: DataSourceName | None = typer.Option(None, help="Local data source: digits (built in), mnist (IDX "
                                                  "directory), cifar10, npz (file), image-folder (one sub-folder "
                                                  "per class), csv (features + label column). Env: "
                                                  "FEDDST_DATASET. Default: digits.", rich_help_panel=DATA),
    data_dir: Path | None = typer.Option(None, help="Where the data is: a directory (mnist, cifar10, "
                                         "image-folder) or a file (npz, csv). Env: FEDDST_DATA_DIR.",
                                         rich_help_panel=DATA),
    label_column: str | None = typer.Option(None, help="csv: the label column. Default: label.",
                                            rich_help_panel=DATA),
    partition: str | None = typer.Option(None, help="I/N: keep only client I's share (0-based) of an N-client "
                                         "partition, exactly as `feddst simulate --clients N` splits it. "
                                         "Default: all the data.", rich_help_panel=DATA),
    partition_kind: PartitionName | None = typer.Option(None, help="How the partition splits (as `feddst "
                                                        "simulate --partition`). Default: pathological.",
                                                        rich_help_panel=DATA),
    classes_per_client: int | None = typer.Option(None, help="pathological: classes per client. Default: 2.",
                                                  rich_help_panel=DATA),
    samples_per_class: int | None = typer.Option(None, help="pathological: train images per class per "
                                                 "client. Default: 20.", rich_help_panel=DATA),
    beta: float | None = typer.Option(None, help="dirichlet: concentration. Default: 0.1.", rich_help_panel=DATA),
    seed: int | None = typer.Option(None, help="Partition seed (the simulator's --seed). Default: 0.",
                                    rich_help_panel=DATA),
    threads: int | None = typer.Option(None, help="Torch threads for training; keep 1 when several agents "
                                       "share a machine. Env: FEDDST_THREADS. Default: 1.",
                                       rich_help_panel=RUNTIME),
    kernels: KernelName | None = typer.Option(None, help="Local training kernels: auto (compressed sparse layers "
                                           "where they are measured faster, dense elsewhere), sparse, or dense "
                                           "(masked dense, for comparison). Env: FEDDST_KERNELS. Default: auto.",
                                           rich_help_panel=RUNTIME),
    kernel_thresholds: Path | None = typer.Option(None, help="This device's measured table for --kernels auto "
                                                  "(JSON: per layer kind, the densities and sizes at which a "
                                                  "layer trains sparse). Make it once on the device with "
                                                  "`python bench/sparse_kernels.py --calibrate "
                                                  "--write-thresholds FILE` (from the source tree). Unused with "
                                                  "--kernels sparse or dense. Env: FEDDST_KERNEL_THRESHOLDS. "
                                                  "Default: the built-in table (measured on x86-64).",
                                                  rich_help_panel=RUNTIME),
    cpu_policy: CpuPolicyName | None = typer.Option(None, help="Linux scheduling of the agent: batch (SCHED_BATCH: "
                                                "training is treated as CPU-bound background work that does not "
                                                "preempt the device's interactive tasks, and is preempted less "
                                                "itself) or normal. Env: FEDDST_CPU_POLICY. Default: batch.",
                                                rich_help_panel=RUNTIME),
    heartbeat_s: float | None = typer.Option(None, help="Seconds between status heartbeats. Default: 5.",
                                             rich_help_panel=RUNTIME),
    max_packet: int | None = typer.Option(None, help="Largest MQTT payload sent, in bytes; bigger updates are "
                                          "chunked. Keep it under the broker's message_size_limit. "
                                          "Default: 131072.", rich_help_panel=RUNTIME),
    max_message_bytes: int | None = typer.Option(None, help="Inbound messages larger than this are dropped. "
                                                 "Default: 67108864.", rich_help_panel=RUNTIME),
    ack_timeout_s: float | None = typer.Option(None, help="Kept for compatibility; unused: an update is re-sent "
                                               "only when its delivery is in doubt (a reconnect without the "
                                               "broker's session, a repeated task, a restart). Default: 3.",
                                               rich_help_panel=RUNTIME),
    state_dir: Path | None = typer.Option(None, help="Directory where unacknowledged updates are kept (fsync'd), "
                                          "so a restarted agent still delivers them before the deadline. Env: "
                                          "FEDDST_STATE_DIR. Default: kept in memory only.",
                                          rich_help_panel=RUNTIME),
    clock_offset_s: float | None = typer.Option(None, help="Seconds added to this device's wall clock (testing "
                                                "devices whose clock is wrong; deadlines are measured from "
                                                "receipt, so they still hold). Default: 0.",
                                                rich_help_panel=RUNTIME),
    log_level: LogLevel | None = typer.Option(None, help="debug, info, warning or error. Env: "
                                              "FEDDST_LOG_LEVEL. Default: info.", rich_help_panel=RUNTIME),
    model_onnx_path: Path | None = typer.Option(None, help="Keep the latest global model the device receives "
                                                "at this path as ONNX, for local applications (`feddst predict "
                                                "--model PATH`), written atomically. Env: FEDDST_MODEL_ONNX_PATH. "
                                                "Default: not written.", rich_help_panel=MODEL),
    model_onnx_every: int | None = typer.Option(None, help="With --model-onnx-path: write the model of every "
                                                "N-th completed round of a run. Env: FEDDST_MODEL_ONNX_EVERY. "
                                                "Default: 1 (every global model received).", rich_help_panel=MODEL),
    upload_format: UploadFormatName | None = typer.Option(None, help="Value format of uploaded updates: float32 "
                                                      "(lossless), float16, bfloat16 or int8. Default: float32.",
                                                      rich_help_panel=LINK),
    max_uplink_kbps: float | None = typer.Option(None, help="Cap every byte sent over MQTT at this many kbit/s "
                                                 "(token bucket). Default: 0 (no cap).", rich_help_panel=LINK),
    daily_upload_cap_mb: float | None = typer.Option(None, help="After this many MB (10^6 bytes) sent in a UTC "
                                                     "day, decline tasks until the next day (metered SIM cards). "
                                                     "Default: 0 (no cap).", rich_help_panel=LINK),
    downlink_kbps: float | None = typer.Option(None, help="Trials: emulate a downlink of this many kbit/s. "
                                               "Default: 0 (none).", rich_help_panel=LINK),
    link_latency_ms: float | None = typer.Option(None, help="Trials: emulate this round-trip latency. "
                                                 "Default: 0.", rich_help_panel=LINK),
    link_jitter_ms: float | None = typer.Option(None, help="Trials: emulate up to this much extra one-way "
                                                "delay. Default: 0.", rich_help_panel=LINK),
    compute_factor: float | None = typer.Option(None, help="Trials: emulate a device this many times slower "
                                                "at training. Default: 1.", rich_help_panel=LINK),
    wire_counters_file: Path | None = typer.Option(None, help="Keep this agent's MQTT byte counters (sent, "
                                                   "received, today's sent) in this JSON file, rewritten live. "
                                                   "Default: not written.", rich_help_panel=LINK),
) -> None:
    from edge_agent.config import AgentConfigError, load_settings, read_key_file

    flags = {name: _value(value) for name, value in {
        "broker_url": broker, "device_id": device_id, "username": username, "password": password,
        "key_file": key_file, "coordinator_key_file": coordinator_key_file, "ca_file": ca_file,
        "tls_cert_file": tls_cert_file, "tls_key_file": tls_key_file,
        "coordinator_public_key": coordinator_public_key,
        "insecure_unsigned_coordinator": insecure_unsigned_coordinator,
        "mqtt_protocol": mqtt_protocol,
        "dataset": dataset, "data_dir": data_dir, "label_column": label_column, "partition": partition,
        "partition_kind": partition_kind, "classes_per_client": classes_per_client,
        "samples_per_class": samples_per_class, "beta": beta, "seed": seed, "threads": threads,
        "kernels": kernels, "kernel_thresholds": kernel_thresholds, "cpu_policy": cpu_policy,
        "heartbeat_s": heartbeat_s, "max_packet": max_packet, "max_message_bytes": max_message_bytes,
        "ack_timeout_s": ack_timeout_s, "log_level": log_level, "model_onnx_path": model_onnx_path,
        "model_onnx_every": model_onnx_every, "state_dir": state_dir, "clock_offset_s": clock_offset_s,
        "upload_format": upload_format, "max_uplink_kbps": max_uplink_kbps,
        "daily_upload_cap_mb": daily_upload_cap_mb, "downlink_kbps": downlink_kbps,
        "link_latency_ms": link_latency_ms, "link_jitter_ms": link_jitter_ms, "compute_factor": compute_factor,
        "wire_counters_file": wire_counters_file,
    }.items()}
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
