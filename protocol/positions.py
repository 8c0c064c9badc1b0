"""Encoding of a sorted set of flat positions inside a tensor of ``n`` elements.

A *position block* is::

    u8  kind         0 = NONE, 1 = ALL, 2 = BITMAP, 3 = RICE
    u32 count        number of positions (for NONE: number of values that follow)
    ... kind-specific data

* ``NONE`` (tensors only): no positions at all; the values are either all ``n`` elements
  (dense tensor, ``count == n``) or the values on a mask the receiver already knows.
* ``ALL``: every position ``0 .. n-1`` is set; ``count == n``; no data.
* ``BITMAP``: ``ceil(n / 8)`` bytes; bit ``i`` (element ``i`` of the C-order flattening) is the
  bit of weight ``2**(7 - i % 8)`` of byte ``i // 8`` (MSB-first, as ``numpy.packbits``); the
  padding bits of the last byte are zero; the number of set bits equals ``count``.
* ``RICE``: Golomb-Rice coded gaps. With positions ``p_0 < p_1 < ...`` the gaps are
  ``g_0 = p_0`` and ``g_j = p_j - p_{j-1} - 1``. Each gap is split into ``q = g >> k`` and
  ``r = g & (2**k - 1)``. Data::

      u8  k                  0 <= k <= 30
      u32 unary_bytes        length of the unary stream in bytes
      unary stream           for each gap: q zero bits then one 1 bit; MSB-first; zero padded
      remainder stream       ceil(count * k / 8) bytes: each r as k bits, MSB-first, concatenated,
                             zero padded

  The unary stream holds exactly ``count`` one bits, and ``unary_bytes`` is exactly the number of
  bytes needed (no extra zero bytes). Splitting unary and remainder bits into two streams keeps
  the decoder fully vectorized: the one bits of the unary stream are the gap terminators.

Encoders choose, per block, whichever of ALL/BITMAP/RICE is smallest (ties go to ALL, then
BITMAP), which is within a fraction of a bit per position of ``log2(C(n, count))`` for random
masks.
"""

from __future__ import annotations

import math

import numpy as np

from protocol.binary import ByteReader, ByteWriter
from protocol.errors import LimitExceededError, MalformedError

KIND_NONE = 0
KIND_ALL = 1
KIND_BITMAP = 2
KIND_RICE = 3
MAX_RICE_K = 30
BLOCK_HEADER_BYTES = 5  # u8 kind + u32 count


def bitmap_size(n: int) -> int:
    """Bytes of BITMAP data for a tensor of ``n`` elements."""
    return (n + 7) // 8


def _rice_gaps(positions: np.ndarray) -> np.ndarray:
    gaps = np.empty(positions.size, dtype=np.int64)
    if positions.size:
        gaps[0] = positions[0]
        np.subtract(positions[1:], positions[:-1], out=gaps[1:])
        gaps[1:] -= 1
    return gaps


def _rice_size_for_k(gaps: np.ndarray, k: int) -> int:
    unary_bits = int(np.sum(gaps >> k)) + gaps.size
    return 5 + (unary_bits + 7) // 8 + (gaps.size * k + 7) // 8


def choose_rice_parameter(gaps: np.ndarray, n: int) -> tuple[int, int]:
    """Return ``(k, data_bytes)`` minimizing the RICE data size for these gaps.

    Candidates are the few ``k`` around the optimum for a geometric distribution of the same
    mean; each candidate's size is computed exactly.
    """
    count = gaps.size
    if count == 0:
        return 0, 5
    mean_gap = max((n - count) / count, 1e-9)
    centre = max(0, int(math.floor(math.log2(mean_gap * math.log(2) + 1e-12))) if mean_gap >= 1 else 0)
    best_k, best_size = 0, -1
    for k in range(max(0, centre - 1), min(MAX_RICE_K, centre + 2) + 1):
        size = _rice_size_for_k(gaps, k)
        if best_size < 0 or size < best_size:
            best_k, best_size = k, size
    return best_k, best_size


