"""Message payloads and the public ``encode_message`` / ``decode_message`` pair.

Every payload starts with ``u8 schema_version`` (Register, Task and Update: 2; the others: 1);
an unknown schema version raises :class:`UnsupportedVersionError`. Then, little-endian, with
``str`` meaning ``u16 byte length + UTF-8 bytes``:

* Register (1): ``str arch, u32 cores, u32 memory_mb, u32 library_count,
  library_count x (str name, str version)`` (strictly increasing names), ``u64 sample_count,
  u64 will_seq``.
* Status (2): ``u8 state`` (0 online, 1 offline, 2 busy), ``str detail``; schema 2 adds
  ``u64 wire_sent_bytes, u64 wire_received_bytes`` (a Status whose counters are both 0 is
  written as schema 1; both schemas are read).
* Task (3): ``u32 selected_count, selected_count x str device_id, u32 model_round,
  u32 local_epochs, u32 batch_size, f64 lr, f64 momentum, f64 weight_decay, f64 prox_mu,
  u8 readjust, f64 alpha, f64 deadline_unix, u64 seed, str model_name, u64 task_nonce``.
* ModelBroadcast (4): ``u8 has_base_round, u32 base_round`` (reserved, both 0), tensor set.
* Update (5): ``u64 sample_count, f64 train_loss, f64 compute_s, u64 task_nonce``, tensor set,
  mask changes.
* Ack (6): ``str device_id, u8 ok, str detail``.
* Abort (7): ``str reason``.
* RunCompleted (8): ``u8 has_accuracy, f64 accuracy`` (0.0 when absent; else in [0, 1]), tensor set.
* DeviceError (9): ``str code`` (an identifier, e.g. ``bad_data``), ``str detail``.

``run_id``, ``server_round`` and (for Register, Status, Update, DeviceError) ``device_id`` come from the
envelope. The payload must be consumed exactly (trailing bytes are an error).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from protocol.auth import AUTH_ED25519, AUTH_HMAC_SHA256, TAG_BYTES, Signer
from protocol.binary import ByteReader, ByteWriter
from protocol.envelope import Envelope, KeySource, decode_envelope, encode_envelope
from protocol.errors import InvalidMessageError, LimitExceededError, MalformedError, UnsupportedVersionError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    COORDINATOR_ID,
    DEVICE_STATES,
    MESSAGE_CLASSES,
    RUNLESS_MESSAGE_TYPES,
    Abort,
    Ack,
    Capabilities,
    DeviceError,
    Message,
    ModelBroadcast,
    Register,
    RunCompleted,
    Status,
    Task,
    Update,
    is_identifier,
)
from protocol.tensors import read_mask_changes, read_tensor_set, write_mask_changes, write_tensor_set

MAX_STRING_BYTES = 65535


def _write_payload(writer: ByteWriter, msg: Message, value_format: str, compression: str) -> None:
    writer.u8(msg.schema_version if isinstance(msg, Status) else msg.SCHEMA_VERSION)
    if isinstance(msg, Register):
        caps = msg.capabilities
        writer.string(caps.arch, "arch", MAX_STRING_BYTES)
        writer.u32(caps.cores, "cores")
        writer.u32(caps.memory_mb, "memory_mb")
        writer.u32(len(caps.library_versions), "library count")
        for name in sorted(caps.library_versions):
            writer.string(name, "library name", MAX_STRING_BYTES)
            writer.string(caps.library_versions[name], "library version", MAX_STRING_BYTES)
        writer.u64(msg.sample_count, "sample_count")
        writer.u64(msg.will_seq, "will_seq")
    elif isinstance(msg, Status):
        if msg.state not in DEVICE_STATES:
            raise InvalidMessageError(f"Status.state must be one of {DEVICE_STATES}, got {msg.state!r}")
        writer.u8(DEVICE_STATES.index(msg.state))
        writer.string(msg.detail, "detail", MAX_STRING_BYTES)
        if msg.schema_version == 2:
            writer.u64(msg.wire_sent_bytes, "wire_sent_bytes")
            writer.u64(msg.wire_received_bytes, "wire_received_bytes")
    elif isinstance(msg, Task):
        writer.u32(len(msg.selected), "selected count")
        for device_id in msg.selected:
            if not is_identifier(device_id):
                raise InvalidMessageError(f"selected device id {device_id!r} is not a valid identifier")
            writer.string(device_id, "device id", MAX_STRING_BYTES)
        writer.u32(msg.model_round, "model_round")
        writer.u32(msg.local_epochs, "local_epochs")
        writer.u32(msg.batch_size, "batch_size")
        for name in ("lr", "momentum", "weight_decay", "prox_mu"):
            writer.f64(getattr(msg, name), name)
        writer.boolean(msg.readjust)
        writer.f64(msg.alpha, "alpha")
        writer.f64(msg.deadline_unix, "deadline_unix")
        writer.u64(msg.seed, "seed")
        writer.string(msg.model_name, "model_name", MAX_STRING_BYTES)
        writer.u64(msg.task_nonce, "task_nonce")
    elif isinstance(msg, ModelBroadcast):
        writer.boolean(False)  # reserved (has_base_round): deltas are not part of the protocol
        writer.u32(0, "base_round")  # reserved
        write_tensor_set(writer, msg.tensors, value_format, compression)
    elif isinstance(msg, Update):
        writer.u64(msg.sample_count, "sample_count")
        writer.f64(msg.train_loss, "train_loss")
        writer.f64(msg.compute_s, "compute_s")
        writer.u64(msg.task_nonce, "task_nonce")
        write_tensor_set(writer, msg.tensors, value_format, compression)
        shapes = {name: tensor.shape for name, tensor in msg.tensors.items()}
        write_mask_changes(writer, msg.mask_changes, shapes)
    elif isinstance(msg, Ack):
        if not is_identifier(msg.device_id):
            raise InvalidMessageError(f"Ack.device_id {msg.device_id!r} is not a valid identifier")
        writer.string(msg.device_id, "device_id", MAX_STRING_BYTES)
        writer.boolean(msg.ok)
        writer.string(msg.detail, "detail", MAX_STRING_BYTES)
    elif isinstance(msg, Abort):
        writer.string(msg.reason, "reason", MAX_STRING_BYTES)
    elif isinstance(msg, RunCompleted):
        accuracy = msg.accuracy
        if accuracy is not None and not 0.0 <= accuracy <= 1.0:  # also refuses NaN
            raise InvalidMessageError(f"RunCompleted.accuracy must be in [0, 1] or None, got {accuracy!r}")
        writer.boolean(accuracy is not None)
        writer.f64(0.0 if accuracy is None else accuracy, "accuracy")
        write_tensor_set(writer, msg.tensors, value_format, compression)
    elif isinstance(msg, DeviceError):
        if not is_identifier(msg.code):
            raise InvalidMessageError(f"DeviceError.code {msg.code!r} is not a valid identifier (e.g. bad_data)")
        writer.string(msg.code, "code", MAX_STRING_BYTES)
        writer.string(msg.detail, "detail", MAX_STRING_BYTES)
    else:
        raise InvalidMessageError(f"not a protocol message: {type(msg).__name__}")


def _envelope_fields(msg: Message, sender_id: str | None) -> tuple[str, int, str]:
    """Return ``(run_id, server_round, sender_id)`` for the envelope of ``msg``."""
    if isinstance(msg, Register | Status):
        run_id, server_round = "", 0
    else:
        run_id, server_round = msg.run_id, msg.server_round
        if not is_identifier(run_id):
            raise InvalidMessageError(f"run_id {run_id!r} is not a valid identifier")
    if isinstance(msg, Register | Status | Update | DeviceError):
        if sender_id is not None and sender_id != msg.device_id:
            raise InvalidMessageError("sender_id must equal device_id for device messages")
        sender_id = msg.device_id
    return run_id, server_round, COORDINATOR_ID if sender_id is None else sender_id


def encode_message(msg: Message, key: bytes | Signer | None = None, *, sender_id: str | None = None, seq: int = 0,
                   timestamp: float | None = None, value_format: str = "float32",
                   compression: str = "auto") -> bytes:
    """Encode ``msg`` in an envelope; ``len()`` of the result is the exact wire size.

    ``key``: a device's HMAC key (bytes, at least 16), any :class:`~protocol.auth.Signer` (the
    coordinator's :class:`~protocol.ed25519.Ed25519Signer`), or None for no tag.
    ``sender_id``: defaults to ``msg.device_id`` for Register/Status/Update/DeviceError (where it must match)
    and to ``"coordinator"`` otherwise. ``seq``: per-sender sequence number (u64).
    ``timestamp``: Unix seconds, default now; stored in milliseconds.
    ``value_format`` / ``compression``: how tensor values are stored (see ``encode_tensor_set``).
    Raises :class:`InvalidMessageError` if the message cannot be represented.
    """
    if type(msg) not in MESSAGE_CLASSES.values():
        raise InvalidMessageError(f"not a protocol message: {type(msg).__name__}")
    run_id, server_round, sender = _envelope_fields(msg, sender_id)
    writer = ByteWriter()
    _write_payload(writer, msg, value_format, compression)
    timestamp_ms = round((time.time() if timestamp is None else timestamp) * 1000)
    return encode_envelope(msg.MESSAGE_TYPE, run_id, server_round, sender, seq, timestamp_ms,
                           writer.getvalue(), key)


class _SizingSigner:
    """Stands in for a real key when only the size matters: a tag of the right length, all zeros."""

    def __init__(self, algorithm: int) -> None:
        self.algorithm = algorithm
        self.tag_bytes = TAG_BYTES[algorithm]

    def sign(self, data: bytes) -> bytes:
        return bytes(self.tag_bytes)


def encoded_size(msg: Message, *, authenticated: bool = True, sender_id: str | None = None,
                 value_format: str = "float32", compression: str = "auto") -> int:
    """Exact wire size of ``encode_message(msg, key, sender_id=..., ...)`` (unchunked).

    ``authenticated`` counts the tag a deployment sends: the 64-byte Ed25519 signature for the
    coordinator's messages (Task, ModelBroadcast, Ack, Abort), the 32-byte HMAC tag for a device's
    (Register, Status, Update). It encodes the message (the size depends on the data through
    position coding and compression), so it costs one ``encode_message``.
    """
    key = None
    if authenticated:
        from_device = isinstance(msg, Register | Status | Update)
        key = _SizingSigner(AUTH_HMAC_SHA256 if from_device else AUTH_ED25519)
    return len(encode_message(msg, key, sender_id=sender_id, timestamp=0, value_format=value_format,
                              compression=compression))


def _read_payload(envelope: Envelope, limits: Limits) -> Message:
    reader = ByteReader(envelope.payload)
    message_type = envelope.message_type
    cls = MESSAGE_CLASSES[message_type]
    schema = reader.u8("schema version")
    if schema not in getattr(cls, "SCHEMA_VERSIONS", (cls.SCHEMA_VERSION,)):  # type: ignore[attr-defined]
        raise UnsupportedVersionError(f"{cls.__name__} schema version {schema} is not supported")
    if message_type in RUNLESS_MESSAGE_TYPES and (envelope.run_id or envelope.server_round):
        raise MalformedError(f"{cls.__name__} must have an empty run id and round 0")
    if message_type not in RUNLESS_MESSAGE_TYPES and not envelope.run_id:
        raise MalformedError(f"{cls.__name__} requires a run id")
    run_id, server_round, sender = envelope.run_id, envelope.server_round, envelope.sender_id
    text = limits.max_string_bytes
    msg: Message
    if cls is Register:
        arch = reader.string("arch", text)
        cores = reader.u32("cores")
        memory_mb = reader.u32("memory_mb")
        library_count = reader.u32("library count")
        if library_count > limits.max_list_items:
            raise LimitExceededError(f"{library_count} libraries exceed the limit")
        libraries: dict[str, str] = {}
        previous: str | None = None
        for _ in range(library_count):
            name = reader.string("library name", text)
            if name in libraries:
                raise MalformedError(f"duplicate library {name!r}")
            if previous is not None and name < previous:  # code point order = UTF-8 byte order
                raise MalformedError(f"library names must be sorted: {name!r} comes after {previous!r}")
            previous = name
            libraries[name] = reader.string("library version", text)
        sample_count = reader.u64("sample_count")
        msg = Register(sender, Capabilities(arch, cores, memory_mb, libraries), sample_count,
                       reader.u64("will_seq"))
    elif cls is Status:
        state = reader.u8("state")
        if state >= len(DEVICE_STATES):
            raise MalformedError(f"unknown device state {state}")
        detail = reader.string("detail", text)
        sent, received = (reader.u64("wire_sent_bytes"), reader.u64("wire_received_bytes")) if schema == 2 else (0, 0)
        if schema == 2 and not (sent or received):
            raise MalformedError("Status schema 2 with both wire counters 0 must be encoded as schema 1")
        msg = Status(sender, DEVICE_STATES[state], detail, sent, received)
    elif cls is Task:
        selected_count = reader.u32("selected count")
        if selected_count > limits.max_list_items:
            raise LimitExceededError(f"{selected_count} selected devices exceed the limit")
        selected = tuple(reader.string("device id", text) for _ in range(selected_count))
        if not all(is_identifier(device_id) for device_id in selected):
            raise MalformedError("a selected device id is not a valid identifier")
        model_round, local_epochs, batch_size = (reader.u32(n) for n in ("model_round", "epochs", "batch"))
        lr, momentum, weight_decay, prox_mu = (reader.f64(n) for n in ("lr", "momentum", "wd", "mu"))
        readjust = reader.boolean("readjust")
        alpha, deadline = reader.f64("alpha"), reader.f64("deadline_unix")
        seed = reader.u64("seed")
        model_name = reader.string("model_name", text)
        msg = Task(run_id, server_round, selected, model_round, local_epochs, batch_size, lr, momentum,
                   weight_decay, prox_mu, readjust, alpha, deadline, seed, model_name, reader.u64("task_nonce"))
    elif cls is ModelBroadcast:
        has_base, base_round = reader.boolean("has_base_round"), reader.u32("base_round")
        if has_base or base_round:
            raise MalformedError(f"ModelBroadcast: has_base_round={int(has_base)}, base_round={base_round}: "
                                 "delta broadcasts are not part of the protocol (both reserved bytes must be 0)")
        tensors, _ = read_tensor_set(reader, limits, limits.max_elements)
        msg = ModelBroadcast(run_id, server_round, tensors)
    elif cls is Update:
        sample_count = reader.u64("sample_count")
        train_loss, compute_s = reader.f64("train_loss"), reader.f64("compute_s")
        task_nonce = reader.u64("task_nonce")
        tensors, budget = read_tensor_set(reader, limits, limits.max_elements)
        changes, shapes, _ = read_mask_changes(reader, limits, budget)
        for name, shape in shapes.items():
            if name not in tensors or tensors[name].shape != shape:
                raise MalformedError(f"mask change {name!r} does not match a tensor of the update")
        msg = Update(run_id, server_round, sender, tensors, changes, sample_count, train_loss, compute_s,
                     task_nonce)
    elif cls is Ack:
        device_id = reader.string("device_id", text)
        if not is_identifier(device_id):
            raise MalformedError("Ack.device_id is not a valid identifier")
        ok = reader.boolean("ok")
        msg = Ack(run_id, server_round, device_id, ok, reader.string("detail", text))
    elif cls is RunCompleted:
        has_accuracy = reader.boolean("has_accuracy")
        accuracy = reader.f64("accuracy")
        if not (0.0 <= accuracy <= 1.0) or (not has_accuracy and accuracy != 0.0):
            raise MalformedError(f"RunCompleted accuracy {accuracy!r} is not in [0, 1] (0 when absent)")
        tensors, _ = read_tensor_set(reader, limits, limits.max_elements)
        msg = RunCompleted(run_id, server_round, tensors, accuracy if has_accuracy else None)
    elif cls is DeviceError:
        code = reader.string("code", text)
        if not is_identifier(code):
            raise MalformedError("DeviceError.code is not a valid identifier")
        msg = DeviceError(run_id, server_round, sender, code, reader.string("detail", text))
    else:
        msg = Abort(run_id, server_round, reader.string("reason", text))
    reader.expect_end(cls.__name__ + " payload")
    return msg


@dataclass(frozen=True)
class DecodedMessage:
    """A message together with the envelope it came in (sender, seq, timestamp, auth...)."""

    envelope: Envelope
    message: Message


def decode_message_with_envelope(data: bytes | bytearray | memoryview, key: KeySource = None, *,
                                 max_size: int | None = None, limits: Limits | None = None
                                 ) -> DecodedMessage:
    """Like :func:`decode_message` but also returns the envelope header."""
    limits = limits or DEFAULT_LIMITS
    if max_size is not None:
        limits = Limits(**{**limits.__dict__, "max_message_bytes": max_size})
    envelope = decode_envelope(data, key, limits=limits)
    return DecodedMessage(envelope, _read_payload(envelope, limits))


def decode_message(data: bytes | bytearray | memoryview, key: KeySource = None, *,
                   max_size: int | None = None, limits: Limits | None = None) -> Message:
    """Decode one message produced by :func:`encode_message`.

    ``key``: None (no verification), one key (HMAC bytes or a :class:`~protocol.auth.Verifier` such as
    :class:`~protocol.ed25519.Ed25519Verifier`), a mapping sender id -> key, or a callable
    sender id -> key or None. With a key, unauthenticated or wrongly tagged messages raise
    :class:`AuthenticationError`. ``max_size`` overrides ``limits.max_message_bytes``.
    Raises only :class:`ProtocolError` subclasses for any bad input.
    """
    return decode_message_with_envelope(data, key, max_size=max_size, limits=limits).message
