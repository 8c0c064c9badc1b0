"""Request and response schemas of the REST API (a run's request schema: :class:`cloud.run_config.RunConfig`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from cloud.run_phase import RunPhase
from cloud.store import DeviceErrorRow, DeviceRow, EnrollmentRow, RunRow


class ErrorOut(BaseModel):
    """The body of every error response except 422 (which has FastAPI's validation-error shape)."""

    detail: str = Field(description="What went wrong and, where it helps, what to do.")


class DeviceErrorBriefOut(BaseModel):
    """An error a device reported for a round."""

    code: str = Field(description="bad_data | out_of_memory | model_unavailable | training_failed | other (or a "
                      "newer device's code)")
    detail: str


class RoundOut(BaseModel):
    """One completed round: the report.json row fields plus diagnostics. ``upload_bytes`` and
    ``download_bytes`` are cumulative over rounds 1..round (encoded message bytes)."""

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
    ignored: dict[str, int] = Field(default_factory=dict, description="Updates not accepted this round, by "
                                    "reason (duplicate, stale, unselected, invalid).")
    retries: int = Field(0, description="Times the round was re-sent after missing its quorum.")
    late: list[str] = Field(default_factory=list, description="Selected devices with no accepted update when "
                            "the round closed.")
    upload_by_device: dict[str, int] = Field(default_factory=dict, description="Encoded bytes of each accepted "
                                             "update, by device (the devices that contributed).")
    status_upload_bytes: int = Field(0, description="Encoded bytes of the devices' Status (heartbeat) messages "
                                     "the coordinator received during the run so far (cumulative).")
    layer_density: dict[str, float] = Field(default_factory=dict, description="Density (kept fraction, 0..1) "
                                            "of each masked layer of the new global model.")
    started_at: float | None = Field(None, description="Unix seconds when the round's task was first sent.")
    closed_at: float | None = Field(None, description="Unix seconds when the round closed.")
    broadcast_s: float | None = Field(None, description="Seconds the coordinator spent signing and encoding the "
                                      "round's ModelBroadcast and handing it and the Tasks to the MQTT client.")
    tasks_s: float | None = Field(None, description="The part of broadcast_s (or of the last retry's send) spent "
                                  "signing each selected device's Task and handing it to the MQTT client.")
    published_at: float | None = Field(None, description="Unix seconds when the round's model and Tasks were "
                                       "handed to the MQTT client.")
    aggregation_s: float | None = Field(None, description="Seconds spent aggregating the accepted updates "
                                        "(streaming adds + finish).")
    update_received_at: dict[str, float] = Field(default_factory=dict, description="Device id -> Unix seconds "
                                                 "when the last packet of its accepted update reached the "
                                                 "coordinator.")
    errors: dict[str, DeviceErrorBriefOut] = Field(default_factory=dict, description="Device id -> the error it "
                                                   "reported instead of an update this round.")


class RunPhaseOut(BaseModel):
    """What a running run is doing now."""

    name: str = Field(description="starting | waiting_for_devices | collecting | aggregating | evaluating")
    round: int = Field(description="The round being prepared, collected, aggregated or evaluated.")
    done: int = Field(0, description="waiting_for_devices: eligible devices online; collecting: updates accepted.")
    total: int = Field(0, description="waiting_for_devices: devices the round needs; collecting: devices selected.")
    progress: str = Field("", description="done/total, e.g. '3/5' ('' for phases without progress).")
    since: float | None = Field(None, description="Unix time the phase began.")

    @classmethod
    def from_phase(cls, phase: RunPhase | None) -> RunPhaseOut | None:
        if phase is None:
            return None
        return cls(name=phase.name, round=phase.round, done=phase.done, total=phase.total,
                   progress=phase.progress, since=phase.since)


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
    algorithm: str | None = Field(None, description="The run config's algorithm.")
    rounds_total: int | None = Field(None, description="The run config's number of rounds.")
    latest_accuracy: float | None = Field(None, description="Accuracy (0..1) of the last evaluated round.")
    upload_bytes: int = Field(0, description="Bytes uploaded by devices so far (accepted updates).")
    download_bytes: int = Field(0, description="Bytes downloaded by devices so far (model broadcasts).")
    phase: RunPhaseOut | None = Field(None, description="What a running run is doing now (null otherwise).")

    @classmethod
    def from_row(cls, row: RunRow, progress: dict[str, Any] | None = None,
                 phase: RunPhase | None = None) -> RunSummaryOut:
        progress = progress or {}
        return cls(id=row.id, name=row.name, status=row.status, created_at=row.created_at,
                   started_at=row.started_at, finished_at=row.finished_at, error=row.error,
                   rounds_done=row.model_round, algorithm=row.config.get("algorithm"),
                   rounds_total=row.config.get("rounds"), latest_accuracy=progress.get("latest_accuracy"),
                   upload_bytes=progress.get("upload_bytes", 0), download_bytes=progress.get("download_bytes", 0),
                   phase=RunPhaseOut.from_phase(phase))


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
    def from_parts(cls, row: RunRow, rounds: Sequence[RoundOut], phase: RunPhase | None = None) -> RunDetailOut:
        """The run ``row`` with its ``rounds`` (in round order; see :func:`rounds_from_json`)."""
        evaluated = [r for r in rounds if r.accuracy is not None]
        last = rounds[-1] if rounds else None
        progress = {"latest_accuracy": evaluated[-1].accuracy if evaluated else None,
                    "upload_bytes": last.upload_bytes if last else 0,
                    "download_bytes": last.download_bytes if last else 0}
        return cls(**RunSummaryOut.from_row(row, progress, phase).model_dump(), config=row.config,
                   counters=row.counters, rounds=list(rounds),
                   final_accuracy=progress["latest_accuracy"],
                   total_upload_bytes=progress["upload_bytes"], total_download_bytes=progress["download_bytes"])


ROUND_LIST = TypeAdapter(list[RoundOut])


def rounds_from_json(texts: Sequence[str]) -> list[RoundOut]:
    """Stored round records (JSON objects, :meth:`CoordinatorStore.round_texts`) validated in one pass
    by pydantic's JSON parser: 1000 rounds in ~30 ms where ``json.loads`` + ``RoundOut(**r)`` take ~70 ms."""
    return ROUND_LIST.validate_json("[" + ",".join(texts) + "]")


class DeviceOut(BaseModel):
    """One device of the registry."""

    id: str
    status: str = Field(description="online | offline")
    state: str = Field(description="last reported state: online | busy | offline")
    last_seen: float = Field(description="Unix time of the last message from the device")
    capabilities: dict[str, Any]
    sample_count: int
    rounds_done: int
    bytes_up: int = Field(description="Bytes of every message received from the device")
    bytes_down: int = Field(description="Bytes of the broadcasts and tasks sent to the device")
    last_error: str | None = Field(None, description="The text of the last task failure the device reported "
                                   "(null: none yet).")
    last_error_at: float | None = Field(None, description="Unix time of ``last_error``.")
    last_error_code: str | None = Field(None, description="Reason code of ``last_error``: bad_data | "
                                        "out_of_memory | model_unavailable | training_failed | other (or a "
                                        "newer device's code).")
    last_error_run_id: str | None = Field(None, description="The run of the task that failed.")
    last_error_round: int | None = Field(None, description="The round of the task that failed.")

    @classmethod
    def from_row(cls, row: DeviceRow, online: bool, last_error: DeviceErrorRow | None = None) -> DeviceOut:
        return cls(id=row.id, status="online" if online else "offline", state=row.state, last_seen=row.last_seen,
                   capabilities=row.capabilities, sample_count=row.sample_count, rounds_done=row.rounds_done,
                   bytes_up=row.bytes_up, bytes_down=row.bytes_down,
                   last_error=last_error.detail if last_error else None,
                   last_error_at=last_error.at if last_error else None,
                   last_error_code=last_error.code if last_error else None,
                   last_error_run_id=last_error.run_id if last_error else None,
                   last_error_round=last_error.round if last_error else None)


class DeviceRoundOut(BaseModel):
    """One round a device was selected for."""

    run_id: str
    round: int
    accepted: bool = Field(description="Its update was accepted (it contributed to the round).")
    late: bool = Field(description="It had no accepted update when the round closed.")
    upload_bytes: int = Field(description="Encoded bytes of its accepted update (0 if none).")
    closed_at: float | None = Field(None, description="Unix seconds when the round closed.")

    @classmethod
    def from_record(cls, run_id: str, device_id: str, record: dict[str, Any]) -> DeviceRoundOut:
        accepted = device_id in record.get("accepted", ())
        return cls(run_id=run_id, round=record["round"], accepted=accepted, late=not accepted,
                   upload_bytes=int(record.get("upload_by_device", {}).get(device_id, 0)),
                   closed_at=record.get("closed_at"))


class DeviceDetailOut(DeviceOut):
    """One device with its latest rounds (newest first)."""

    history: list[DeviceRoundOut]


class RunEventOut(BaseModel):
    """The JSON ``data`` of one server-sent event of ``GET /api/runs/{id}/events``. ``event: round``
    carries a :class:`RoundOut`; ``event: status`` ``{status, error}``; ``event: device_error``
    ``{device_id, round, code, message}``. Every one adds ``published_at``."""

    published_at: float = Field(description="Unix seconds when the coordinator published the event.")


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
