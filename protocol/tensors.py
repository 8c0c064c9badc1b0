"""Sparse tensors and mask changes, and their byte encodings.

Tensor set (``encode_tensor_set`` / ``decode_tensor_set``), all integers little-endian::

    u32 tensor_count
    tensor_count times:
        u16 name_length, name (UTF-8, 1..255 bytes, unique within the set)
        u8  ndim (0..8), ndim x u32 dims          n = product of dims (1 for ndim 0)
        u8  value_format                          see protocol.values
        position block                            see protocol.positions (kind NONE/ALL/BITMAP/RICE)
        value block                               u8 codec, [f32 scale if int8], values

The position block's ``count`` is the number of values. Kind ``NONE`` means the tensor carries
no mask: either a dense tensor (``count == n``) or values on the mask the receiver already knows
(``count <= n``), in the C order of that mask's set positions. ``ALL``/``BITMAP``/``RICE`` carry
the mask itself; the encoder picks the smallest.

Mask changes (``encode_mask_changes`` / ``decode_mask_changes``)::

    u32 entry_count
    entry_count times:
        u16 name_length, name
        u8  ndim, ndim x u32 dims
        position block of the dropped positions   (kind ALL/BITMAP/RICE)
        position block of the grown positions     (kind ALL/BITMAP/RICE)

Positions are flat indices into the C-order ``reshape(-1)`` of the tensor. A mask change is
applied to the mask the device was sent: ``new = old; new[dropped] = False; new[grown] = True``;
every dropped position must be set in ``old`` and every grown one unset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocol.binary import ByteReader, ByteWriter
from protocol.errors import InvalidMessageError, LimitExceededError, MalformedError, MaskMismatchError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.positions import (
    KIND_ALL,
    KIND_BITMAP,
    KIND_NONE,
    KIND_RICE,
    decode_position_block,
    element_count,
    encode_position_block,
)
from protocol.values import (
    COMPRESSIONS,
    VALUE_FORMAT_NAMES,
    decode_value_block,
    encode_value_block,
    value_format_code,
)

MAX_NAME_BYTES = 255
MAX_NDIM = 8
TENSOR_KINDS = frozenset({KIND_NONE, KIND_ALL, KIND_BITMAP, KIND_RICE})
INDEX_SET_KINDS = frozenset({KIND_ALL, KIND_BITMAP, KIND_RICE})


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """A tensor as sent on the wire.

    ``values`` is 1-D float32: the active values in C (row-major) order of the set positions of
    ``mask``, or all ``prod(shape)`` values when dense. ``mask`` is a bool array of ``shape``, or
    ``None`` for a dense tensor or for values on a mask the receiver already knows.
    Equality compares shape, mask and the exact bits of the values (so NaN == NaN).
    """

    shape: tuple[int, ...]
    values: np.ndarray
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(dim) for dim in self.shape)
        if any(dim < 0 for dim in shape):
            raise InvalidMessageError(f"negative dimension in shape {shape}")
        values = np.ascontiguousarray(np.asarray(self.values, dtype=np.float32).reshape(-1))
        n = math.prod(shape)  # Python ints: no overflow, and no numpy call per tensor
        mask = self.mask
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != shape:
                raise InvalidMessageError(f"mask must be a bool array of shape {shape}")
            if int(np.count_nonzero(mask)) != values.size:
                raise InvalidMessageError("values must hold exactly one value per set mask position")
        elif values.size > n:
            raise InvalidMessageError(f"{values.size} values for a tensor of {n} elements")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "mask", mask)

    @classmethod
    def _decoded(cls, shape: tuple[int, ...], values: np.ndarray, mask: np.ndarray | None) -> SparseTensor:
        """A tensor as :func:`read_tensor_set` read it, without ``__post_init__``'s conversions, whose checks hold
        by construction there: ``shape`` Python ints >= 0 (u32 fields), ``values`` a new 1-D contiguous float32
        array (:func:`protocol.values.decode_value_block`) of at most ``prod(shape)`` values, ``mask`` None or a
        bool array of ``shape`` with exactly ``values.size`` set positions (counted where it was read)."""
        tensor = object.__new__(cls)
        object.__setattr__(tensor, "shape", shape)
        object.__setattr__(tensor, "values", values)
        object.__setattr__(tensor, "mask", mask)
        return tensor

    @classmethod
    def from_dense(cls, array: np.ndarray, mask: np.ndarray | None = None) -> SparseTensor:
        """Take the values of ``array`` at the set positions of ``mask`` (all values if None)."""
        array = np.asarray(array, dtype=np.float32)
        if mask is None:
            return cls(array.shape, array.reshape(-1))
        mask = np.asarray(mask, dtype=bool)
        return cls(array.shape, array[mask], mask)

    def to_dense(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Scatter the values into a zero float32 array of ``shape``.

        ``mask`` is the receiver's known mask, needed when the tensor carries values only on
        a known mask (``self.mask is None`` and fewer values than elements).
        """
        use_mask = self.mask if self.mask is not None else mask
        if use_mask is None:
            n = math.prod(self.shape)
            if self.values.size != n:
                raise InvalidMessageError("values on a known mask: pass that mask to to_dense")
            return self.values.reshape(self.shape).copy()
        use_mask = np.asarray(use_mask, dtype=bool)
        if use_mask.shape != self.shape or int(np.count_nonzero(use_mask)) != self.values.size:
            raise MaskMismatchError("mask does not match the tensor's shape or number of values")
        dense = np.zeros(self.shape, dtype=np.float32)
        dense[use_mask] = self.values
        return dense

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseTensor):
            return NotImplemented
        if self.shape != other.shape or self.values.tobytes() != other.values.tobytes():
            return False
        if self.mask is None or other.mask is None:
            return self.mask is None and other.mask is None
        return bool(np.array_equal(self.mask, other.mask))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class MaskChange:
    """Readjusted positions of one tensor's mask: flat int64 indices into ``reshape(-1)``.

    The constructor sorts both arrays; they must be unique and disjoint.
    """

    dropped: np.ndarray
    grown: np.ndarray

    def __post_init__(self) -> None:
        for field in ("dropped", "grown"):
            indices = np.unique(np.asarray(getattr(self, field), dtype=np.int64).reshape(-1))
            if indices.size != np.asarray(getattr(self, field)).size:
                raise InvalidMessageError(f"MaskChange.{field} has duplicate indices")
            object.__setattr__(self, field, indices)
        if np.intersect1d(self.dropped, self.grown).size:
            raise InvalidMessageError("MaskChange: an index is both dropped and grown")

    @classmethod
    def between(cls, old_mask: np.ndarray, new_mask: np.ndarray) -> MaskChange:
        """The change that turns ``old_mask`` into ``new_mask`` (same shape)."""
        old_flat = np.asarray(old_mask, dtype=bool).reshape(-1)
        new_flat = np.asarray(new_mask, dtype=bool).reshape(-1)
        return cls(np.flatnonzero(old_flat & ~new_flat), np.flatnonzero(new_flat & ~old_flat))

    @property
    def is_empty(self) -> bool:
        return self.dropped.size == 0 and self.grown.size == 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskChange):
            return NotImplemented
        return bool(np.array_equal(self.dropped, other.dropped) and np.array_equal(self.grown, other.grown))

    __hash__ = None  # type: ignore[assignment]


