"""``AgentSettings``: every setting of ``feddst agent run``, merged from flags, env, file and defaults.

Precedence, highest first: command-line flags > environment variables (``FEDDST_<NAME>``, e.g.
``FEDDST_BROKER_URL``, ``FEDDST_DEVICE_ID``, ``FEDDST_PASSWORD``, ``FEDDST_KEY_FILE``) > the config
file (TOML, or YAML when PyYAML is installed; keys are the setting names, with ``_`` or ``-``, at top
level or under an ``[agent]`` table) > the defaults below.

Secure by default: the agent verifies every coordinator message with ``coordinator_public_key``
(64 hex characters, from ``feddst cloud keys public`` or the device's enrollment bundle; env
``FEDDST_COORDINATOR_PUBLIC_KEY``). Without it the settings are refused, unless
``insecure_unsigned_coordinator`` is set (demos and tests only; logged as a warning). The former
shared HMAC key ``coordinator_key_file`` is refused with an error explaining the change.

Old names keep working with a :class:`~protocol.endpoint.DeprecatedSettingWarning` naming the new
one (``DEPRECATED_NAMES``): ``broker`` / ``FEDDST_BROKER`` are now ``broker_url`` /
``FEDDST_BROKER_URL``, the coordinator's name for the same setting. Where both are given the new
name wins.

Every bad value raises :class:`AgentConfigError` whose message names the setting and says how
to fix it. Validation happens once, here; the rest of the agent trusts ``AgentSettings``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.link_shaping import LinkLimits
from feddst_core.choices import (
    CPU_POLICIES,
    DATA_SOURCES,
    KERNEL_CHOICES,
    LOG_LEVELS,
    MQTT_PROTOCOLS,
    PARTITIONS,
    UPLOAD_FORMATS,
)
from feddst_core.sparse import SparseThreshold, parse_thresholds_json
from protocol import endpoint, is_identifier
from protocol.ed25519 import parse_public_key_hex
from protocol.endpoint import BrokerAddress, DeprecatedSettingWarning

ENV_PREFIX = "FEDDST_"
MIN_KEY_BYTES = 16
ThresholdTable = dict[str, tuple[SparseThreshold, ...]]
MAKE_THRESHOLDS = "python bench/sparse_kernels.py --calibrate --write-thresholds FILE"
NO_COORDINATOR_KEY = (
    "no coordinator public key: the agent verifies the coordinator's Ed25519 signature on every task, model and "
    "abort, and refuses unsigned ones. Give the 64 hex characters that `feddst cloud keys public` prints on the "
    "coordinator (also in the device's enrollment bundle) as --coordinator-public-key, FEDDST_COORDINATOR_PUBLIC_KEY "
    "or coordinator_public_key in the config file; or, for a demo on a trusted network only, pass "
    "--insecure-unsigned-coordinator to accept unsigned coordinator messages")
COORDINATOR_KEY_FILE_REMOVED = (
    "is no longer supported: that HMAC key was shared by every device, so any device could forge the "
    "coordinator's messages. Remove it and give --coordinator-public-key (64 hex characters printed by "
    "`feddst cloud keys public` on the coordinator)")


class AgentConfigError(ValueError):
    """A setting is missing or invalid; the message names it and says what to do."""


@dataclass(frozen=True)
class KernelThresholdsFile:
    """A ``--kernel-thresholds`` file: the auto policy's table and the bench's ``measured_on`` note."""

    path: str
    table: ThresholdTable
    measured_on: dict[str, Any]  # machine, native_kernels, date... ({} when absent)


@dataclass(frozen=True)
class PartitionSpec:
    """``--partition I/N``: this device holds client I's share of an N-client partition."""

    index: int
    count: int


