"""Request and response schemas of the REST API (a run's request schema: :class:`cloud.run_config.RunConfig`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.store import DeviceRow, EnrollmentRow, RunRow


class ErrorOut(BaseModel):
    """The body of every error response except 422 (which has FastAPI's validation-error shape)."""

    detail: str = Field(description="What went wrong and, where it helps, what to do.")


class RoundOut(BaseModel):
    """One completed round: the report.json row fields plus diagnostics. Bytes are cumulative."""

    round: int
    accuracy: float | None = None
    global_accuracy: float | None = None
    upload_bytes: int
    download_bytes: int
    density: float
    train_loss: float | None = None
    seconds: float | None = None
    selected: list[str] = Field(default_factory=list)
    accepted: list[str] = Field(default_factory=list)
    ignored: dict[str, int] = Field(default_factory=dict)
    retries: int = 0


class RunSummaryOut(BaseModel):
    """One run in a listing. Times are Unix seconds."""

    id: str
    name: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    rounds_done: int | None = Field(None, description="Rounds completed (the current model's round).")

    @classmethod
    def from_row(cls, row: RunRow) -> RunSummaryOut:
        return cls(id=row.id, name=row.name, status=row.status, created_at=row.created_at,
                   started_at=row.started_at, finished_at=row.finished_at, error=row.error,
                   rounds_done=row.model_round)


class RunDetailOut(RunSummaryOut):
    """One run with its config, counters and every completed round."""

    config: dict[str, Any]
    counters: dict[str, int] = Field(default_factory=dict,
                                     description="accepted, duplicate, stale, unselected, invalid, ...")
    rounds: list[RoundOut]
    final_accuracy: float | None = None
    total_upload_bytes: int = 0
    total_download_bytes: int = 0

    @classmethod
    def from_parts(cls, row: RunRow, rounds: list[dict[str, Any]]) -> RunDetailOut:
        evaluated = [r for r in rounds if r.get("accuracy") is not None]
        return cls(**RunSummaryOut.from_row(row).model_dump(), config=row.config, counters=row.counters,
                   rounds=[RoundOut(**r) for r in rounds],
                   final_accuracy=evaluated[-1]["accuracy"] if evaluated else None,
                   total_upload_bytes=rounds[-1]["upload_bytes"] if rounds else 0,
                   total_download_bytes=rounds[-1]["download_bytes"] if rounds else 0)


class DeviceOut(BaseModel):
    """One device of the registry."""

    id: str
    status: str = Field(description="online | offline")
    state: str = Field(description="last reported state: online | busy | offline")
    last_seen: float = Field(description="Unix time of the last message from the device")
    capabilities: dict[str, Any]
    sample_count: int
    rounds_done: int
    bytes_up: int
    bytes_down: int

    @classmethod
    def from_row(cls, row: DeviceRow, online: bool) -> DeviceOut:
        return cls(id=row.id, status="online" if online else "offline", state=row.state, last_seen=row.last_seen,
                   capabilities=row.capabilities, sample_count=row.sample_count, rounds_done=row.rounds_done,
                   bytes_up=row.bytes_up, bytes_down=row.bytes_down)


class HealthOut(BaseModel):
    """Liveness: ``ok``, or ``degraded`` while the MQTT broker is disconnected."""

    status: str
    broker_connected: bool
    active_run: str | None


class EnrollIn(BaseModel):
    """Body of ``POST /api/devices/{id}/enroll`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reissue: bool = Field(False, description="The device is enrolled: give it new credentials (the old bundle "
                                             "stops working at once).")


class EnrollmentOut(BaseModel):
    """An enrolled device (its key is never shown again after enrollment)."""

    device_id: str
    status: str = Field(description="active | revoked")
    enrolled_at: float = Field(description="Unix time of the (last) enrollment")
    revoked_at: float | None = Field(description="Unix time of the revocation, if revoked")

    @classmethod
    def from_row(cls, row: EnrollmentRow) -> EnrollmentOut:
        return cls(device_id=row.device_id, status=row.status, enrolled_at=row.enrolled_at, revoked_at=row.revoked_at)


class DeviceBundleOut(BaseModel):
    """A device bundle: what ``deploy/install_agent.sh --bundle FILE`` installs. Holds the device's secrets
    (``mqtt_password``, ``device_key_hex``): save it with mode 0600, hand it to the device, delete it."""

    format: str
    version: int
    device_id: str
    broker_url: str
    mqtt_username: str
    mqtt_password: str | None = Field(description="None when the coordinator does not manage the broker")
    device_key_hex: str = Field(description="The device's own HMAC-SHA256 key, 32 bytes as hex")
    coordinator_public_key: str = Field(description="The coordinator's Ed25519 public key, 64 hex characters")
    ca_certificate_pem: str | None = Field(description="The broker's private CA (PEM), if configured")
    issued_at: float