def apply_mask_changes(mask: np.ndarray, change: MaskChange) -> np.ndarray:
    """Return a new mask: ``mask`` with ``change.dropped`` cleared and ``change.grown`` set.

    Raises :class:`MaskMismatchError` (a :class:`ProtocolError`) if an index is out of range,
    a dropped position is not set or a grown position is already set.
    """
    flat = np.array(mask, dtype=bool).reshape(-1)
    for name, indices in (("dropped", change.dropped), ("grown", change.grown)):
        if indices.size and (int(indices[0]) < 0 or int(indices[-1]) >= flat.size):
            raise MaskMismatchError(f"{name} index out of range for a mask of {flat.size} elements")
    if not flat[change.dropped].all():
        raise MaskMismatchError("a dropped position is not set in the mask")
    if flat[change.grown].any():
        raise MaskMismatchError("a grown position is already set in the mask")
    flat[change.dropped] = False
    flat[change.grown] = True
    return flat.reshape(np.shape(mask))


def _write_name_and_shape(writer: ByteWriter, name: str, shape: tuple[int, ...]) -> None:
    if not name:
        raise InvalidMessageError("tensor names must be non-empty")
    writer.string(name, "tensor name", MAX_NAME_BYTES)
    if len(shape) > MAX_NDIM:
        raise InvalidMessageError(f"tensor {name!r}: {len(shape)} dimensions exceed {MAX_NDIM}")
    writer.u8(len(shape))
    for dim in shape:
        writer.u32(dim, f"tensor {name!r} dimension")


