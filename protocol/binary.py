"""Bounds-checked little-endian reading and writing of primitive fields.

Every multi-byte integer and float on the wire is little-endian. Strings are UTF-8 preceded by
their length in bytes as an unsigned 16-bit integer. :class:`ByteReader` checks that every field
lies inside the bytes actually present before touching it and raises :class:`TruncatedError`
otherwise, so callers never index past the end of the input.
"""

from __future__ import annotations

import struct

from protocol.errors import InvalidMessageError, LimitExceededError, MalformedError, TruncatedError

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


def as_byte_view(data: object) -> memoryview:
    """A flat, read-only byte view of ``data`` (bytes, bytearray or any memoryview).

    Non-contiguous or multi-dimensional memoryviews are copied into bytes first; anything that
    is not bytes-like raises :class:`MalformedError`.
    """
    if isinstance(data, bytes | bytearray):
        return memoryview(data).toreadonly()
    if isinstance(data, memoryview):
        if data.c_contiguous:
            if data.ndim == 1 and data.format == "B":  # already flat bytes (a payload view): no cast
                return data if data.readonly else data.toreadonly()
            return data.cast("B").toreadonly()
        return memoryview(data.tobytes())
    raise MalformedError(f"expected bytes, got {type(data).__name__}")


class ByteReader:
    """A cursor over an immutable byte buffer; every read is bounds-checked."""

    def __init__(self, data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None):
        self.view = as_byte_view(data)
        self.position = start
        self.end = len(self.view) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.position

    def require(self, size: int, what: str) -> None:
        """Raise :class:`TruncatedError` unless ``size`` more bytes are present."""
        if size < 0 or size > self.end - self.position:
            raise TruncatedError(f"{what}: need {size} bytes, {self.remaining} present")

    def _unpack(self, layout: struct.Struct, what: str) -> object:
        """One field of ``layout`` (``u8`` and ``u32``, the most frequent fields, inline it)."""
        position = self.position
        if position + layout.size > self.end:
            self.require(layout.size, what)
        self.position = position + layout.size
        return layout.unpack_from(self.view, position)[0]

    def u8(self, what: str) -> int:
        position = self.position
        if position >= self.end:
            self.require(1, what)
        self.position = position + 1
        return self.view[position]

    def u16(self, what: str) -> int:
        return self._unpack(_U16, what)  # type: ignore[return-value]

    def u32(self, what: str) -> int:
        position = self.position
        if position + 4 > self.end:
            self.require(4, what)
        self.position = position + 4
        return _U32.unpack_from(self.view, position)[0]

    def u64(self, what: str) -> int:
        return self._unpack(_U64, what)  # type: ignore[return-value]

    def f32(self, what: str) -> float:
        return self._unpack(_F32, what)  # type: ignore[return-value]

    def f64(self, what: str) -> float:
        return self._unpack(_F64, what)  # type: ignore[return-value]

    def boolean(self, what: str) -> bool:
        value = self.u8(what)
        if value > 1:
            raise MalformedError(f"{what}: boolean byte must be 0 or 1, got {value}")
        return value == 1

    def take(self, size: int, what: str) -> memoryview:
        """Return the next ``size`` bytes as a zero-copy view and advance past them."""
        self.require(size, what)
        chunk = self.view[self.position : self.position + size]
        self.position += size
        return chunk

    def string(self, what: str, max_bytes: int) -> str:
        length = self.u16(what + " length")
        if length > max_bytes:
            raise LimitExceededError(f"{what}: {length} bytes exceeds limit {max_bytes}")
        raw = self.take(length, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as error:
            raise MalformedError(f"{what}: invalid UTF-8") from error

    def expect_end(self, what: str) -> None:
        if self.remaining != 0:
            raise MalformedError(f"{what}: {self.remaining} unexpected trailing bytes")


class ByteWriter:
    """Accumulates fields into a list of byte chunks (joined once at the end)."""

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(data if isinstance(data, bytes | memoryview) else bytes(data))
        self.size += len(data)

    def _pack(self, layout: struct.Struct, value: object, what: str) -> None:
        try:
            self.raw(layout.pack(value))
        except struct.error as error:
            raise InvalidMessageError(f"{what}: {value!r} does not fit the wire field") from error

    def u8(self, value: int, what: str = "u8") -> None:
        self._pack(_U8, value, what)

    def u16(self, value: int, what: str = "u16") -> None:
        self._pack(_U16, value, what)

    def u32(self, value: int, what: str = "u32") -> None:
        self._pack(_U32, value, what)

    def u64(self, value: int, what: str = "u64") -> None:
        self._pack(_U64, value, what)

    def f32(self, value: float, what: str = "f32") -> None:
        self._pack(_F32, value, what)

    def f64(self, value: float, what: str = "f64") -> None:
        self._pack(_F64, value, what)

    def boolean(self, value: bool) -> None:
        self.u8(1 if value else 0)

    def string(self, value: str, what: str, max_bytes: int) -> None:
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidMessageError(f"{what}: not encodable as UTF-8") from error
        if len(encoded) > max_bytes:
            raise InvalidMessageError(f"{what}: {len(encoded)} UTF-8 bytes exceeds limit {max_bytes}")
        self.u16(len(encoded), what)
        self.raw(encoded)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)
