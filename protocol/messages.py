"""The typed messages exchanged by coordinator and agents (frozen dataclasses).

Each message class has ``MESSAGE_TYPE`` (the envelope's type byte) and ``SCHEMA_VERSION`` (the
first byte of its payload). Identifiers (run ids, device ids) follow :data:`IDENTIFIER_PATTERN`
because they appear in MQTT topic names.

Field conventions:

* ``server_round`` is the coordinator's round counter (u32). Register and Status are not tied
  to a run: they travel with an empty run id and round 0 in the envelope.
* The envelope carries ``run_id``, ``server_round`` and the sender id once; payloads do not
  repeat them. For device-originated messages (Register, Status, Update) ``device_id`` *is* the
  envelope's sender id, so an authenticated sender cannot claim another device's identity
  (DeviceError too).
* ``Update.tensors`` carry ``mask=None`` for weights whose mask is unchanged or described by
  ``mask_changes``: their values are in the C order of the set positions of the device's mask
  *after* applying ``mask_changes[name]`` to the mask it was sent. Biases are dense (all values).
  A tensor may instead carry its own ``mask`` (self-contained), which then takes precedence.
* ``ModelBroadcast`` always carries the global weights (self-contained tensors). Its layout keeps
  five reserved bytes (``has_base_round`` = 0, ``base_round`` = 0) where an unimplemented "delta
  against an earlier round" once was: nothing produced deltas, so they left the contract; decoders
  refuse a broadcast that sets them.
* ``Task.model_round`` is the round whose ``ModelBroadcast`` the selected devices train from.
* ``Task.task_nonce`` is a random u64 the coordinator draws per (run, round); the ``Update``
  answering that task echoes it in ``Update.task_nonce``, binding the update to the run, round
  and task it answers (schema version 2 of both).
* ``Register.will_seq`` is the sequence number of the last-will ``Status(offline)`` the device
  gave the broker for this connection (0: none), so the coordinator can accept that one will even
  though its sequence number is below the connection's later messages (schema version 2).
* ``RunCompleted.server_round`` is the number of completed rounds (the run's last round); its
  ``tensors`` are the final global model (self-contained, as a ``ModelBroadcast`` without a base
  round), which no ``ModelBroadcast`` ever carries: the broadcast of round ``r`` holds the model after
  ``r - 1`` rounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from protocol.tensors import MaskChange, SparseTensor

IDENTIFIER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
"""1-64 characters of ``A-Z a-z 0-9 _ . -``, not starting with ``.`` or ``-``: safe in MQTT
topics (no ``/ + #``), ACL files and file names."""

COORDINATOR_ID = "coordinator"
"""Default sender id of messages the coordinator sends."""

DEVICE_STATES = ("online", "offline", "busy")


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and IDENTIFIER_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class Capabilities:
    """What a device can do. ``memory_mb`` is total RAM in MiB; ``library_versions`` maps a
    library name (e.g. ``numpy``) to its version string."""

    arch: str
    cores: int
    memory_mb: int
    library_versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Register:
    """Device -> coordinator on startup: who I am and what I can do."""

    MESSAGE_TYPE: ClassVar[int] = 1
    SCHEMA_VERSION: ClassVar[int] = 2
    device_id: str
    capabilities: Capabilities
    sample_count: int
    will_seq: int = 0  # seq of this connection's last-will Status(offline); 0 = none


@dataclass(frozen=True)
class Status:
    """Device -> coordinator heartbeat; also the retained last-will message (``offline``).

    ``wire_sent_bytes`` / ``wire_received_bytes``: every MQTT byte the device has written to / read
    from its broker connection since its agent started (all packets; cumulative). Schema 2 carries
    them; a Status with both 0 is encoded as schema 1 (what older coordinators read)."""

    MESSAGE_TYPE: ClassVar[int] = 2
    SCHEMA_VERSION: ClassVar[int] = 2
    SCHEMA_VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)
    device_id: str
    state: str
    detail: str = ""
    wire_sent_bytes: int = 0
    wire_received_bytes: int = 0

    @property
    def schema_version(self) -> int:
        """The schema this status is encoded with: 1 without wire counters, 2 with."""
        return 2 if self.wire_sent_bytes or self.wire_received_bytes else 1