def _read_name_and_shape(reader: ByteReader, limits: Limits, seen: set[str]) -> tuple[str, tuple[int, ...]]:
    name = reader.string("tensor name", min(limits.max_name_bytes, MAX_NAME_BYTES))
    if not name:
        raise MalformedError("empty tensor name")
    if name in seen:
        raise MalformedError(f"duplicate tensor name {name!r}")
    seen.add(name)
    ndim = reader.u8("ndim")
    if ndim > min(limits.max_ndim, MAX_NDIM):
        raise LimitExceededError(f"tensor {name!r}: {ndim} dimensions exceed the limit")
    shape = tuple(reader.u32("dimension") for _ in range(ndim))
    return name, shape


def _check_compression(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise InvalidMessageError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def encode_tensor_set(tensors: Mapping[str, SparseTensor], value_format: str = "float32",
                      compression: str = "auto") -> bytes:
    """Encode named sparse tensors (a model or an update); see the module docstring.

    ``value_format`` is one of ``float32`` (lossless), ``float16``, ``bfloat16``, ``int8``
    (see :func:`protocol.values.error_bound`). ``compression`` is ``none``, ``zstd`` or
    ``auto`` (zstd on value blocks where it saves at least 1/32).
    """
    writer = ByteWriter()
    write_tensor_set(writer, tensors, value_format, compression)
    return writer.getvalue()


def write_tensor_set(writer: ByteWriter, tensors: Mapping[str, SparseTensor], value_format: str,
                     compression: str) -> None:
    code = value_format_code(value_format)
    _check_compression(compression)
    writer.u32(len(tensors), "tensor count")
    for name, tensor in tensors.items():
        if not isinstance(tensor, SparseTensor):
            raise InvalidMessageError(f"tensor {name!r} is not a SparseTensor")
        _write_name_and_shape(writer, name, tensor.shape)
        writer.u8(code)
        n = tensor.values.size if tensor.mask is None else tensor.mask.size
        if tensor.mask is None:
            writer.u8(KIND_NONE)
            writer.u32(tensor.values.size, "value count")
        else:
            encode_position_block(writer, tensor.mask.reshape(-1), None, n)
        encode_value_block(writer, tensor.values, code, compression)


def decode_tensor_set(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
                      ) -> dict[str, SparseTensor]:
    """Decode :func:`encode_tensor_set` output; raises only :class:`ProtocolError` subclasses."""
    reader = ByteReader(data)
    tensors, _ = read_tensor_set(reader, limits, limits.max_elements)
    reader.expect_end("tensor set")
    return tensors


def read_tensor_set(reader: ByteReader, limits: Limits, element_budget: int
                    ) -> tuple[dict[str, SparseTensor], int]:
    """Read a tensor set; return it and the element budget left."""
    count = reader.u32("tensor count")
    if count > limits.max_tensors:
        raise LimitExceededError(f"{count} tensors exceed the limit {limits.max_tensors}")
    tensors: dict[str, SparseTensor] = {}
    for _ in range(count):
        name, shape = _read_name_and_shape(reader, limits, set(tensors))
        n = element_count(shape, element_budget)
        element_budget -= n
        code = reader.u8("value format")
        if code not in VALUE_FORMAT_NAMES:
            raise MalformedError(f"tensor {name!r}: unknown value format {code}")
        kind, nnz, flat_mask, positions = decode_position_block(reader, n, TENSOR_KINDS)
        values = decode_value_block(reader, code, nnz)
        if positions is not None:  # Golomb-Rice positions: the constructor counts the mask they set
            held = np.zeros(n, dtype=bool)
            held[positions] = True
            tensors[name] = SparseTensor(shape, values, held.reshape(shape))
            continue
        mask: np.ndarray | None = None
        if kind == KIND_ALL:
            mask = np.ones(shape, dtype=bool)
        elif flat_mask is not None:  # its set bits were counted against nnz (decode_position_block)
            mask = flat_mask.reshape(shape)
        tensors[name] = SparseTensor._decoded(shape, values, mask)
    return tensors, element_budget


def encode_mask_changes(changes: Mapping[str, MaskChange], shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """Encode per-tensor mask changes; ``shapes`` gives each named tensor's shape."""
    writer = ByteWriter()
    write_mask_changes(writer, changes, shapes)
    return writer.getvalue()


def write_mask_changes(writer: ByteWriter, changes: Mapping[str, MaskChange],
                       shapes: Mapping[str, tuple[int, ...]]) -> None:
    writer.u32(len(changes), "mask change count")
    for name, change in changes.items():
        if name not in shapes:
            raise InvalidMessageError(f"mask change for {name!r} but no shape for it")
        if not isinstance(change, MaskChange):
            raise InvalidMessageError(f"mask change {name!r} is not a MaskChange")
        shape = tuple(int(dim) for dim in shapes[name])
        _write_name_and_shape(writer, name, shape)
        n = int(np.prod(shape, dtype=np.int64))
        for indices in (change.dropped, change.grown):
            if indices.size and (int(indices[0]) < 0 or int(indices[-1]) >= n):
                raise InvalidMessageError(f"mask change {name!r}: index out of range for shape {shape}")
            encode_position_block(writer, None, indices, n)


def decode_mask_changes(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS,
                        shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, MaskChange]:
    """Decode :func:`encode_mask_changes` output.

    If ``shapes`` is given, every entry's encoded shape must equal ``shapes[name]``
    (:class:`MaskMismatchError` otherwise).
    """
    reader = ByteReader(data)
    changes, encoded_shapes, _ = read_mask_changes(reader, limits, limits.max_elements)
    reader.expect_end("mask changes")
    if shapes is not None:
        for name, shape in encoded_shapes.items():
            if name not in shapes or tuple(shapes[name]) != shape:
                raise MaskMismatchError(f"mask change {name!r}: shape {shape} is not the expected one")
    return changes


def read_mask_changes(reader: ByteReader, limits: Limits, element_budget: int
                      ) -> tuple[dict[str, MaskChange], dict[str, tuple[int, ...]], int]:
    count = reader.u32("mask change count")
    if count > limits.max_tensors:
        raise LimitExceededError(f"{count} mask changes exceed the limit {limits.max_tensors}")
    changes: dict[str, MaskChange] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(count):
        name, shape = _read_name_and_shape(reader, limits, set(changes))
        n = element_count(shape, element_budget)
        element_budget -= n
        index_sets = []
        for _side in ("dropped", "grown"):
            kind, _count, flat_mask, positions = decode_position_block(reader, n, INDEX_SET_KINDS)
            if kind == KIND_ALL:
                positions = np.arange(n, dtype=np.int64)
            elif flat_mask is not None:
                positions = np.flatnonzero(flat_mask).astype(np.int64)
            assert positions is not None
            index_sets.append(positions)
        dropped, grown = index_sets
        if dropped.size and grown.size and np.intersect1d(dropped, grown, assume_unique=True).size:
            raise MalformedError(f"mask change {name!r}: a position is both dropped and grown")
        changes[name] = MaskChange(dropped, grown)
        shapes[name] = shape
    return changes, shapes, element_budget