@dataclass(frozen=True)
class AgentSettings:
    """Validated agent settings (see the module docstring for where values come from)."""

    device_id: str
    broker_url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None  # default: the device id
    password: str | None = None
    key_file: str | None = None  # hex HMAC key signing this device's messages
    coordinator_key_file: str | None = None  # removed (shared HMAC key): setting it is an error saying so
    coordinator_public_key: str | None = None  # 64 hex: the coordinator's Ed25519 public key (verifies its messages)
    insecure_unsigned_coordinator: bool = False  # accept unsigned coordinator messages (demos only; warned)
    ca_file: str | None = None  # CA bundle for mqtts:// (default: the system store)
    tls_cert_file: str | None = None  # PEM client certificate for mutual TLS (its CN = the device id)
    tls_key_file: str | None = None  # PEM private key of tls_cert_file
    tls_insecure: bool = False  # skip the broker host name check (testing only)
    mqtt_protocol: str = "auto"  # "5", "3.1.1", or "auto" (5, falling back to 3.1.1 if refused)
    dataset: str = "digits"
    data_dir: str | None = None  # directory, or file for npz / csv
    label_column: str = "label"  # csv only
    partition: str | None = None  # "I/N"
    partition_kind: str = "pathological"
    classes_per_client: int = 2
    samples_per_class: int = 20
    beta: float = 0.1
    seed: int = 0  # partition seed (the simulator's --seed)
    threads: int = 1  # torch intra-op threads
    kernels: str = "auto"  # local training kernels: auto (sparse where faster), sparse, dense
    kernel_thresholds: str | None = None  # this device's auto-policy table (JSON); default: the built-in one
    cpu_policy: str = "batch"  # Linux scheduling: batch (SCHED_BATCH, training yields to interactive work) | normal
    heartbeat_s: float = 5.0
    max_packet: int = 128 * 1024  # largest MQTT payload this agent publishes (updates are chunked)
    max_message_bytes: int = 64 * 1024 * 1024  # larger inbound messages are dropped
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    ack_timeout_s: float = 3.0  # kept for compatibility: updates are no longer re-sent on a timer (docs/agent.md)
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    log_level: str = "info"
    model_onnx_path: str | None = None  # keep the latest global model here as ONNX (for local applications)
    model_onnx_every: int = 1  # ... every N completed rounds of a run (1: every global model received)
    state_dir: str | None = None  # unacknowledged updates are kept here (fsync'd) and re-sent after a restart
    clock_offset_s: float = 0.0  # added to this device's wall clock (tests of skewed device clocks)
    # --- link caps and emulation (edge_agent.link_shaping); 0 = none
    upload_format: str = "float32"  # value format of uploaded updates: float32 | float16 | bfloat16 | int8
    max_uplink_kbps: float = 0.0  # cap on every byte the agent sends over MQTT, kbit/s
    daily_upload_cap_mb: float = 0.0  # MB (10**6 bytes) sent per UTC day, after which tasks are declined
    downlink_kbps: float = 0.0  # emulated downlink rate (trials), kbit/s
    link_latency_ms: float = 0.0  # emulated round-trip latency (trials): half on each direction
    link_jitter_ms: float = 0.0  # emulated extra one-way delay, uniform in [0, jitter]
    compute_factor: float = 1.0  # emulated slower device: training takes this many times as long
    wire_counters_file: str | None = None  # JSON file of this agent's MQTT byte counters (rewritten live)

    def __post_init__(self) -> None:
        check = _Checker()
        check(is_identifier(self.device_id), "device_id", f"{self.device_id!r} is not a valid device id: use 1-64 "
              "characters of A-Z a-z 0-9 _ . - (not starting with . or -), e.g. dev-003")
        self.broker_address  # noqa: B018 - parses and validates the URL
        check(self.dataset in DATA_SOURCES, "dataset", f"unknown data source {self.dataset!r}; choose one of "
              + ", ".join(DATA_SOURCES))
        check(self.dataset == "digits" or bool(self.data_dir), "data_dir",
              f"--dataset {self.dataset} needs --data-dir (a directory, or the file for npz and csv)")
        check(self.partition_kind in PARTITIONS, "partition_kind",
              f"unknown partition kind {self.partition_kind!r}; choose one of " + ", ".join(PARTITIONS))
        self.partition_spec  # noqa: B018 - parses and validates "I/N"
        check(self.classes_per_client >= 1, "classes_per_client", "must be >= 1")
        check(self.samples_per_class >= 1, "samples_per_class", "must be >= 1")
        check(self.beta > 0, "beta", "must be > 0")
        check(self.seed >= 0, "seed", "must be >= 0")
        check(self.threads >= 1, "threads", "must be >= 1")
        check(self.kernels in KERNEL_CHOICES, "kernels", "choose one of " + ", ".join(KERNEL_CHOICES))
        check(self.cpu_policy in CPU_POLICIES, "cpu_policy", "choose one of " + ", ".join(CPU_POLICIES))
        self.kernel_thresholds_file  # noqa: B018 - reads and validates the file, once
        check(self.heartbeat_s > 0, "heartbeat_s", "must be > 0 seconds")
        check(self.max_packet >= 1024, "max_packet", "must be at least 1024 bytes")
        check(self.max_message_bytes >= 1024, "max_message_bytes", "must be at least 1024 bytes")
        check(self.keepalive_s >= 5, "keepalive_s", "must be at least 5 seconds")
        check(self.session_expiry_s >= 0, "session_expiry_s", "must be >= 0 seconds")
        check(self.ack_timeout_s > 0, "ack_timeout_s", "must be > 0 seconds")
        check(0 < self.reconnect_min_s <= self.reconnect_max_s, "reconnect_min_s",
              "reconnect delays must satisfy 0 < reconnect_min_s <= reconnect_max_s")
        check(self.mqtt_protocol in MQTT_PROTOCOLS, "mqtt_protocol", "choose one of " + ", ".join(MQTT_PROTOCOLS))
        check(self.log_level in LOG_LEVELS, "log_level", "choose one of " + ", ".join(LOG_LEVELS))
        check(self.ca_file is None or self.broker_address.tls, "ca_file",
              "a CA file only makes sense with an mqtts:// broker URL")
        check((self.tls_cert_file is None) == (self.tls_key_file is None), "tls_cert_file",
              "mutual TLS needs both --tls-cert-file and --tls-key-file")
        check(self.tls_cert_file is None or self.broker_address.tls, "tls_cert_file",
              "a client certificate only makes sense with an mqtts:// broker URL")
        for name in ("ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            check(path is None or Path(path).is_file(), name, f"{path} is not a readable file")
        if self.username is not None:
            check(bool(self.username), "username", "must not be empty")
            check(self.username == self.device_id, "username",
                  f"the MQTT user name must be the device id ({self.device_id!r}): the broker uses it as the "
                  "client id and its ACL allows each user only the topics of the device with that id")
        check(self.state_dir is None or not Path(self.state_dir).is_file(), "state_dir",
              f"{self.state_dir!r} is a file; give a directory (created if missing), e.g. /var/lib/feddst/agent")
        check(abs(self.clock_offset_s) <= 7 * 86400, "clock_offset_s", "must be within +-7 days (seconds)")
        check(self.upload_format in UPLOAD_FORMATS, "upload_format", "choose one of " + ", ".join(UPLOAD_FORMATS))
        for name in ("max_uplink_kbps", "daily_upload_cap_mb", "downlink_kbps", "link_latency_ms", "link_jitter_ms"):
            value = getattr(self, name)
            check(value >= 0 and value != float("inf"), name, f"must be a finite number >= 0 (0 = none), got {value}")
        check(1.0 <= self.compute_factor <= 1000.0, "compute_factor", "must be in [1, 1000] (1 = this machine's "
              f"speed), got {self.compute_factor}")
        check(self.model_onnx_every >= 1, "model_onnx_every", "must be >= 1 (rounds between model.onnx writes)")
        if self.model_onnx_path is not None:
            check(bool(self.model_onnx_path) and not Path(self.model_onnx_path).is_dir(), "model_onnx_path",
                  f"{self.model_onnx_path!r} must be a file path (e.g. /var/lib/feddst/model.onnx), not a directory")
            check(importlib.util.find_spec("onnx") is not None, "model_onnx_path",
                  "writing model.onnx needs the onnx package: pip install 'feddst-edge[agent]' (or pip install onnx)")
        check(self.coordinator_key_file is None, "coordinator_key_file", COORDINATOR_KEY_FILE_REMOVED)
        if self.coordinator_public_key is not None:
            try:
                parse_public_key_hex(self.coordinator_public_key)
            except ValueError as exc:
                check(False, "coordinator_public_key", f"{exc}; copy it from `feddst cloud keys public`")
        else:
            check(self.insecure_unsigned_coordinator, "coordinator_public_key", NO_COORDINATOR_KEY)

    @property
    def coordinator_public_key_bytes(self) -> bytes | None:
        """The coordinator's raw 32-byte Ed25519 public key (None: insecure mode, nothing verified)."""
        key = self.coordinator_public_key
        return None if key is None else parse_public_key_hex(key)

    @property
    def broker_address(self) -> BrokerAddress:
        return parse_broker_url(self.broker_url)

    @property
    def partition_spec(self) -> PartitionSpec | None:
        return None if self.partition is None else parse_partition(self.partition)

    @functools.cached_property
    def kernel_thresholds_file(self) -> KernelThresholdsFile | None:
        """The parsed ``--kernel-thresholds`` file (None: not given)."""
        return None if self.kernel_thresholds is None else read_kernel_thresholds(self.kernel_thresholds)

    @property
    def kernel_threshold_table(self) -> ThresholdTable | None:
        """The auto policy's table for ``--kernels auto`` (None: the built-in one)."""
        info = self.kernel_thresholds_file
        return None if info is None else info.table

    @property
    def link_limits(self) -> LinkLimits:
        """The link shaping of ``edge_agent.link_shaping`` (uplink cap, emulated downlink and delay, daily cap)."""
        return LinkLimits(uplink_kbps=self.max_uplink_kbps, downlink_kbps=self.downlink_kbps,
                          latency_ms=self.link_latency_ms, jitter_ms=self.link_jitter_ms,
                          daily_upload_cap_bytes=int(self.daily_upload_cap_mb * 1e6))

    @property
    def mqtt_username(self) -> str:
        return self.username or self.device_id

    @property
    def mqtt_client_id(self) -> str:
        """The MQTT client id: the user name, as the broker's ``use_username_as_clientid`` makes it anyway."""
        return self.mqtt_username

    @property
    def client_index(self) -> int:
        """The client id used for seeding: I for ``--partition I/N``, else a stable hash of the device id."""
        spec = self.partition_spec
        if spec is not None:
            return spec.index
        return int.from_bytes(hashlib.sha256(self.device_id.encode()).digest()[:4], "little")

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with the password hidden (for logs)."""
        out = dataclasses.asdict(self)
        if out["password"]:
            out["password"] = "***"
        return out


class _Checker:
    def __call__(self, ok: bool, name: str, message: str) -> None:
        if not ok:
            raise AgentConfigError(f"{_flag(name)}: {message}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` (default 1883) or ``mqtts://host[:port]`` (default 8883): the parser the
    coordinator uses too (:func:`protocol.endpoint.parse_broker_url`), errors naming ``--broker-url``."""
    try:
        return endpoint.parse_broker_url(url)
    except endpoint.BrokerUrlError as exc:
        raise AgentConfigError(f"--broker-url: {exc}") from exc


_PARTITION = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_partition(text: str) -> PartitionSpec:
    """``I/N`` with ``0 <= I < N``."""
    match = _PARTITION.fullmatch(text)
    if match is None:
        raise AgentConfigError(f"--partition: {text!r} is not I/N; e.g. --partition 3/8 takes client 3 of 8 "
                               "(clients are numbered from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise AgentConfigError(f"--partition {text}: N must be >= 1")
    if index >= count:
        raise AgentConfigError(f"--partition {text}: client index {index} is out of range; with N={count} "
                               f"use 0..{count - 1} (clients are numbered from 0)")
    return PartitionSpec(index, count)


def read_key_file(path: str | Path, flag: str = "--key-file") -> bytes:
    """A hex-encoded key (whitespace ignored), at least 16 bytes once decoded."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{flag}: cannot read {p} ({exc}); the file must hold the key in hex") from exc
    digits = "".join(text.split())
    try:
        key = bytes.fromhex(digits)
    except ValueError as exc:
        raise AgentConfigError(f"{flag}: {p} is not hex; write the key as hex digits, e.g. "
                               "`python -c 'import secrets; print(secrets.token_hex(32))' > key.hex`") from exc
    if len(key) < MIN_KEY_BYTES:
        raise AgentConfigError(f"{flag}: {p} holds a {len(key)}-byte key; use at least {MIN_KEY_BYTES} bytes "
                               "(32 recommended)")
    return key


def read_kernel_thresholds(path: str | Path, flag: str = "--kernel-thresholds") -> KernelThresholdsFile:
    """A device's auto-policy table: the JSON file written on the device by ``MAKE_THRESHOLDS``
    (``feddst_core.sparse.parse_thresholds_json``'s form)."""
    p = Path(path)
    hint = f"make it on this device with `{MAKE_THRESHOLDS}`"
    if not p.is_file():
        raise AgentConfigError(f"{flag}: {p} {'is not a file' if p.exists() else 'does not exist'}; {hint}")
    try:
        table, note = parse_thresholds_json(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{flag}: cannot read {p} ({exc}); {hint}") from exc
    except ValueError as exc:
        raise AgentConfigError(f"{flag}: {p}: {exc}; {hint}") from exc
    return KernelThresholdsFile(str(p), table, note)


def kernel_thresholds_warnings(info: KernelThresholdsFile, native_loaded: bool, machine: str,
                               threads: int | None = None) -> list[str]:
    """Why the file may not describe this device: measured on another CPU architecture, or with(out)
    the native kernels while this device runs without (with) them (from the bench's ``measured_on``)."""
    out = []
    measured_machine = info.measured_on.get("machine")
    if isinstance(measured_machine, str) and measured_machine and measured_machine != machine:
        out.append(f"{info.path} was measured on {measured_machine}, this device is {machine}")
    status = info.measured_on.get("native_kernels")
    if isinstance(status, str) and status.startswith("loaded") != native_loaded:
        out.append(f"{info.path} was measured {'without' if native_loaded else 'with'} the native kernels "
                   f"({status}), but this agent runs {'with' if native_loaded else 'without'} them")
    measured_threads = info.measured_on.get("threads")
    if threads is not None and isinstance(measured_threads, int) and measured_threads != threads:
        out.append(f"{info.path} was measured with {measured_threads} thread(s), this agent trains with {threads} "
                   f"(calibrate with `--threads {threads}`)")
    return out


FIELDS = {f.name: f for f in dataclasses.fields(AgentSettings)}
DEPRECATED_NAMES = {"broker": "broker_url"}  # old setting name -> new (flags dict, file keys, env FEDDST_<OLD>)


def _renamed(values: dict[str, Any], where: str, spell: Any = str) -> dict[str, Any]:
    """``values`` with deprecated keys moved to their new names (a warning each; the new name wins)."""
    out = dict(values)
    for old, new in DEPRECATED_NAMES.items():
        if old in out:
            warnings.warn(f"{where}: setting {spell(old)} is deprecated, use {spell(new)} (same meaning)",
                          DeprecatedSettingWarning, stacklevel=3)
            value = out.pop(old)
            if out.get(new) is None:
                out[new] = value
    return out
_INT_FIELDS = {"classes_per_client", "samples_per_class", "seed", "threads", "max_packet", "max_message_bytes",
               "keepalive_s", "session_expiry_s", "model_onnx_every"}
_FLOAT_FIELDS = {"max_uplink_kbps", "daily_upload_cap_mb", "downlink_kbps", "link_latency_ms", "link_jitter_ms",
                 "compute_factor", "beta", "heartbeat_s", "ack_timeout_s", "reconnect_min_s", "reconnect_max_s",
                 "clock_offset_s"}
_BOOL_FIELDS = {"tls_insecure", "insecure_unsigned_coordinator"}


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Convert a raw value (string from env, anything from a file) to the field's type."""
    where = f"{_flag(name)} (from {origin})"
    try:
        if name in _BOOL_FIELDS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if name in _INT_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
    except ValueError as exc:
        raise AgentConfigError(f"{where}: {exc}") from exc
    if name == "partition" and isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}/{value[1]}"
    if name == "log_level":
        return str(value).lower()
    if not isinstance(value, str | int | float):
        raise AgentConfigError(f"{where}: expected a string, got {type(value).__name__}")
    return str(value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; unknown keys are an error."""
    p = Path(path)
    if not p.is_file():
        raise AgentConfigError(f"--config: {p} does not exist (pass a TOML file, see docs/agent.md)")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise AgentConfigError(f"--config: {p} is YAML but PyYAML is not installed; "
                                       "`pip install pyyaml` or use a .toml file") from exc
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
    except AgentConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a config error naming the file
        raise AgentConfigError(f"--config: cannot parse {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise AgentConfigError(f"--config: {p} must hold a table of settings")
    if isinstance(data.get("agent"), dict):
        data = data["agent"]
    out: dict[str, Any] = {}
    data = _renamed({str(k).replace("-", "_"): v for k, v in data.items()}, str(p))
    for raw_key, value in data.items():
        key = str(raw_key)
        if key not in FIELDS:
            raise AgentConfigError(f"--config: {p}: unknown setting {raw_key!r}; known: "
                                   + ", ".join(sorted(FIELDS)))
        out[key] = _coerce(key, value, str(p))
    return out


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``FEDDST_<NAME>`` variables (empty values are ignored)."""
    out: dict[str, Any] = {}
    for name in [*FIELDS, *DEPRECATED_NAMES]:
        value = environ.get(ENV_PREFIX + name.upper())
        if value not in (None, ""):
            out[name] = _coerce(DEPRECATED_NAMES.get(name, name), value, f"${ENV_PREFIX}{name.upper()}")
    return _renamed(out, "environment", spell=lambda n: ENV_PREFIX + n.upper())


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                  config_file: str | Path | None = None) -> AgentSettings:
    """Merge flags > env > file > defaults into validated ``AgentSettings``.

    ``flags``: setting name -> value, with None meaning "not given". ``config_file`` defaults to
    ``$FEDDST_CONFIG`` when set. Raises :class:`AgentConfigError`.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(read_config_file(config_file))
    merged.update(read_environment(environ))
    for name, value in _renamed({k: v for k, v in flags.items() if v is not None}, "flags").items():
        if name not in FIELDS:
            raise AgentConfigError(f"unknown setting {name!r}")
        if value is not None:
            merged[name] = value
    if not merged.get("device_id"):
        raise AgentConfigError("--device-id is required (or set FEDDST_DEVICE_ID, or device_id in the config "
                               "file), e.g. --device-id dev-003")
    return AgentSettings(**merged)
