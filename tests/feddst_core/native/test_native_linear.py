"""Native CSR x dense product (``csr_matmul``) and SDDMM (``csr_sddmm``) vs dense float64 references.

These back ``NativeSparseLinearFunction``: y^T = b + W x^T (csr_matmul on W's CSR), dx^T = W^T dy^T
(csr_matmul on W^T's CSR reading W's values through ``transpose_perm``) and dW = dy^T x at the mask
(csr_sddmm, fused with the bias gradient's row sums). Weights use the init scale (std ~ 1/sqrt(active
fan-in)) and the SDDMM's left operand is scaled by 1/sqrt(B), so every output is O(1): rtol=atol=1e-5
is a float32 tolerance at unit scale. Batch sizes cover the 32-wide register blocks of csr_matmul
(1, 7: tail only; 32, 64: blocks only; 37: both) and the SDDMM's 8-wide vector loop and its tail;
row lengths not divisible by 8 exercise the SDDMM's 8-entries-at-a-time loop and its tail.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import feddst_core.native as native
from feddst_core.sparse.kernels import CsrPattern

if os.environ.get("FEDDST_NATIVE", "1") == "0":
    pytest.skip("native kernels disabled by FEDDST_NATIVE=0", allow_module_level=True)
if shutil.which("cc") is None and not native.available():
    pytest.skip(f"no C compiler, native kernels not built: {native.status()}", allow_module_level=True)

TOL = {"rtol": 1e-5, "atol": 1e-5}
BATCHES = (1, 7, 8, 32, 37, 45, 64)  # 45 = 32 + 8 + 5: every block width and the scalar tail
MASKS = ("1.0", "0.3", "0.05", "0.3-empty-rows", "empty")
SHAPES = ((13, 29), (37, 100))  # (rows, cols) of W; row counts not multiples of 8, row lengths mostly not either


def test_native_library_available() -> None:
    assert native.available(), native.status()


def _mask(kind: str, rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    if kind == "empty":
        return torch.zeros(rows, cols, dtype=torch.bool)
    mask = torch.rand(rows, cols, generator=g) < float(kind.split("-")[0])
    if kind.endswith("empty-rows"):
        mask[0] = False  # an empty row of W (first) ...
        mask[rows // 2] = False  # ... one in the middle ...
        mask[:, -1] = False  # ... and an empty row of W^T (last column)
    return mask


def _case(rows: int, cols: int, batch: int, kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = _mask(kind, rows, cols, g)
    density = float(kind.split("-")[0]) if kind != "empty" else 1.0
    weight = torch.randn(rows, cols, generator=g) / max(1.0, density * cols) ** 0.5
    bias = torch.randn(rows, generator=g)
    x_t = torch.randn(cols, batch, generator=g)  # x^T (in, B)
    dy_t = torch.randn(rows, batch, generator=g)  # dy^T (out, B)
    pattern = CsrPattern.from_mask(mask)
    return mask, weight, bias, x_t, dy_t, pattern


def _close(actual: torch.Tensor, expected: torch.Tensor, nontrivial: bool = True) -> None:
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    if nontrivial:
        assert expected.abs().max() > 100 * TOL["atol"], "reference ~zero: the comparison would prove nothing"
    torch.testing.assert_close(actual.double(), expected, **TOL)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_csr_matmul_forward_matches_dense(shape: tuple[int, int], batch: int, kind: str) -> None:
    rows, cols = shape
    mask, weight, bias, x_t, _, p = _case(rows, cols, batch, kind)
    values = p.gather(weight)
    w64 = (weight * mask).double()
    empty = p.nnz == 0

    y = native.csr_matmul(p.crow, p.col, values, x_t, bias=bias)
    _close(y, bias.double().unsqueeze(1) + w64 @ x_t.double())
    y0 = native.csr_matmul(p.crow, p.col, values, x_t)  # no bias
    _close(y0, w64 @ x_t.double(), nontrivial=not empty)
    if kind.endswith("empty-rows"):  # an empty row is exactly its bias (or exactly zero)
        assert torch.equal(y[0], bias[0].expand(batch))
        assert torch.equal(y0[rows // 2], torch.zeros(batch))


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_csr_matmul_transpose_with_perm_matches_dense(shape: tuple[int, int], batch: int, kind: str) -> None:
    rows, cols = shape
    mask, weight, _, _, dy_t, p = _case(rows, cols, batch, kind, seed=1)
    values = p.gather(weight)
    assert p.t_col.dtype == torch.int16  # rows < 2^15: the int16 index path
    ref = (weight * mask).double().t() @ dy_t.double()  # (cols, B)
    empty = p.nnz == 0

    dx_t = native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=p.transpose_perm)
    _close(dx_t, ref, nontrivial=not empty)
    if kind.endswith("empty-rows"):
        assert torch.equal(dx_t[-1], torch.zeros(batch))  # an empty row of W^T
    # the same product from int32 indices, and from values already in W^T order (no perm): same kernel math
    dx_t32 = native.csr_matmul(p.t_crow, p.t_col.to(torch.int32), values, dy_t, perm=p.transpose_perm)
    torch.testing.assert_close(dx_t32, dx_t, rtol=0, atol=0)
    values_t = values[p.transpose_perm.long()].contiguous()
    torch.testing.assert_close(native.csr_matmul(p.t_crow, p.t_col, values_t, dy_t), dx_t, rtol=0, atol=0)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_csr_sddmm_matches_dense(shape: tuple[int, int], batch: int, kind: str) -> None:
    rows, cols = shape
    mask, _, _, x_t, dy_t, p = _case(rows, cols, batch, kind, seed=2)
    left = dy_t / batch**0.5  # a mean loss's scale: O(1) sums over the batch
    dense = left.double() @ x_t.double().t()  # (rows, cols)
    empty = p.nnz == 0

    gv, gb = native.csr_sddmm(p.crow, p.col, left, x_t, with_bias=True)
    assert gv.shape == (p.nnz,) and gb is not None
    _close(gv, p.gather(dense), nontrivial=not empty)
    _close(gb, left.double().sum(1))
    gv2, gb2 = native.csr_sddmm(p.crow, p.col, left, x_t)
    assert gb2 is None
    torch.testing.assert_close(gv2, gv, rtol=0, atol=0)


def test_row_lengths_cover_sddmm_groups_and_tails() -> None:
    """The shapes above do give rows with >= 8 entries, rows of non-multiple-of-8 lengths and empty rows."""
    lengths = set()
    for rows, cols in SHAPES:
        for kind in MASKS:
            p = _case(rows, cols, 1, kind)[-1]
            lengths |= set((p.crow[1:] - p.crow[:-1]).tolist())
    assert 0 in lengths and any(n >= 16 and n % 8 for n in lengths) and any(0 < n < 8 for n in lengths)


def test_transpose_with_int32_t_col_for_many_rows() -> None:
    """W with >= 2^15 rows: t_col is int32 (int16 would overflow), perm path still exact against dense."""
    rows, cols, batch = 2**15 + 3, 5, 3
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(rows, cols, generator=g) < 0.01
    mask[-1] = True  # the last row number (> 2^15) is referenced
    p = CsrPattern.from_mask(mask)
    assert p.t_col.dtype == torch.int32
    weight = torch.randn(rows, cols, generator=g)
    dy_t = torch.randn(rows, batch, generator=g) / (0.01 * rows) ** 0.5
    dx_t = native.csr_matmul(p.t_crow, p.t_col, p.gather(weight), dy_t, perm=p.transpose_perm)
    _close(dx_t, (weight * mask).double().t() @ dy_t.double())


def _run_all(seed: int) -> list[torch.Tensor]:
    mask, weight, bias, x_t, dy_t, p = _case(200, 300, 37, "0.3", seed=seed)
    values = p.gather(weight)
    y = native.csr_matmul(p.crow, p.col, values, x_t, bias=bias)
    dx = native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=p.transpose_perm)
    gv, gb = native.csr_sddmm(p.crow, p.col, dy_t, x_t, with_bias=True)
    return [y, dx, gv, gb]


def test_results_independent_of_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_all(4)
        torch.set_num_threads(2)
        two = _run_all(4)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for a, b in zip(one, two, strict=True):
        # each output row is computed by one thread in a fixed order: bit-identical, whatever the split
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def small():
    mask, weight, bias, x_t, dy_t, p = _case(13, 29, 5, "0.3", seed=6)
    return p, p.gather(weight), bias, x_t, dy_t


def test_errors_dtypes(small) -> None:
    p, values, bias, x_t, dy_t = small
    with pytest.raises(ValueError, match=r"values must be torch\.float32, got torch\.float64"):
        native.csr_matmul(p.crow, p.col, values.double(), x_t)
    with pytest.raises(ValueError, match=r"src must be torch\.float32, got torch\.float64"):
        native.csr_matmul(p.crow, p.col, values, x_t.double())
    with pytest.raises(ValueError, match=r"bias must be torch\.float32, got torch\.float64"):
        native.csr_matmul(p.crow, p.col, values, x_t, bias=bias.double())
    with pytest.raises(ValueError, match=r"CSR column index must be int32 or int16, got torch\.int64"):
        native.csr_matmul(p.crow, p.col.long(), values, x_t)
    with pytest.raises(ValueError, match=r"crow must be torch\.int32, got torch\.int64"):
        native.csr_matmul(p.crow.long(), p.col, values, x_t)
    with pytest.raises(ValueError, match=r"perm must be torch\.int32, got torch\.int64"):
        native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=p.transpose_perm.long())
    with pytest.raises(ValueError, match=r"left must be torch\.float32, got torch\.float64"):
        native.csr_sddmm(p.crow, p.col, dy_t.double(), x_t)
    with pytest.raises(ValueError, match=r"right_t must be torch\.float32, got torch\.float64"):
        native.csr_sddmm(p.crow, p.col, dy_t, x_t.double())
    with pytest.raises(ValueError, match=r"col must be torch\.int32, got torch\.int64"):
        native.csr_sddmm(p.crow, p.col.long(), dy_t, x_t)
    with pytest.raises(ValueError, match="src must be a contiguous CPU tensor"):
        native.csr_matmul(p.crow, p.col, values, x_t.t().contiguous().t())


def test_errors_shapes(small) -> None:
    p, values, bias, x_t, dy_t = small
    with pytest.raises(ValueError, match=r"bias has 12 entries for 13 rows"):
        native.csr_matmul(p.crow, p.col, values, x_t, bias=bias[:-1].contiguous())
    with pytest.raises(ValueError, match="values for a pattern of"):
        native.csr_matmul(p.crow, p.col, values[:-1].contiguous(), x_t)
    with pytest.raises(ValueError, match=f"perm has {p.nnz - 1} entries for a pattern of {p.nnz}"):
        native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=p.transpose_perm[:-1].contiguous())
    with pytest.raises(ValueError, match=r"disagree on B"):
        native.csr_sddmm(p.crow, p.col, dy_t, x_t[:, :-1].contiguous())
    with pytest.raises(ValueError, match=r"crow has 14 entries for a matrix of 12 rows"):
        native.csr_sddmm(p.crow, p.col, dy_t[:-1].contiguous(), x_t)
    with pytest.raises(ValueError, match=r"src must have 2 dimensions"):
        native.csr_matmul(p.crow, p.col, values, x_t.reshape(-1))


def test_errors_index_out_of_range(small) -> None:
    p, values, bias, x_t, dy_t = small
    col = p.col.clone()
    col[-1] = x_t.shape[0]  # one past the last column
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, 29\)"):
        native.csr_matmul(p.crow, col, values, x_t)
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, 29\)"):
        native.csr_sddmm(p.crow, col, dy_t, x_t)
    col[0] = -1
    with pytest.raises(ValueError, match=r"CSR column index has an index outside"):
        native.csr_sddmm(p.crow, col, dy_t, x_t)
    # src with fewer rows than W has columns: the (valid) pattern's columns now point outside src
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, 28\)"):
        native.csr_matmul(p.crow, p.col, values, x_t[:-1].contiguous())
    t_col = p.t_col.clone()
    t_col[0] = 13  # W^T's columns are W's 13 rows
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, 13\)"):
        native.csr_matmul(p.t_crow, t_col, values, dy_t, perm=p.transpose_perm)
    perm = p.transpose_perm.clone()
    perm[3] = p.nnz
    with pytest.raises(ValueError, match=rf"perm has an index outside \[0, {p.nnz}\)"):
        native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=perm)
    # a perm that was valid for the full values is out of range for a shorter values tensor
    with pytest.raises(ValueError, match=r"perm has an index outside"):
        native.csr_matmul(p.t_crow, p.t_col, values[:-1].contiguous(), dy_t, perm=p.transpose_perm)


def test_index_check_cache_sees_in_place_changes(small) -> None:
    """Index checks are cached per tensor: an in-place edit after a successful call must be re-checked."""
    p, values, bias, x_t, dy_t = small
    col = p.col.clone()
    native.csr_matmul(p.crow, col, values, x_t)  # checked and cached
    col[2] = 1000
    with pytest.raises(ValueError, match=r"CSR column index has an index outside"):
        native.csr_matmul(p.crow, col, values, x_t)
    perm = p.transpose_perm.clone()
    native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=perm)
    perm[0] = -5
    with pytest.raises(ValueError, match=r"perm has an index outside"):
        native.csr_matmul(p.t_crow, p.t_col, values, dy_t, perm=perm)
    crow = p.crow.clone()
    native.csr_sddmm(crow, p.col, dy_t, x_t)
    crow[1] = int(crow[2]) + 1  # decreasing at row 1, endpoints unchanged
    with pytest.raises(ValueError, match="never decrease"):
        native.csr_sddmm(crow, p.col, dy_t, x_t)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("t_row_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("batch", (7, 32, 45))
@pytest.mark.parametrize("kind", MASKS)
def test_linear_backward_in_one_call_equals_the_two_kernels_exactly(kind, batch, t_row_dtype, threads) -> None:
    """csr_linear_backward (one OpenMP region) gives bit for bit what csr_matmul (W^T through the permutation)
    and csr_sddmm give, with and without the input and bias gradients."""
    rows, cols = SHAPES[1]
    g = torch.Generator().manual_seed(11)
    pattern = CsrPattern.from_mask(_mask(kind, rows, cols, g))
    values = torch.randn(pattern.nnz, generator=g)
    dy_t, x_t = torch.randn(rows, batch, generator=g), torch.randn(cols, batch, generator=g)
    t_row = pattern.t_col.to(t_row_dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gx_ref = native.csr_matmul(pattern.t_crow, t_row, values, dy_t, perm=pattern.transpose_perm)
        gv_ref, gb_ref = native.csr_sddmm(pattern.crow, pattern.col, dy_t, x_t, with_bias=True)
        args = (pattern.crow, pattern.col, pattern.t_crow, t_row, pattern.transpose_perm, values, dy_t, x_t)
        gx, gv, gb = native.csr_linear_backward(*args)
        no_gx, gv_only, no_gb = native.csr_linear_backward(*args, input_grad=False, with_bias=False)
    finally:
        torch.set_num_threads(before)
    assert gx is not None and gb is not None and gb_ref is not None
    assert torch.equal(gx, gx_ref) and torch.equal(gv, gv_ref) and torch.equal(gb, gb_ref)
    assert no_gx is None and no_gb is None and torch.equal(gv_only, gv_ref)


def test_linear_backward_refuses_mismatched_patterns() -> None:
    g = torch.Generator().manual_seed(2)
    pattern = CsrPattern.from_mask(_mask("0.3", 13, 29, g))
    other = CsrPattern.from_mask(_mask("0.05", 13, 29, g))
    values = torch.randn(pattern.nnz, generator=g)
    dy_t, x_t = torch.randn(13, 8, generator=g), torch.randn(29, 8, generator=g)
    with pytest.raises(ValueError, match="disagree"):
        native.csr_linear_backward(pattern.crow, pattern.col, other.t_crow, other.t_col, other.transpose_perm,
                                   values, dy_t, x_t)
    with pytest.raises(ValueError, match="disagree on B"):
        native.csr_linear_backward(pattern.crow, pattern.col, pattern.t_crow, pattern.t_col, pattern.transpose_perm,
                                   values, dy_t, x_t[:, :7].contiguous())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("momentum", "weight_decay", "prox_mu", "first"),
                         [(0.9, 0.0, 0.0, True), (0.9, 1e-3, 0.0, False), (0.0, 1e-3, 0.0, False),
                          (0.5, 0.0, 0.01, False)])
@pytest.mark.parametrize("batch", (7, 32))
@pytest.mark.parametrize("col_dtype", [torch.int32, torch.int16])
def test_linear_backward_with_fused_sgd_equals_backward_then_sgd_step(batch, momentum, weight_decay, prox_mu, first,
                                                                       threads, col_dtype) -> None:
    """csr_linear_backward_sgd_ (one pass over W's CSR, no W^T) returns the input and bias gradients of
    csr_linear_backward (from the values before the step: on one thread the same sums, on two to float rounding, and
    both equal to the dense product) and leaves values and buffer as sgd_step_ leaves them with csr_linear_backward's
    weight gradient."""
    rows, cols = SHAPES[1]
    g = torch.Generator().manual_seed(5)
    pattern = CsrPattern.from_mask(_mask("0.3", rows, cols, g))
    values, buffer = torch.randn(pattern.nnz, generator=g), torch.randn(pattern.nnz, generator=g)
    anchor = torch.randn(pattern.nnz, generator=g) if prox_mu else None
    dy_t, x_t = torch.randn(rows, batch, generator=g), torch.randn(cols, batch, generator=g)
    dense_gx = pattern.scatter(values).t() @ dy_t  # the oracle: W^T dy^T with the values before the step
    col = pattern.col.to(col_dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gx_ref, gv_ref, gb_ref = native.csr_linear_backward(pattern.crow, pattern.col, pattern.t_crow, pattern.t_col,
                                                            pattern.transpose_perm, values, dy_t, x_t)
        values_ref, buffer_ref = values.clone(), buffer.clone()
        native.sgd_step_(values_ref, gv_ref, buffer_ref, 0.05, momentum, weight_decay, None, anchor, prox_mu, first)
        gx, gb = native.csr_linear_backward_sgd_(pattern.crow, col, values, dy_t, x_t, buffer, 0.05, momentum,
                                                 weight_decay, anchor, prox_mu, first)
        no_values = values_ref.clone()
        no_gx, no_gb = native.csr_linear_backward_sgd_(pattern.crow, col, no_values, dy_t, x_t, buffer.clone(), 0.05,
                                                       momentum, weight_decay, anchor, prox_mu, first,
                                                       input_grad=False, with_bias=False)
    finally:
        torch.set_num_threads(before)
    assert gx is not None and gb is not None and gb_ref is not None and no_gx is None and no_gb is None
    assert torch.equal(gb, gb_ref)
    if threads == 1:
        assert torch.equal(gx, gx_ref)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, dense_gx, rtol=1e-4, atol=1e-4)
    assert not torch.equal(values, values_ref.add(1.0))  # the step happened in place (values moved)
    torch.testing.assert_close(values, values_ref, rtol=1e-6, atol=1e-6)  # the SDDMM's sums, sgd_step_'s formula
    if momentum:
        torch.testing.assert_close(buffer, buffer_ref, rtol=1e-6, atol=1e-6)
    assert not torch.equal(no_values, values_ref)  # without the input gradient the step still runs


def test_linear_backward_with_fused_sgd_is_deterministic_per_thread_count() -> None:
    """The two threads' partial input gradients are added in a fixed order: the same bits on every call."""
    g = torch.Generator().manual_seed(8)
    pattern = CsrPattern.from_mask(_mask("0.3", 64, 300, g))
    values = torch.randn(pattern.nnz, generator=g)
    dy_t, x_t = torch.randn(64, 32, generator=g), torch.randn(300, 32, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [native.csr_linear_backward_sgd_(pattern.crow, pattern.col, values.clone(), dy_t, x_t, None, 0.1)[0]
                for _ in range(5)]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_linear_backward_with_fused_sgd_refuses_bad_buffers() -> None:
    g = torch.Generator().manual_seed(2)
    pattern = CsrPattern.from_mask(_mask("0.3", 13, 29, g))
    values = torch.randn(pattern.nnz, generator=g)
    dy_t, x_t = torch.randn(13, 4, generator=g), torch.randn(29, 4, generator=g)
    args = (pattern.crow, pattern.col, values, dy_t, x_t)
    with pytest.raises(ValueError, match="momentum needs a buffer"):
        native.csr_linear_backward_sgd_(*args, None, 0.1, 0.9)
    with pytest.raises(ValueError, match="buffer has"):
        native.csr_linear_backward_sgd_(*args, torch.zeros(pattern.nnz + 1), 0.1, 0.9)
    with pytest.raises(ValueError, match="anchor has"):
        native.csr_linear_backward_sgd_(*args, torch.zeros(pattern.nnz), 0.1, 0.9, anchor=torch.zeros(3), prox_mu=0.1)


@pytest.mark.parametrize("batch", [32, 13])
def test_linear_backward_with_fused_sgd_input_gradient_is_the_same_on_any_thread_count(batch) -> None:
    """Each thread owns a range of dx^T's rows, each summed over W's rows in row order: on 1, 2 and 3 threads the
    same bits as csr_matmul on W^T (one sum per element), and equal to the dense product W^T dy^T (the oracle). A
    layer wide enough to take several of the kernel's column tiles on one thread (1 MB of x^T + dx^T rows: 4096
    columns at batch 32, 10082 at 13)."""
    g = torch.Generator().manual_seed(11)
    rows, cols = 70, 9000 if batch == 32 else 12000
    pattern = CsrPattern.from_mask(_mask("0.3", rows, cols, g))
    values = torch.randn(pattern.nnz, generator=g)
    dy_t, x_t = torch.randn(rows, batch, generator=g), torch.randn(cols, batch, generator=g)
    dense_gx = pattern.scatter(values).t() @ dy_t
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        matmul_gx = native.csr_matmul(pattern.t_crow, pattern.t_col_int32, values, dy_t, perm=pattern.transpose_perm)
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(native.csr_linear_backward_sgd_(pattern.crow, pattern.col_narrow, values.clone(), dy_t, x_t,
                                                        None, 0.1)[0])
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(matmul_gx, dense_gx, rtol=1e-4, atol=1e-4)
    for gx in runs:
        assert gx is not None and torch.equal(gx, matmul_gx)