def _encode_rice(writer: ByteWriter, gaps: np.ndarray, k: int) -> None:
    quotients = gaps >> k
    unary_bits = int(quotients.sum()) + gaps.size
    unary = np.zeros(unary_bits, dtype=np.uint8)
    if gaps.size:
        unary[np.cumsum(quotients + 1) - 1] = 1
    unary_bytes = np.packbits(unary)
    writer.u8(k, "rice k")
    writer.u32(unary_bytes.size, "rice unary length")
    writer.raw(unary_bytes.tobytes())
    if k and gaps.size:
        remainders = gaps & ((1 << k) - 1)
        shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
        bits = ((remainders[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
        writer.raw(np.packbits(bits.reshape(-1)).tobytes())


def encode_position_block(writer: ByteWriter, flat_mask: np.ndarray | None, positions: np.ndarray | None,
                          n: int) -> int:
    """Write the smallest of ALL/BITMAP/RICE for a set of positions; return the count.

    Give either ``flat_mask`` (bool, length ``n``) or sorted unique int64 ``positions``.
    """
    if positions is None:
        assert flat_mask is not None
        count = int(np.count_nonzero(flat_mask))
    else:
        count = int(positions.size)
    if count == n:
        writer.u8(KIND_ALL)
        writer.u32(count, "position count")
        return count
    bitmap_bytes = bitmap_size(n)
    if positions is None:
        assert flat_mask is not None
        positions = np.flatnonzero(flat_mask)
    gaps = _rice_gaps(positions)
    k, rice_bytes = choose_rice_parameter(gaps, n)
    if bitmap_bytes <= rice_bytes:
        writer.u8(KIND_BITMAP)
        writer.u32(count, "position count")
        if flat_mask is None:
            flat_mask = np.zeros(n, dtype=bool)
            flat_mask[positions] = True
        writer.raw(np.packbits(flat_mask).tobytes())
    else:
        writer.u8(KIND_RICE)
        writer.u32(count, "position count")
        _encode_rice(writer, gaps, k)
    return count


def _decode_bitmap(reader: ByteReader, count: int, n: int) -> np.ndarray:
    size = bitmap_size(n)
    raw = np.frombuffer(reader.take(size, "bitmap"), dtype=np.uint8)
    if n % 8 and raw[-1] & ((1 << (8 - n % 8)) - 1):
        raise MalformedError("bitmap: padding bits are not zero")
    flat_mask = np.unpackbits(raw, count=n).view(bool)
    if int(np.count_nonzero(flat_mask)) != count:
        raise MalformedError("bitmap: number of set bits differs from the position count")
    return flat_mask


def _decode_rice(reader: ByteReader, count: int, n: int) -> np.ndarray:
    k = reader.u8("rice k")
    if k > MAX_RICE_K:
        raise MalformedError(f"rice k={k} exceeds {MAX_RICE_K}")
    unary_length = reader.u32("rice unary length")
    if unary_length > (n + count + 7) // 8 + 1:
        raise MalformedError("rice unary stream longer than any valid encoding for this tensor")
    unary = np.frombuffer(reader.take(unary_length, "rice unary stream"), dtype=np.uint8)
    remainder_length = (count * k + 7) // 8
    remainder_raw = np.frombuffer(reader.take(remainder_length, "rice remainders"), dtype=np.uint8)
    terminators = np.flatnonzero(np.unpackbits(unary))
    if terminators.size != count:
        raise MalformedError("rice: unary stream does not hold exactly `count` terminators")
    expected_length = 0 if count == 0 else int(terminators[-1]) // 8 + 1
    if unary_length != expected_length:
        raise MalformedError("rice: unary stream length is not canonical")
    quotients = np.diff(terminators, prepend=-1) - 1
    if count and int(quotients.max()) > (n >> k):
        raise MalformedError("rice: gap exceeds tensor size")
    if k:
        bits = np.unpackbits(remainder_raw)
        if bits[count * k :].any():
            raise MalformedError("rice: remainder padding bits are not zero")
        weights = np.int64(1) << np.arange(k - 1, -1, -1, dtype=np.int64)
        remainders = bits[: count * k].reshape(count, k).astype(np.int64) @ weights
        gaps = (quotients << k) | remainders
    else:
        gaps = quotients
    positions = np.cumsum(gaps + 1) - 1
    if count and int(positions[-1]) >= n:
        raise MalformedError("rice: position beyond the end of the tensor")
    return positions.astype(np.int64, copy=False)


def decode_position_block(reader: ByteReader, n: int, allowed_kinds: frozenset[int]
                          ) -> tuple[int, int, np.ndarray | None, np.ndarray | None]:
    """Read a position block for a tensor of ``n`` elements.

    Returns ``(kind, count, flat_mask, positions)``: BITMAP yields ``flat_mask``, RICE yields
    sorted int64 ``positions``, ALL and NONE yield neither.
    """
    kind = reader.u8("position kind")
    if kind not in allowed_kinds:
        raise MalformedError(f"position kind {kind} not allowed here")
    count = reader.u32("position count")
    if count > n:
        raise MalformedError(f"position count {count} exceeds tensor size {n}")
    if kind == KIND_NONE:
        return kind, count, None, None
    if kind == KIND_ALL:
        if count != n:
            raise MalformedError("ALL positions block with count != number of elements")
        return kind, count, None, None
    if kind == KIND_BITMAP:
        return kind, count, _decode_bitmap(reader, count, n), None
    return kind, count, None, _decode_rice(reader, count, n)


def element_count(shape: tuple[int, ...], max_elements: int) -> int:
    """Product of ``shape``; raises :class:`LimitExceededError` beyond ``max_elements``."""
    total = 1
    for dim in shape:
        total *= dim
        if total > max_elements:
            raise LimitExceededError(f"tensor of shape {shape} exceeds {max_elements} elements")
    return total
