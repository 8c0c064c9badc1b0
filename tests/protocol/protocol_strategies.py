"""Hypothesis strategies for protocol tests (random sparse tensors and messages)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from protocol import (
    Abort,
    Ack,
    Capabilities,
    DeviceError,
    MaskChange,
    ModelBroadcast,
    Register,
    RunCompleted,
    SparseTensor,
    Status,
    Task,
    Update,
)

identifiers = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
texts = st.text(max_size=40)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
shapes = st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple)


@st.composite
def sparse_tensors(draw, masked: bool | None = None, shape: tuple[int, ...] | None = None) -> SparseTensor:
    shape = draw(shapes) if shape is None else shape
    n = int(np.prod(shape, dtype=np.int64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(n) * draw(st.sampled_from([1e-3, 1.0, 100.0]))).astype(np.float32)
    if masked is None:
        masked = draw(st.booleans())
    if not masked:
        return SparseTensor(shape, values)
    mode = draw(st.sampled_from(["random", "none", "all", "prefix"]))
    if mode == "random":
        mask = rng.random(n) < draw(st.sampled_from([0.01, 0.1, 0.5, 0.9]))
    elif mode == "none":
        mask = np.zeros(n, dtype=bool)
    elif mode == "all":
        mask = np.ones(n, dtype=bool)
    else:
        mask = np.arange(n) < draw(st.integers(0, max(n, 0)))
    return SparseTensor.from_dense(values.reshape(shape), mask.reshape(shape))


tensor_names = st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True)
tensor_sets = st.dictionaries(tensor_names, sparse_tensors(), max_size=5)


@st.composite
def mask_change_for(draw, n: int) -> MaskChange:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    chosen = rng.permutation(n)[: draw(st.integers(0, n))]
    split = draw(st.integers(0, chosen.size))
    return MaskChange(chosen[:split], chosen[split:])


@st.composite
def updates(draw) -> Update:
    tensors = draw(st.dictionaries(tensor_names, sparse_tensors(masked=False), max_size=4))
    changes = {}
    for name, tensor in tensors.items():
        if draw(st.booleans()):
            changes[name] = draw(mask_change_for(int(np.prod(tensor.shape, dtype=np.int64))))
    return Update(draw(identifiers), draw(u32), draw(identifiers), tensors, changes, draw(u64),
                  draw(finite), draw(finite), draw(u64))


capabilities = st.builds(Capabilities, texts, u32, u32, st.dictionaries(texts, texts, max_size=4))
messages = st.one_of(
    st.builds(Register, identifiers, capabilities, u64, u64),
    st.builds(Status, identifiers, st.sampled_from(["online", "offline", "busy"]), texts),
    st.builds(Task, identifiers, u32, st.lists(identifiers, max_size=6).map(tuple), u32, u32, u32, finite,
              finite, finite, finite, st.booleans(), finite, finite, u64, texts, u64),
    st.builds(ModelBroadcast, identifiers, u32, tensor_sets),
    updates(),
    st.builds(Ack, identifiers, u32, identifiers, st.booleans(), texts),
    st.builds(Abort, identifiers, u32, texts),
    st.builds(RunCompleted, identifiers, u32, tensor_sets, st.none() | st.floats(0.0, 1.0)),
    st.builds(DeviceError, identifiers, u32, identifiers, identifiers, texts),
)
