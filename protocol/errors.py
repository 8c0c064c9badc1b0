"""The one exception family of the wire protocol.

Contract: every decoder in :mod:`protocol` (``decode_message``, ``decode_envelope``,
``decode_tensor_set``, ``decode_mask_changes``, ``ChunkReassembler.add``, ...) raises a subclass
of :class:`ProtocolError` for any malformed, truncated, forged, oversized or unsupported input,
and never any other exception type.

Encoders raise :class:`InvalidMessageError` (also a ``ValueError``) when asked to encode
something the protocol cannot represent (bad identifier, too many elements, NaN in int8 mode...).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by the wire protocol."""


class TruncatedError(ProtocolError):
    """The input ends before a field that its own headers say is present."""


class ChecksumError(ProtocolError):
    """The CRC-32 of the message does not match its content (corruption in transit)."""


class AuthenticationError(ProtocolError):
    """The authentication tag is missing, wrong, or the sender is not who the payload claims."""


class UnsupportedVersionError(ProtocolError):
    """The protocol version, a payload schema version or an algorithm id is not supported."""


class LimitExceededError(ProtocolError):
    """A size or count exceeds a configured :class:`protocol.Limits` value."""


class MalformedError(ProtocolError):
    """The bytes are present but do not form a valid encoding (bad magic, bad enum, bad UTF-8,
    non-canonical padding, inconsistent counts, trailing bytes...)."""


class MaskMismatchError(MalformedError):
    """A mask change drops a position that is not set, or grows one that is already set."""


class InvalidMessageError(ProtocolError, ValueError):
    """Raised by encoders: the message cannot be represented on the wire."""
