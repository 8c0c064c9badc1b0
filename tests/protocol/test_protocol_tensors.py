"""Round trips and contracts of the sparse tensor-set and mask-change encodings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import mask_change_for, sparse_tensors, tensor_sets

from protocol import (
    InvalidMessageError,
    MaskChange,
    MaskMismatchError,
    ProtocolError,
    SparseTensor,
    apply_mask_changes,
    decode_mask_changes,
    decode_tensor_set,
    encode_mask_changes,
    encode_tensor_set,
    error_bound,
)
from protocol.binary import ByteReader, ByteWriter
from protocol.positions import KIND_ALL, KIND_BITMAP, KIND_RICE, decode_position_block, encode_position_block


@settings(max_examples=150, deadline=None)
@given(tensor_sets, st.sampled_from(["none", "zstd", "auto"]))
def test_float32_tensor_set_round_trip_is_exact(tensors, compression):
    data = encode_tensor_set(tensors, "float32", compression)
    decoded = decode_tensor_set(data)
    assert list(decoded) == list(tensors)
    assert decoded == tensors


@settings(max_examples=150, deadline=None)
@given(tensor_sets, st.sampled_from(["float16", "bfloat16", "int8"]), st.sampled_from(["none", "auto"]))
def test_quantized_round_trip_keeps_masks_and_respects_error_bound(tensors, value_format, compression):
    decoded = decode_tensor_set(encode_tensor_set(tensors, value_format, compression))
    for name, tensor in tensors.items():
        got = decoded[name]
        assert got.shape == tensor.shape
        assert (got.mask is None) == (tensor.mask is None)
        if tensor.mask is not None:
            assert np.array_equal(got.mask, tensor.mask)
        bound = error_bound(tensor.values, value_format)
        error = np.abs(got.values.astype(np.float64) - tensor.values.astype(np.float64))
        assert error.size == 0 or error.max() <= bound


def test_error_bound_is_zero_for_float32_and_positive_otherwise():
    values = np.array([0.5, -3.0, 7.25], dtype=np.float32)
    assert error_bound(values, "float32") == 0
    for value_format in ("float16", "bfloat16", "int8"):
        assert error_bound(values, value_format) > 0


def test_float16_rejects_values_it_cannot_represent():
    with pytest.raises(InvalidMessageError):
        encode_tensor_set({"w": SparseTensor((1,), np.array([1e6], np.float32))}, "float16")


def test_int8_rejects_non_finite_values_and_float32_keeps_them():
    tensor = SparseTensor((3,), np.array([np.nan, np.inf, -np.inf], np.float32))
    with pytest.raises(InvalidMessageError):
        encode_tensor_set({"w": tensor}, "int8")
    assert decode_tensor_set(encode_tensor_set({"w": tensor})) == {"w": tensor}


def test_unknown_value_format_and_compression_are_refused():
    tensors = {"w": SparseTensor((1,), np.ones(1, np.float32))}
    with pytest.raises(InvalidMessageError):
        encode_tensor_set(tensors, "float8")
    with pytest.raises(InvalidMessageError):
        encode_tensor_set(tensors, compression="gzip")


def _kind_chosen(flat_mask: np.ndarray) -> int:
    writer = ByteWriter()
    encode_position_block(writer, flat_mask, None, flat_mask.size)
    return writer.getvalue()[0]


def test_position_encoding_is_chosen_by_size():
    rng = np.random.default_rng(1)
    assert _kind_chosen(np.ones(1000, bool)) == KIND_ALL
    assert _kind_chosen(rng.random(10000) < 0.5) == KIND_BITMAP
    assert _kind_chosen(rng.random(10000) < 0.02) == KIND_RICE
    assert _kind_chosen(np.arange(10000) < 3000) == KIND_RICE  # long run of ones then zeros


@pytest.mark.parametrize("density", [0.5, 0.2, 0.1, 0.05, 0.02, 0.005])
def test_positions_cost_close_to_the_information_bound(density):
    rng = np.random.default_rng(2)
    n = 200_000
    flat_mask = rng.random(n) < density
    writer = ByteWriter()
    encode_position_block(writer, flat_mask, None, n)
    k = int(flat_mask.sum())
    bound_bytes = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) / 8
    assert writer.size <= bound_bytes * 1.04 + 16


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.7, 1.0]))
def test_position_block_round_trip(n, seed, density):
    flat_mask = np.random.default_rng(seed).random(n) < density
    writer = ByteWriter()
    encode_position_block(writer, flat_mask, None, n)
    reader = ByteReader(writer.getvalue())
    kind, count, decoded_mask, positions = decode_position_block(reader, n, frozenset({1, 2, 3}))
    assert reader.remaining == 0 and count == flat_mask.sum()
    if kind == KIND_ALL:
        decoded_mask = np.ones(n, bool)
    elif positions is not None:
        decoded_mask = np.zeros(n, bool)
        decoded_mask[positions] = True
    assert np.array_equal(decoded_mask, flat_mask)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mask_changes_round_trip_and_apply(data):
    shapes = data.draw(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                                       st.lists(st.integers(1, 30), min_size=1, max_size=3).map(tuple),
                                       max_size=4))
    changes = {name: data.draw(mask_change_for(int(np.prod(shape)))) for name, shape in shapes.items()}
    decoded = decode_mask_changes(encode_mask_changes(changes, shapes), shapes=shapes)
    assert decoded == changes
    for name, change in decoded.items():
        old = np.zeros(shapes[name], bool).reshape(-1)
        old[change.dropped] = True
        new = apply_mask_changes(old.reshape(shapes[name]), change)
        assert new.shape == shapes[name]
        assert new.reshape(-1)[change.grown].all() and not new.reshape(-1)[change.dropped].any()
        assert MaskChange.between(old.reshape(shapes[name]), new) == change


def test_empty_mask_changes_cost_a_few_bytes():
    assert len(encode_mask_changes({}, {})) == 4


def test_decode_mask_changes_checks_expected_shapes():
    data = encode_mask_changes({"w": MaskChange([1], [2])}, {"w": (2, 3)})
    with pytest.raises(MaskMismatchError):
        decode_mask_changes(data, shapes={"w": (3, 2)})


def test_apply_mask_changes_refuses_inconsistent_changes():
    mask = np.array([True, False, True, False])
    with pytest.raises(MaskMismatchError):
        apply_mask_changes(mask, MaskChange([1], []))  # dropping an unset position
    with pytest.raises(MaskMismatchError):
        apply_mask_changes(mask, MaskChange([], [0]))  # growing a set position
    with pytest.raises(MaskMismatchError):
        apply_mask_changes(mask, MaskChange([], [4]))  # out of range
    assert np.array_equal(apply_mask_changes(mask, MaskChange([0], [1])), [False, True, True, False])
    assert np.array_equal(mask, [True, False, True, False]), "input must not be modified"


def test_mask_change_rejects_overlap_and_duplicates():
    with pytest.raises(InvalidMessageError):
        MaskChange([1, 2], [2])
    with pytest.raises(InvalidMessageError):
        MaskChange([1, 1], [])


@settings(max_examples=50, deadline=None)
@given(sparse_tensors(masked=True))
def test_sparse_tensor_dense_helpers(tensor):
    dense = tensor.to_dense()
    assert dense.shape == tensor.shape
    assert SparseTensor.from_dense(dense, tensor.mask) == tensor
    values_only = SparseTensor(tensor.shape, tensor.values)
    assert np.array_equal(values_only.to_dense(tensor.mask), dense)


def test_sparse_tensor_validates_its_fields():
    with pytest.raises(InvalidMessageError):
        SparseTensor((2, 2), np.ones(3, np.float32), np.ones((2, 2), bool))
    with pytest.raises(InvalidMessageError):
        SparseTensor((2,), np.ones(3, np.float32))
    with pytest.raises(InvalidMessageError):
        SparseTensor((2, 2), np.ones(4, np.float32), np.ones((4,), bool))


def test_duplicate_names_are_rejected_on_decode():
    one = encode_tensor_set({"a": SparseTensor((1,), np.ones(1, np.float32))}, compression="none")
    body = one[4:]
    with pytest.raises(ProtocolError):
        decode_tensor_set(b"\x02\x00\x00\x00" + body + body)


def test_zero_sized_and_scalar_tensors_round_trip():
    tensors = {"empty": SparseTensor((0, 5), np.zeros(0, np.float32), np.zeros((0, 5), bool)),
               "scalar": SparseTensor((), np.array([3.5], np.float32))}
    for compression in ("none", "zstd"):
        assert decode_tensor_set(encode_tensor_set(tensors, compression=compression)) == tensors


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("value_format", ["float32", "float16", "int8"])
def test_decoded_values_and_masks_are_copies_of_the_input_bytes(compression, value_format):
    """The coordinator lets a message's bytes go once decoded (cloud.mqtt_link): nothing decoded may view them."""
    from protocol import Update, decode_message, encode_message

    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) < 0.3
    tensors = {"w": SparseTensor((40, 50), rng.standard_normal(int(mask.sum())).astype(np.float32), mask),
               "b": SparseTensor((9,), rng.standard_normal(9).astype(np.float32))}
    data = bytearray(encode_message(Update("run-1", 1, "dev-1", tensors, {}, 3, 0.0, 0.0),
                                    value_format=value_format, compression=compression))
    decoded = decode_message(data)
    expected = decode_message(bytes(data))
    data[:] = bytes(len(data))
    assert decoded == expected