@dataclass(frozen=True)
class Task:
    """Coordinator -> devices, once per round: to each selected device on its own inbox, ``selected``
    listing only that device (topic layout revision 3, see :mod:`protocol.topics`); a revision-2
    coordinator publishes one Task listing every selected id on the run's task topic.

    Only the devices in ``selected`` train. ``deadline_unix`` is the Unix time (seconds) by
    which the update must arrive. ``readjust`` asks for a mask readjustment with fraction
    ``alpha`` this round. ``seed`` seeds the device's local shuffling / readjustment.
    """

    MESSAGE_TYPE: ClassVar[int] = 3
    SCHEMA_VERSION: ClassVar[int] = 2
    run_id: str
    server_round: int
    selected: tuple[str, ...]
    model_round: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    prox_mu: float
    readjust: bool
    alpha: float
    deadline_unix: float
    seed: int
    model_name: str
    task_nonce: int = 0  # u64 drawn by the coordinator per (run, round); the Update echoes it


@dataclass(frozen=True)
class ModelBroadcast:
    """Coordinator -> devices: the global sparse model (self-contained tensors, never a delta)."""

    MESSAGE_TYPE: ClassVar[int] = 4
    SCHEMA_VERSION: ClassVar[int] = 1
    run_id: str
    server_round: int
    tensors: dict[str, SparseTensor]


@dataclass(frozen=True)
class Update:
    """Device -> coordinator: trained weights on the device's mask, mask changes and statistics."""

    MESSAGE_TYPE: ClassVar[int] = 5
    SCHEMA_VERSION: ClassVar[int] = 2
    run_id: str
    server_round: int
    device_id: str
    tensors: dict[str, SparseTensor]
    mask_changes: dict[str, MaskChange]
    sample_count: int
    train_loss: float
    compute_s: float
    task_nonce: int = 0  # Task.task_nonce of the task this update answers


@dataclass(frozen=True)
class Ack:
    """Acknowledgement (by default coordinator -> device, e.g. of an update or a register)."""

    MESSAGE_TYPE: ClassVar[int] = 6
    SCHEMA_VERSION: ClassVar[int] = 1
    run_id: str
    server_round: int
    device_id: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Abort:
    """Coordinator -> devices: stop working on this run (from ``server_round`` on)."""

    MESSAGE_TYPE: ClassVar[int] = 7
    SCHEMA_VERSION: ClassVar[int] = 1
    run_id: str
    server_round: int
    reason: str


@dataclass(frozen=True)
class RunCompleted:
    """Coordinator -> devices that asked for it, once when a run completes: the final global model.

    ``server_round``: the completed rounds. ``accuracy``: the run's last reported accuracy (the mean
    over the evaluation's local test sets, in [0, 1]), None when the run was not evaluated.
    """

    MESSAGE_TYPE: ClassVar[int] = 8
    SCHEMA_VERSION: ClassVar[int] = 1
    run_id: str
    server_round: int
    tensors: dict[str, SparseTensor]
    accuracy: float | None = None


DEVICE_ERROR_CODES = ("bad_data", "out_of_memory", "model_unavailable", "training_failed", "upload_cap_reached",
                      "other")
"""Reason codes a device reports today (``DeviceError.code``); the wire carries the code as a string
identifier, so a newer device may send a code an older coordinator does not know (it counts it as
``other``)."""


@dataclass(frozen=True)
class DeviceError:
    """Device -> coordinator: this device could not do its task of ``run_id`` round ``server_round``.

    ``code`` is one of :data:`DEVICE_ERROR_CODES` (``bad_data``: the local data does not fit the
    model; ``out_of_memory``; ``model_unavailable``: the device cannot build the model or the
    broadcast does not fit it; ``training_failed``: an exception during training; ``upload_cap_reached``:
    the device's own upload cap (a metered link's daily cap) is used up, it declines the task; ``other``);
    ``detail`` is a short human text. Sent on the device's update topic of the run, instead of the
    update, so the coordinator need not wait for it."""

    MESSAGE_TYPE: ClassVar[int] = 9
    SCHEMA_VERSION: ClassVar[int] = 1
    run_id: str
    server_round: int
    device_id: str
    code: str
    detail: str = ""


Message = Register | Status | Task | ModelBroadcast | Update | Ack | Abort | RunCompleted | DeviceError
MESSAGE_CLASSES: dict[int, type] = {
    cls.MESSAGE_TYPE: cls
    for cls in (Register, Status, Task, ModelBroadcast, Update, Ack, Abort, RunCompleted, DeviceError)
}
RUNLESS_MESSAGE_TYPES = frozenset({Register.MESSAGE_TYPE, Status.MESSAGE_TYPE})
"""Types sent with an empty run id and round 0."""
