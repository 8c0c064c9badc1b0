"""``CloudSettings``: every start-up knob of ``feddst cloud serve``, validated once.

Sources, highest priority first: explicit keyword arguments (CLI flags), environment variables
(prefix ``FEDDST_CLOUD_``, e.g. ``FEDDST_CLOUD_BROKER_URL``), then an optional JSON or TOML
config file. Secrets (``mqtt_password``, keys) have no default values.

The coordinator signs every message it sends with its Ed25519 key (``signing_key_file``, created
on first start; devices get its public key from ``feddst cloud keys public``). The former shared
HMAC key ``coordinator_key_hex`` is refused with an error saying so: every device held it, so any
device could forge the coordinator's messages.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.mqtt_link import TlsFiles
from cloud.signing_key import DEFAULT_SIGNING_KEY_NAME
from feddst_core.choices import MqttVersion
from protocol import DEFAULT_MAX_PACKET
from protocol.endpoint import BrokerAddress, parse_broker_url

COORDINATOR_KEY_HEX_REMOVED = (
    "coordinator_key_hex (FEDDST_CLOUD_COORDINATOR_KEY_HEX) is no longer supported: one HMAC key held by every "
    "device let any device forge the coordinator's tasks, models and aborts. The coordinator now signs with its "
    "own Ed25519 key (signing_key_file, default <state_dir>/" + DEFAULT_SIGNING_KEY_NAME + ", created on first "
    "start). Remove the setting and give each agent the public key printed by `feddst cloud keys public` "
    "(agent setting coordinator_public_key).")


class CloudSettings(BaseSettings):
    """Coordinator configuration."""

    model_config = SettingsConfigDict(env_prefix="FEDDST_CLOUD_", extra="forbid")

    broker_url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port (mqtts:// for TLS); parsed by "
                            "protocol.endpoint.parse_broker_url, as the agent's setting of the same name.")
    mqtt_username: str | None = Field("coordinator", description="MQTT user name (None: anonymous).")
    mqtt_password: SecretStr | None = Field(None, description="MQTT password; no default value.")
    mqtt_protocol: MqttVersion = Field(
        "3.1.1", description="MQTT protocol version (3.1.1 works with mosquitto and the embedded amqtt broker).")
    mqtt_client_id: str = "coordinator"
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    state_dir: Path = Path("cloud-state")
    heartbeat_s: float = Field(5.0, gt=0, description="Device heartbeat period; online = seen within 3x.")
    max_packet: int = Field(DEFAULT_MAX_PACKET, ge=1024, description="Largest MQTT payload before chunking.")
    mqtt_receive_queue_packets: int = Field(
        65536, ge=1, description="Bound of the queue between the MQTT callback and the decoder thread (packets); "
        "a burst beyond it is dropped and counted (feddst_mqtt_dropped_packets_total), never blocking the network "
        "thread.")
    mqtt_receive_queue_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Bound of the same queue in payload bytes: PUBACKs wait until the "
        "decoder takes a packet and the network thread stops reading while the queue holds more, so the broker "
        "holds a backlog (its max_queued_messages / max_queued_bytes must allow it), not the coordinator's RAM.")
    gil_switch_interval_s: float | None = Field(
        None, gt=0, le=1.0, description="sys.setswitchinterval for the coordinator process (seconds a thread "
        "keeps the GIL while another waits; None, the default: Python's 0.005). The MQTT network thread, the "
        "decoder and the main loop share the GIL: each C call that releases it (socket I/O, zstd, hashing) "
        "waits up to the interval to get it back. 1 ms took a 10 000-device round from 26.8 / 40.4 s to 21.3 / "
        "25.0 s before the decoder got cheaper (branch ingest2), and changed nothing after it (19.45 vs 19.68 s; "
        "docs/results.md, \"roundpath\").")
    device_keys_file: Path | None = Field(
        None, description="JSON object device id -> hex HMAC key; when set, updates must be authenticated.")
    coordinator_key_hex: SecretStr | None = Field(
        None, description="Removed (a shared HMAC key): setting it is an error that explains the Ed25519 key.")
    sse_keepalive_s: float = Field(15.0, gt=0, description="Seconds between keep-alive comments of an idle "
                                   "/api/runs/{id}/events stream.")
    metrics_require_token: bool = Field(
        False, description="When true, GET /metrics needs a viewer API token (default: open, like most "
                           "Prometheus targets).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Level of the coordinator's log lines (stderr; uvicorn's too).")
    data_roots: list[Path] = Field(
        default_factory=list,
        description="Directories a run config's eval.data_dir may lie under (symlinks and .. resolved first). "
                    "Default none: only the built-in digits dataset can be evaluated. Env: a JSON list.")
    require_device_keys: bool = Field(
        False, description="Authenticate every device message even when no device is enrolled and no "
        "device_keys_file is set (with either, messages are always authenticated).")
    signing_key_file: Path | None = Field(
        None, description="The coordinator's Ed25519 signing key (PKCS#8 PEM, mode 0600), created on first use: "
        f"it signs every message the coordinator sends. Default: <state_dir>/{DEFAULT_SIGNING_KEY_NAME}.")
    ca_file: Path | None = Field(None, description="PEM CA bundle that signed the broker's certificate (mqtts://); "
                                 "default: the system store. Also handed to devices in their enrollment bundle.")
    cert_file: Path | None = Field(None, description="PEM client certificate for mutual TLS with the broker.")
    key_file: Path | None = Field(None, description="PEM private key of cert_file (mutual TLS).")
    broker_admin: Literal["dynsec", "none"] = Field(
        "dynsec", description="How enrollment and revocation update the broker: 'dynsec' (mosquitto's "
        "dynamic-security plugin, at run time) or 'none' (you manage broker users yourself).")
    broker_admin_username: str = Field(
        "feddst-admin", description="The dynsec admin MQTT user (`mosquitto_ctrl dynsec init FILE USER`); must "
        "differ from mqtt_username: dynsec disconnects every session of a user whose roles change.")
    broker_admin_password: SecretStr | None = Field(
        None, description="Its password; needed only to enroll and revoke (no default value).")
    device_broker_url: str | None = Field(
        None, description="Broker URL written into device bundles, as devices reach it (default: broker_url).")
    resume_runs: bool = Field(
        True, description="At start-up, resume the run the previous coordinator process was running (killed or "
        "shut down) from its last checkpointed round. Off: it stays `interrupted` until "
        "POST /api/runs/{id}/resume.")
    database_url: str | None = Field(
        None, description="The store's database: postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DATABASE for "
        "PostgreSQL (psycopg 3; postgresql:// means the same), or sqlite:///PATH. Default: SQLite "
        "<state_dir>/coordinator.sqlite3. Model files stay in <state_dir>/models either way.")
    checkpoint_retention: int = Field(
        0, ge=0, description="Round model files kept per run: the last N rounds plus round 0 and the current "
        "(final) one; older ones are deleted after each saved round. 0 (default): keep all.")

    @model_validator(mode="after")
    def _refuse_shared_coordinator_key(self) -> CloudSettings:
        if self.coordinator_key_hex is not None:
            raise ValueError(COORDINATOR_KEY_HEX_REMOVED)
        return self

    @field_validator("broker_url", "device_broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_broker_url(value)  # the agent's parser too; BrokerUrlError is a ValueError
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None:
            from cloud.store_database import DatabaseError, database_url

            try:
                database_url(Path("."), value)
            except DatabaseError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def broker_address(self) -> BrokerAddress:
        return parse_broker_url(self.broker_url)

    @property
    def broker_host(self) -> str:
        return self.broker_address.host

    @property
    def broker_port(self) -> int:
        return self.broker_address.port

    @property
    def broker_tls(self) -> bool:
        return self.broker_address.tls

    @model_validator(mode="after")
    def _check_tls_files(self) -> CloudSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        if self.broker_admin == "dynsec" and self.broker_admin_username == self.mqtt_username:
            raise ValueError(f"broker_admin_username must differ from mqtt_username ({self.mqtt_username!r}): "
                             "dynsec disconnects every session of a user whose roles change, admin included")
        if (self.ca_file or self.cert_file) and not self.broker_tls:
            raise ValueError("ca_file/cert_file need an mqtts:// broker_url")
        return self

    def tls_files(self) -> TlsFiles:
        """The CA and client certificate paths for an mqtts:// connection."""
        return TlsFiles(*(str(p) if p else None for p in (self.ca_file, self.cert_file, self.key_file)))

    @property
    def bundle_broker_url(self) -> str:
        return self.device_broker_url or self.broker_url

    def device_keys(self) -> dict[str, bytes] | None:
        """Device id -> HMAC key from ``device_keys_file`` (None when keys are not configured)."""
        if self.device_keys_file is None:
            return None
        raw = json.loads(self.device_keys_file.read_text())
        return {str(device): bytes.fromhex(str(key)) for device, key in raw.items()}

    @property
    def signing_key_path(self) -> Path:
        """Where the coordinator's Ed25519 signing key lives (``signing_key_file`` or the state dir default)."""
        return self.signing_key_file or self.state_dir / DEFAULT_SIGNING_KEY_NAME

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> CloudSettings:
        """Settings from flags (``overrides``, None values skipped) > environment > config file."""
        file_values: dict[str, Any] = {}
        if config_file is not None:
            text = config_file.read_text()
            file_values = tomllib.loads(text) if config_file.suffix == ".toml" else json.loads(text)
        flags = {k: v for k, v in overrides.items() if v is not None}
        env_set = cls._env_names()
        merged = {k: v for k, v in file_values.items() if k not in env_set}
        merged.update(flags)
        return cls(**merged)

    @classmethod
    def _env_names(cls) -> set[str]:
        import os

        prefix = cls.model_config.get("env_prefix", "")
        return {name for name in cls.model_fields if f"{prefix}{name}".upper() in os.environ}
