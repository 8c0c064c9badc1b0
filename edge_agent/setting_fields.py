"""The fields of ``edge_agent.config.AgentSettings``: each agent setting's name, type, default and meaning, once.

The descriptions (with units) are the contract the ``feddst agent run --help`` texts and the settings
table of ``docs/agent.md`` are generated from (``edge_agent.settings_reference``). Extra metadata per
field (``json_schema_extra``): ``default_text`` (how the default reads, when not its value),
``flags`` (the command-line spellings, first = main; default ``--<name-with-dashes>``) and
``cli: False`` for settings that only the environment and the config file set.
The checks of the values live with the model (``edge_agent.config``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from feddst_core.choices import (
    CpuPolicyName,
    DataSourceName,
    KernelName,
    LogLevel,
    MqttProtocolChoice,
    PartitionName,
    UploadFormatName,
)


def setting(default: Any, description: str, *, default_text: str | None = None, flags: tuple[str, ...] = (),
            cli: bool = True) -> Any:
    """A field with its description and the metadata the help texts and the docs table are made from."""
    extra: dict[str, Any] = {"cli": cli}
    if default_text is not None:
        extra["default_text"] = default_text
    if flags:
        extra["flags"] = list(flags)
    return Field(default, description=description, json_schema_extra=extra)


NOT_WRITTEN = "not written"


class AgentSettingFields(BaseModel):
    """Every setting of the edge agent (validated by ``AgentSettings``)."""

    # --- broker and identity
    device_id: str = Field(description="This device's id, its MQTT client id and user name: 1-64 of "
                           "`A-Z a-z 0-9 _ . -`.", json_schema_extra={"cli": True, "default_text": "required"})
    broker_url: str = setting(
        "mqtt://127.0.0.1:1883", "Broker URL: `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS (default port "
        "8883); `tcp://`/`ssl://` are synonyms. The coordinator's setting of the same name; both sides parse it "
        "with `protocol.endpoint.parse_broker_url`.", flags=("--broker-url", "--broker"))
    username: str | None = setting(
        None, "MQTT user name; must be the device id (the broker uses it as client id, `use_username_as_clientid`, "
        "and keys the device's ACL on it).", default_text="the device id")
    password: str | None = setting(None, "MQTT password; prefer the environment variable (flags show up in `ps`).")
    key_file: str | None = setting(None, "File holding this device's HMAC-SHA256 key in hex (at least 16 bytes); "
                                   "it signs every message the device sends.")
    coordinator_public_key: str | None = setting(
        None, "The coordinator's Ed25519 public key, 64 hex characters (`feddst cloud keys public` on the "
        "coordinator; also in the enrollment bundle): every task, model, ack and abort must carry its signature, "
        "anything else is dropped. Without it the agent refuses to start, unless --insecure-unsigned-coordinator.",
        default_text="required")
    insecure_unsigned_coordinator: bool = setting(
        False, "Accept coordinator messages without any signature check (demos on a trusted network only; logged "
        "as a warning at start).",
        flags=("--insecure-unsigned-coordinator/--secure-coordinator", "--insecure-accept-unsigned"))
    coordinator_key_file: str | None = setting(
        None, "Removed: the former HMAC key of the coordinator, shared by every device; giving it is an error "
        "saying to use --coordinator-public-key.", default_text="removed")
    mqtt_protocol: MqttProtocolChoice = setting(
        "auto", "MQTT version: `5`, `3.1.1`, or `auto` (MQTT 5, falling back to 3.1.1 when the broker refuses or "
        "ignores MQTT 5, as the embedded amqtt broker of `feddst demo` does).")
    ca_file: str | None = setting(None, "CA bundle (PEM) for `mqtts://`.", default_text="the system store")
    tls_cert_file: str | None = setting(
        None, "PEM client certificate for mutual TLS; with `use_identity_as_username` the broker takes the "
        "certificate's CN as the user name, so make the CN the device id.")
    tls_key_file: str | None = setting(None, "PEM private key of --tls-cert-file.")
    tls_insecure: bool = setting(False, "Skip the broker host-name check of TLS (testing only).", cli=False)
    # --- local data
    dataset: DataSourceName = setting(
        "digits", "Local data source: `digits` (built in), `mnist` (IDX directory), `cifar10`, `npz` (file), "
        "`image-folder` (one sub-folder per class), `csv` (features + label column).")
    data_dir: str | None = setting(None, "Where the data is: a directory (mnist, cifar10, image-folder) or a file "
                                   "(npz, csv).")
    label_column: str = setting("label", "csv: the label column.")
    partition: str | None = setting(
        None, "I/N: keep only client I's share (0-based) of an N-client partition, exactly as `feddst simulate "
        "--clients N` splits it.", default_text="all the data")
    partition_kind: PartitionName = setting("pathological", "How the partition splits (as `feddst simulate "
                                            "--partition`).")
    classes_per_client: int = setting(2, "pathological partition: classes per client.")
    samples_per_class: int = setting(20, "pathological partition: train images per class per client.")
    beta: float = setting(0.1, "dirichlet partition: concentration.")
    seed: int = setting(0, "Partition seed (the simulator's --seed).")
    # --- runtime
    threads: int = setting(1, "Torch intra-op threads for training; keep 1 when several agents share a machine.")
    kernels: KernelName = setting(
        "auto", "Local training kernels: `auto` stores a layer's weights compressed (CSR) and trains only its "
        "active weights where that was measured faster (docs/sparse_kernels.md), masked dense elsewhere; "
        "`sparse` forces compressed layers; `dense` forces masked dense training (for comparison). All give the "
        "same weights up to float rounding.")
    kernel_thresholds: str | None = setting(
        None, "This device's measured table for --kernels auto (JSON: per layer kind, the densities and sizes at "
        "which a layer trains sparse). Make it once on the device with `python bench/sparse_kernels.py "
        "--calibrate --write-thresholds FILE` (from the source tree). Unused (logged) with --kernels sparse or "
        "dense.", default_text="the built-in table (measured on x86-64)")
    preload_training: bool = setting(
        False, "Import torch and the learning core at start-up (in the background) instead of at the first "
        "round: the first round then starts training at once (the import takes about 4 CPU s on an x86-64 "
        "core, tens of seconds on a small ARM board), but the idle agent holds about 220 MB more.")
    cpu_policy: CpuPolicyName = setting(
        "batch", "Linux scheduling of the agent: `batch` (`SCHED_BATCH`: training is CPU-bound background work "
        "that does not preempt the device's interactive tasks and is preempted less itself; no privileges "
        "needed) or `normal`. Logged at start-up as `CPU scheduling: ...`.")
    heartbeat_s: float = setting(5.0, "Seconds between retained status heartbeats.")
    max_packet: int = setting(128 * 1024, "Largest MQTT payload sent, in bytes; bigger updates are chunked. Keep "
                              "it under the broker's message_size_limit.", default_text="131072 (128 KiB)")
    max_message_bytes: int = setting(64 * 1024 * 1024, "Inbound messages larger than this many bytes are dropped.",
                                     default_text="67108864 (64 MiB)")
    keepalive_s: int = setting(30, "MQTT keep-alive, in seconds.", cli=False)
    session_expiry_s: int = setting(3600, "Expiry of the persistent MQTT session, in seconds.", cli=False)
    ack_timeout_s: float = setting(
        3.0, "Kept for compatibility, unused: an update is re-sent only when its delivery is in doubt (a reconnect "
        "without the broker's session, a repeated task, a restart), never on a timer.")
    reconnect_min_s: float = setting(1.0, "Shortest reconnect backoff, in seconds (doubles up to reconnect_max_s, "
                                     "with jitter).", cli=False)
    reconnect_max_s: float = setting(30.0, "Longest reconnect backoff, in seconds.", cli=False)
    log_level: LogLevel = setting("info", "Level of the agent's log lines (stderr).")
    state_dir: str | None = setting(
        None, "Directory where unacknowledged updates are kept (fsync'd, `pending/`), so a restarted agent still "
        "delivers them before the deadline.", default_text="kept in memory only")
    clock_offset_s: float = setting(
        0.0, "Seconds added to this device's wall clock (tests of devices whose clock is wrong; deadlines are "
        "measured from receipt, so they still hold).")
    # --- using the model on the device
    model_onnx_path: str | None = setting(
        None, "Keep the latest global model this device receives at this path as ONNX, for local applications "
        "(`feddst predict --model PATH`), written atomically.", default_text=NOT_WRITTEN)
    model_onnx_every: int = setting(1, "With --model-onnx-path: rewrite the file for every N-th completed round "
                                    "of a run (1: every global model received).")
    # --- link caps and trial emulation (edge_agent.link_shaping); 0 = none
    upload_format: UploadFormatName = setting("float32", "Value format of uploaded updates: `float32` (lossless), "
                                              "`float16`, `bfloat16` or `int8`.")
    max_uplink_kbps: float = setting(0.0, "Cap on every byte the agent sends over MQTT, in kbit/s (token bucket; "
                                     "0: no cap).")
    daily_upload_cap_mb: float = setting(
        0.0, "After this many MB (10^6 bytes) sent in a UTC day, decline tasks until the next day (metered SIM "
        "cards; 0: no cap).")
    downlink_kbps: float = setting(0.0, "Trials: emulate a downlink of this many kbit/s (0: none).")
    link_latency_ms: float = setting(0.0, "Trials: emulate this round-trip latency, in ms (half on each direction).")
    link_jitter_ms: float = setting(0.0, "Trials: emulate up to this much extra one-way delay, in ms (uniform).")
    compute_factor: float = setting(1.0, "Trials: emulate a device this many times slower at training (1 to 1000).")
    wire_counters_file: str | None = setting(
        None, "Keep this agent's MQTT byte counters (sent, received, today's sent) in this JSON file, rewritten "
        "live.", default_text=NOT_WRITTEN)
