"""``AgentSettings``: every setting of ``feddst agent run``, merged from flags, env, file and defaults.

One definition: each setting is a field of the pydantic-settings model below, with its type, default and
description (units included); the ``feddst agent run`` options (``feddst_cli.agent_command``) and the
settings table of ``docs/agent.md`` are generated from it (``edge_agent.settings_reference``).

Precedence, highest first (:func:`load_settings`): command-line flags (the model's init keyword
arguments) > environment variables (``FEDDST_<NAME>``, e.g. ``FEDDST_BROKER_URL``, ``FEDDST_PASSWORD``) >
the config file (TOML, or YAML when PyYAML is installed; keys are the setting names, with ``_`` or ``-``,
at top level or under an ``[agent]`` table) > the defaults below. ``AgentSettings(...)`` called directly
validates exactly the values given (no environment, no file).

Secure by default: the agent verifies every coordinator message with ``coordinator_public_key``
(64 hex characters, from ``feddst cloud keys public`` or the device's enrollment bundle). Without it the
settings are refused, unless ``insecure_unsigned_coordinator`` is set (demos and tests only; logged as a
warning). The former shared HMAC key ``coordinator_key_file`` is refused with an error explaining the change.

Old names keep working with a :class:`~protocol.endpoint.DeprecatedSettingWarning` naming the new one
(``DEPRECATED_NAMES``: ``broker`` / ``FEDDST_BROKER`` are now ``broker_url`` / ``FEDDST_BROKER_URL``).

Every bad value raises :class:`AgentConfigError`, one line naming the setting's flag and saying how to fix
it (never pydantic's error dump). Validation happens once, here; the rest of the agent trusts ``AgentSettings``.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.kernel_thresholds_file import (
    MAKE_THRESHOLDS,
    KernelThresholdsFile,
    ThresholdTable,
    kernel_thresholds_warnings,
    read_kernel_thresholds,
)
from edge_agent.link_shaping import LinkLimits
from edge_agent.setting_fields import AgentSettingFields
from edge_agent.settings_sources import (
    DEPRECATED_NAMES,
    AgentConfigError,
    ConfigFileSource,
    EnvironmentSource,
    flag_name,
    renamed,
)
from edge_agent.settings_sources import read_config_file as _read_config_file
from protocol import endpoint, is_identifier
from protocol.ed25519 import parse_public_key_hex
from protocol.endpoint import BrokerAddress

__all__ = ["DEPRECATED_NAMES", "ENV_PREFIX", "MAKE_THRESHOLDS", "AgentConfigError", "AgentSettings",
           "KernelThresholdsFile", "PartitionSpec", "ThresholdTable", "kernel_thresholds_warnings", "load_settings",
           "parse_broker_url", "parse_partition", "read_config_file", "read_environment", "read_kernel_thresholds",
           "read_key_file"]

ENV_PREFIX = "FEDDST_"
MIN_KEY_BYTES = 16
DEVICE_ID_REQUIRED = ("--device-id is required (or set FEDDST_DEVICE_ID, or device_id in the config file), "
                      "e.g. --device-id dev-003")
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
_CHOICE_NOUNS = {"dataset": "data source", "partition_kind": "partition kind"}  # "unknown data source 'x'; ..."
_LOAD_FROM: contextvars.ContextVar[tuple[Mapping[str, str], str | Path | None] | None] = contextvars.ContextVar(
    "agent_settings_sources", default=None)  # set by load_settings: the environment and the config file


@dataclass(frozen=True)
class PartitionSpec:
    """``--partition I/N``: this device holds client I's share of an N-client partition."""

    index: int
    count: int


