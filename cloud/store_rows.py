"""The rows the coordinator store hands out and takes (plain dataclasses; times are Unix seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RUN_STATUSES = ("created", "running", "completed", "stopped", "failed", "interrupted")


@dataclass
class RunRow:
    id: str
    name: str
    config: dict[str, Any]
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    model_round: int | None
    counters: dict[str, int]


@dataclass(frozen=True)
class SequenceRow:
    """Replay state of one device: the highest seq accepted, and its current last will (u64 values)."""

    device_id: str
    last_seq: int
    will_seq: int = 0
    will_used: bool = False


@dataclass(frozen=True)
class DeviceErrorRow:
    """One error a device reported: the task (run, round) it could not do, a reason code, a text, when."""

    device_id: str
    run_id: str
    round: int
    code: str
    detail: str
    at: float


@dataclass
class DeviceRow:
    id: str
    capabilities: dict[str, Any]
    sample_count: int
    state: str
    last_seen: float
    rounds_done: int
    bytes_up: int
    bytes_down: int


ENROLLMENT_STATUSES = ("active", "revoked")


@dataclass(frozen=True)
class EnrollmentRow:
    """An enrolled device: its HMAC key (hex) and whether it is ``active`` or ``revoked`` (Unix times)."""

    device_id: str
    device_key_hex: str
    status: str
    enrolled_at: float
    revoked_at: float | None
