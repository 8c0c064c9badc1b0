"""Value formats (how each active value is stored) and value codecs (optional compression).

Value formats, one byte on the wire:

=====  ============  =====  ==============================================================
code   name          bytes  encoding of each value (little-endian)
=====  ============  =====  ==============================================================
0      ``float32``   4      IEEE-754 binary32; lossless
1      ``float16``   2      IEEE-754 binary16, round to nearest even; finite values must be
                            within +-65504
2      ``bfloat16``  2      upper 16 bits of the binary32, round to nearest even; finite
                            values that would round to infinity saturate to +-0x7F7F
3      ``int8``      1      signed ``q`` with ``value = q * scale``; ``scale`` is a binary32
                            written before the values; ``scale = max|v| / 127``,
                            ``q = clip(rint(v / scale), -127, 127)``; finite values only
=====  ============  =====  ==============================================================

Value codecs, one byte on the wire:

* ``0`` raw: ``count * width`` bytes.
* ``1`` zstd: ``u32 compressed_length`` then one Zstandard frame (content size present in the
  frame header) whose content is the *byte-shuffled* values: all first bytes of every value,
  then all second bytes, and so on (``width`` planes of ``count`` bytes). Shuffling groups the
  low-entropy sign/exponent bytes of floats, which is where zstd finds its gain. The decoder's unshuffle is
  :func:`protocol.value_kernels.unshuffle` (compiled when built, numpy otherwise).

:func:`error_bound` returns, for a value format, an upper bound on ``|decoded - original|``
over the finite values; it is 0 for ``float32``.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from protocol.binary import ByteReader, ByteWriter
from protocol.errors import InvalidMessageError, MalformedError
from protocol.value_kernels import unshuffle

VALUE_FORMATS: dict[str, int] = {"float32": 0, "float16": 1, "bfloat16": 2, "int8": 3}
VALUE_FORMAT_NAMES: dict[int, str] = {code: name for name, code in VALUE_FORMATS.items()}
VALUE_WIDTH: dict[int, int] = {0: 4, 1: 2, 2: 2, 3: 1}
COMPRESSIONS = ("none", "zstd", "auto")

CODEC_RAW = 0
CODEC_ZSTD = 1
ZSTD_LEVEL = 1
AUTO_MIN_BYTES = 1024
"""``compression="auto"`` only tries zstd on value blocks of at least this many bytes ..."""
AUTO_MIN_SAVING = 1 / 32
"""... and keeps the zstd frame only if it is smaller by at least this fraction."""

FLOAT16_MAX = 65504.0
BFLOAT16_MAX_BITS = 0x7F7F
"""Largest finite bfloat16 (3.3895314e38): finite inputs that round beyond it are stored as +-this."""
BFLOAT16_HALF_SUBNORMAL_STEP = 2.0**-134
"""Half the spacing of bfloat16 values below 2**-126 (7 fraction bits at the binary32 minimum exponent)."""
INT8_UNDERFLOW_SLACK = 2.0**-142
"""Covers a binary32 scale that is subnormal or underflows to 0 (``max|v| < 127 * 2**-126``): the scale
itself then loses absolute precision 2**-150, which the 127-step grid multiplies (``128 * 2**-149``)."""


def value_format_code(value_format: str) -> int:
    try:
        return VALUE_FORMATS[value_format]
    except KeyError:
        raise InvalidMessageError(
            f"unknown value_format {value_format!r}; expected one of {sorted(VALUE_FORMATS)}"
        ) from None


def _finite_max_abs(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.max(np.abs(finite))) if finite.size else 0.0


def int8_scale(values: np.ndarray) -> np.float32:
    """The per-tensor int8 scale: ``max|v| / 127`` as binary32 (0 for an all-zero tensor)."""
    return np.float32(_finite_max_abs(values) / 127.0)


def error_bound(values: np.ndarray, value_format: str) -> float:
    """Upper bound on ``|decode(encode(v)) - v|`` for the finite values ``v`` in this format."""
    code = value_format_code(value_format)
    values = np.asarray(values, dtype=np.float32)
    peak = _finite_max_abs(values)
    if code == 0:
        return 0.0
    if code == 1:  # half an ulp of binary16 (11 significant bits), subnormal step 2**-24
        return max(peak * 2.0**-11, 2.0**-25)
    if code == 2:  # half an ulp of bfloat16 (8 significant bits; fixed step 2**-133 below 2**-126)
        return max(peak * 2.0**-8, BFLOAT16_HALF_SUBNORMAL_STEP)  # saturation at +-0x7F7F is within it
    scale = float(int8_scale(values))
    # rounding to the grid + binary32 rounding of v / scale and q * scale + a subnormal or zero scale
    return scale / 2 + peak * 2.0**-22 + INT8_UNDERFLOW_SLACK


def _to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    overflow = ((rounded & np.uint16(0x7FFF)) == np.uint16(0x7F80)) & np.isfinite(values)
    if overflow.any():  # finite |v| >= 3.3961775e38 rounds to inf: saturate to the largest finite bfloat16
        rounded[overflow] = (rounded[overflow] & np.uint16(0x8000)) | np.uint16(BFLOAT16_MAX_BITS)
    return rounded


def quantize(values: np.ndarray, code: int) -> tuple[np.ndarray, np.float32 | None]:
    """Return ``(stored little-endian array, int8 scale or None)`` for float32 ``values``."""
    if code == 0:
        return values.astype("<f4", copy=False), None
    if code == 1:
        finite = np.isfinite(values)
        if np.any(np.abs(values[finite]) > FLOAT16_MAX):
            raise InvalidMessageError("float16: a finite value exceeds +-65504; use bfloat16 or int8")
        return values.astype("<f2"), None
    if code == 2:
        return _to_bfloat16_bits(values).astype("<u2", copy=False), None
    if not np.all(np.isfinite(values)):
        raise InvalidMessageError("int8: values must all be finite")
    scale = int8_scale(values)
    if scale == 0:
        return np.zeros(values.size, dtype=np.int8), scale
    stored = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return stored, scale


def dequantize(stored: np.ndarray, code: int, scale: float | None) -> np.ndarray:
    """Inverse of :func:`quantize`: a new writable float32 array."""
    if code == 0:
        return stored.astype(np.float32)
    if code == 1:
        return stored.astype(np.float32)
    if code == 2:
        return (stored.astype(np.uint32) << 16).view(np.float32)
    assert scale is not None
    with np.errstate(over="ignore"):  # a hostile scale may overflow to inf: defined, not an error
        return stored.astype(np.float32) * np.float32(scale)


def encode_value_block(writer: ByteWriter, values: np.ndarray, code: int, compression: str) -> None:
    """Write ``u8 codec`` then the values (scale first for int8) in the chosen codec."""
    stored, scale = quantize(values, code)
    raw = stored.view(np.uint8)
    codec = CODEC_RAW
    frame = b""
    if compression == "zstd" or (compression == "auto" and raw.size >= AUTO_MIN_BYTES):
        width = VALUE_WIDTH[code]
        shuffled = raw.reshape(-1, width).T.copy() if width > 1 else raw
        frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(shuffled.data)
        if compression == "zstd" or len(frame) <= raw.size * (1 - AUTO_MIN_SAVING):
            codec = CODEC_ZSTD
    writer.u8(codec, "value codec")
    if scale is not None:
        writer.f32(float(scale), "int8 scale")
    if codec == CODEC_ZSTD:
        writer.u32(len(frame), "compressed length")
        writer.raw(frame)
    else:
        writer.raw(raw.data)


def decode_value_block(reader: ByteReader, code: int, count: int) -> np.ndarray:
    """Read what :func:`encode_value_block` wrote for ``count`` values; return float32 values."""
    codec = reader.u8("value codec")
    scale: float | None = None
    if code == 3:
        scale = reader.f32("int8 scale")
        if not (np.isfinite(scale) and scale >= 0):
            raise MalformedError("int8 scale must be finite and >= 0")
    width = VALUE_WIDTH[code]
    size = count * width
    dtype = {0: "<f4", 1: "<f2", 2: "<u2", 3: "i1"}[code]
    if codec == CODEC_RAW:
        stored = np.frombuffer(reader.take(size, "values"), dtype=dtype)
    elif codec == CODEC_ZSTD:
        frame = reader.take(reader.u32("compressed length"), "zstd frame")
        stored = unshuffle(np.frombuffer(_decompress_exact(frame, size), dtype=np.uint8), width).view(dtype)
        if code == 0:  # unshuffle made a new writable float32 array: no second copy
            return stored.astype(np.float32, copy=False)
    else:
        raise MalformedError(f"unknown value codec {codec}")
    return dequantize(stored, code, scale)


_DECOMPRESSORS = threading.local()
"""One reusable ``ZstdDecompressor`` per thread (an instance is not safe to share between threads; making one
per block cost 12 us, a quarter of decompressing a 160 KB block)."""


def _decompress_exact(frame: memoryview, size: int) -> bytes:
    """Decompress one zstd frame whose declared content size must equal ``size``; the frame must fill
    ``frame`` exactly (no bytes after it).

    The declared size is checked before decompressing, so memory use is bounded by ``size``,
    which the caller has already checked against the bytes/elements limits. A valid frame takes one
    one-shot decompression into a buffer of the declared size; a frame that fails it is decoded again
    by :func:`_diagnose_frame` for the reason.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as error:
        raise MalformedError("zstd: invalid frame header") from error
    if declared != size:
        raise MalformedError(f"zstd: frame declares {declared} bytes, expected {size}")
    decompressor = getattr(_DECOMPRESSORS, "zstd", None)
    if decompressor is None:
        decompressor = _DECOMPRESSORS.zstd = zstandard.ZstdDecompressor()
    try:
        content = decompressor.decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError:
        content = _diagnose_frame(frame)
    if len(content) != size:
        raise MalformedError("zstd: decompressed size differs from the declared size")
    return content


def _diagnose_frame(frame: memoryview) -> bytes:
    """Decompress ``frame`` step by step and raise :class:`MalformedError` saying what is wrong with it
    (an invalid, incomplete or over-long frame); returns the content if nothing is."""
    try:
        reader = zstandard.ZstdDecompressor().decompressobj()
        content = reader.decompress(frame)
    except zstandard.ZstdError as error:
        raise MalformedError(f"zstd: {error}") from error
    if not reader.eof:
        raise MalformedError("zstd: the frame is incomplete")
    if reader.unused_data:
        raise MalformedError(f"zstd: {len(reader.unused_data)} bytes after the frame (one frame exactly fills C)")
    return content