class AgentSettings(AgentSettingFields, BaseSettings):
    """Validated agent settings (the fields are in ``edge_agent.setting_fields``; sources: module docstring)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init kwargs) > ``FEDDST_*`` > the config file, inside :func:`load_settings`; else the kwargs only."""
        where = _LOAD_FROM.get()
        if where is None:
            return (init_settings,)
        environ, config_file = where
        sources: list[PydanticBaseSettingsSource] = [init_settings, EnvironmentSource(settings_cls, environ)]
        if config_file:
            sources.append(ConfigFileSource(settings_cls, config_file))
        return tuple(sources)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("*", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value  # file settings are kept as str

    @model_validator(mode="after")
    def _check(self) -> AgentSettings:
        _check_identity(self)
        _check_data_and_runtime(self)
        _check_files_and_link(self)
        return self

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
        """The parsed ``--kernel-thresholds`` file (None: not given), read once, when the settings are made."""
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
        """The settings as a flat dict of the fields with the password hidden (for logs)."""
        out = self.model_dump()
        if out["password"]:
            out["password"] = "***"
        return out


FIELDS = AgentSettings.model_fields


def _check_that(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise AgentConfigError(f"{flag_name(name)}: {message}")


def _check_identity(s: AgentSettings) -> None:
    """Device id, broker, MQTT identity and the coordinator's key."""
    if not s.device_id:
        raise AgentConfigError(DEVICE_ID_REQUIRED)
    _check_that(is_identifier(s.device_id), "device_id", f"{s.device_id!r} is not a valid device id: use 1-64 "
                "characters of A-Z a-z 0-9 _ . - (not starting with . or -), e.g. dev-003")
    tls = s.broker_address.tls  # parses and validates the URL
    _check_that(s.ca_file is None or tls, "ca_file", "a CA file only makes sense with an mqtts:// broker URL")
    _check_that((s.tls_cert_file is None) == (s.tls_key_file is None), "tls_cert_file",
                "mutual TLS needs both --tls-cert-file and --tls-key-file")
    _check_that(s.tls_cert_file is None or tls, "tls_cert_file",
                "a client certificate only makes sense with an mqtts:// broker URL")
    for name in ("ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(s, name)
        _check_that(path is None or Path(path).is_file(), name, f"{path} is not a readable file")
    if s.username is not None:
        _check_that(bool(s.username), "username", "must not be empty")
        _check_that(s.username == s.device_id, "username",
                    f"the MQTT user name must be the device id ({s.device_id!r}): the broker uses it as the "
                    "client id and its ACL allows each user only the topics of the device with that id")
    _check_that(s.coordinator_key_file is None, "coordinator_key_file", COORDINATOR_KEY_FILE_REMOVED)
    if s.coordinator_public_key is not None:
        try:
            parse_public_key_hex(s.coordinator_public_key)
        except ValueError as exc:
            _check_that(False, "coordinator_public_key", f"{exc}; copy it from `feddst cloud keys public`")
    else:
        _check_that(s.insecure_unsigned_coordinator, "coordinator_public_key", NO_COORDINATOR_KEY)


def _check_data_and_runtime(s: AgentSettings) -> None:
    """Local data, partition, training and MQTT timing."""
    _check_that(s.dataset == "digits" or bool(s.data_dir), "data_dir",
                f"--dataset {s.dataset} needs --data-dir (a directory, or the file for npz and csv)")
    s.partition_spec  # noqa: B018 - parses and validates "I/N"
    for name in ("classes_per_client", "samples_per_class", "threads"):
        _check_that(getattr(s, name) >= 1, name, "must be >= 1")
    _check_that(s.beta > 0, "beta", "must be > 0")
    _check_that(s.seed >= 0, "seed", "must be >= 0")
    s.kernel_thresholds_file  # noqa: B018 - reads and validates the file, once
    _check_that(s.heartbeat_s > 0, "heartbeat_s", "must be > 0 seconds")
    _check_that(s.max_packet >= 1024, "max_packet", "must be at least 1024 bytes")
    _check_that(s.max_message_bytes >= 1024, "max_message_bytes", "must be at least 1024 bytes")
    _check_that(s.keepalive_s >= 5, "keepalive_s", "must be at least 5 seconds")
    _check_that(s.session_expiry_s >= 0, "session_expiry_s", "must be >= 0 seconds")
    _check_that(s.ack_timeout_s > 0, "ack_timeout_s", "must be > 0 seconds")
    _check_that(0 < s.reconnect_min_s <= s.reconnect_max_s, "reconnect_min_s",
                "reconnect delays must satisfy 0 < reconnect_min_s <= reconnect_max_s")
    _check_that(s.state_dir is None or not Path(s.state_dir).is_file(), "state_dir",
                f"{s.state_dir!r} is a file; give a directory (created if missing), e.g. /var/lib/feddst/agent")
    _check_that(abs(s.clock_offset_s) <= 7 * 86400, "clock_offset_s", "must be within +-7 days (seconds)")


def _check_files_and_link(s: AgentSettings) -> None:
    """Link caps and emulation, the model.onnx output."""
    for name in ("max_uplink_kbps", "daily_upload_cap_mb", "downlink_kbps", "link_latency_ms", "link_jitter_ms"):
        value = getattr(s, name)
        _check_that(value >= 0 and value != float("inf"), name, f"must be a finite number >= 0 (0 = none), got {value}")
    _check_that(1.0 <= s.compute_factor <= 1000.0, "compute_factor", "must be in [1, 1000] (1 = this machine's "
                f"speed), got {s.compute_factor}")
    _check_that(s.model_onnx_every >= 1, "model_onnx_every", "must be >= 1 (rounds between model.onnx writes)")
    if s.model_onnx_path is not None:
        _check_that(bool(s.model_onnx_path) and not Path(s.model_onnx_path).is_dir(), "model_onnx_path",
                    f"{s.model_onnx_path!r} must be a file path (e.g. /var/lib/feddst/model.onnx), not a directory")
        _check_that(importlib.util.find_spec("onnx") is not None, "model_onnx_path",
                    "writing model.onnx needs the onnx package: pip install 'feddst-edge[agent]' (or pip install onnx)")


def _config_error(exc: ValidationError) -> AgentConfigError:
    """pydantic's first error as one line naming the flag (our own checks' errors unchanged)."""
    errors = exc.errors()
    if any(e["type"] == "missing" and e["loc"] == ("device_id",) for e in errors):
        return AgentConfigError(DEVICE_ID_REQUIRED)
    error = errors[0]
    original = error.get("ctx", {}).get("error")
    if isinstance(original, AgentConfigError):
        return original
    name = str(error["loc"][0]) if error["loc"] else "settings"
    if error["type"] == "extra_forbidden":
        return AgentConfigError(f"unknown setting {name!r}")
    if error["type"] == "literal_error":
        choices = ", ".join(str(c) for c in get_args(FIELDS[name].annotation))
        noun = _CHOICE_NOUNS.get(name)
        what = f"unknown {noun} {error['input']!r}; " if noun else ""
        return AgentConfigError(f"{flag_name(name)}: {what}choose one of {choices}")
    return AgentConfigError(f"{flag_name(name)}: {error['msg'][0].lower()}{error['msg'][1:]} (got {error['input']!r})")


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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; unknown keys are an error."""
    return _read_config_file(path, FIELDS)


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``FEDDST_<NAME>`` variables (empty values are ignored)."""
    return EnvironmentSource(AgentSettings, environ)()


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                  config_file: str | Path | None = None) -> AgentSettings:
    """Merge flags > env > file > defaults into validated ``AgentSettings``.

    ``flags``: setting name -> value, with None meaning "not given". ``config_file`` defaults to
    ``$FEDDST_CONFIG`` when set. Raises :class:`AgentConfigError`.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    given = renamed({k: v for k, v in flags.items() if v is not None}, "flags")
    token = _LOAD_FROM.set((environ, config_file))
    try:
        return AgentSettings(**given)
    finally:
        _LOAD_FROM.reset(token)