@settings(max_examples=150, deadline=None)
@given(tensor_sets, st.sampled_from(["float32", "float16", "bfloat16", "int8"]), st.sampled_from(["none", "zstd"]))
def test_decoded_tensors_hold_what_the_constructor_makes(tensors, value_format, compression):
    """The decoder builds tensors without ``__post_init__`` (``SparseTensor._decoded``): every field must still be
    what the constructor would make of it (shape of ints, a new contiguous writable 1-D float32 array, a bool mask
    of the shape with one set position per value)."""
    for tensor in decode_tensor_set(encode_tensor_set(tensors, value_format, compression)).values():
        rebuilt = SparseTensor(tensor.shape, tensor.values, tensor.mask)
        assert type(tensor.shape) is tuple and all(type(dim) is int for dim in tensor.shape)
        assert tensor.shape == rebuilt.shape
        assert tensor.values.dtype == np.float32 and tensor.values.ndim == 1
        assert tensor.values.flags.c_contiguous and tensor.values.flags.writeable
        assert tensor.values.size == 0 or np.shares_memory(tensor.values, rebuilt.values)  # not converted
        if tensor.mask is not None:
            assert tensor.mask.dtype == np.bool_ and tensor.mask.shape == tensor.shape
            assert int(np.count_nonzero(tensor.mask)) == tensor.values.size
        else:
            assert tensor.values.size <= math.prod(tensor.shape)
