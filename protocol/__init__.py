"""FedDST Edge wire protocol: the contract between the coordinator and the edge agents.

Depends only on numpy and zstandard (Ed25519, in ``protocol.ed25519``, imports ``cryptography`` when
an Ed25519 key is built); imports nothing from the rest of the project. The
byte-level specification is ``docs/protocol.md``; test vectors are in ``tests/protocol/vectors``.

Entry points::

    data = encode_message(msg, key=device_key, seq=n)          # bytes, len() = wire size (HMAC)
    data = encode_message(task, Ed25519Signer(private_key), seq=n)  # the coordinator's signature
    msg = decode_message(data, key=Ed25519Verifier(public_key_hex))  # what a device checks
    msg = decode_message(data, key=lookup_key_by_sender_id)      # raises only ProtocolError
    packets = split_into_chunks(data, max_packet=128 * 1024)
    whole = ChunkReassembler(timeout_s=60).add(packet)           # bytes once complete, else None
"""

from protocol import topics
from protocol.auth import HmacKey, Signer, Verifier
from protocol.chunking import DEFAULT_MAX_PACKET, ChunkReassembler, is_chunk, split_into_chunks
from protocol.codec import (
    DecodedMessage,
    decode_message,
    decode_message_with_envelope,
    encode_message,
    encoded_size,
)
from protocol.envelope import PROTOCOL_VERSION, Envelope, KeySource, decode_envelope
from protocol.errors import (
    AuthenticationError,
    ChecksumError,
    InvalidMessageError,
    LimitExceededError,
    MalformedError,
    MaskMismatchError,
    ProtocolError,
    TruncatedError,
    UnsupportedVersionError,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    COORDINATOR_ID,
    DEVICE_ERROR_CODES,
    IDENTIFIER_PATTERN,
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
from protocol.tensors import (
    MaskChange,
    SparseTensor,
    apply_mask_changes,
    decode_mask_changes,
    decode_tensor_set,
    encode_mask_changes,
    encode_tensor_set,
)
from protocol.values import VALUE_FORMATS, error_bound

__all__ = [
    "COORDINATOR_ID", "DEFAULT_LIMITS", "DEVICE_ERROR_CODES", "DeviceError", "DEFAULT_MAX_PACKET",
    "IDENTIFIER_PATTERN", "PROTOCOL_VERSION",
    "VALUE_FORMATS", "Abort", "Ack", "AuthenticationError", "Capabilities", "ChecksumError",
    "ChunkReassembler", "DecodedMessage", "Envelope", "HmacKey", "InvalidMessageError", "KeySource",
    "LimitExceededError", "Limits", "MalformedError", "MaskChange", "MaskMismatchError", "Message",
    "ModelBroadcast", "ProtocolError", "Register", "RunCompleted", "Signer", "SparseTensor", "Status", "Task",
    "TruncatedError",
    "UnsupportedVersionError", "Update", "Verifier", "apply_mask_changes", "decode_envelope", "decode_mask_changes",
    "decode_message", "decode_message_with_envelope", "decode_tensor_set", "encode_mask_changes",
    "encode_message", "encode_tensor_set", "encoded_size", "error_bound", "is_chunk", "is_identifier",
    "split_into_chunks", "topics",
]
