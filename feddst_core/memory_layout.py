"""Row-major (C order) strides, in pure Python: what both the torch side (``feddst_core.models.row_major``) and
the agent's torch-free data loading (``edge_agent.data.row_major_array``) compare a tensor's or array's strides
with. No torch or numpy import: the agent loads its data before it imports torch."""

from __future__ import annotations

from collections.abc import Sequence


def row_major_strides(shape: Sequence[int], itemsize: int = 1) -> tuple[int, ...]:
    """The strides of a row-major (C order, NCHW for a 4-d batch) layout of ``shape``, size-1 dims included:
    in elements with ``itemsize`` 1 (torch's ``Tensor.stride()``), in bytes with the element size (numpy's
    ``ndarray.strides``). A size-0 dim counts as 1, as both libraries lay such an empty array out."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
