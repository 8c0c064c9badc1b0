"""Sparse layer kernels: a weight stored as CSR values, trained through custom autograd Functions.

A sparse layer keeps only its active weights: ``values`` of shape ``(nnz,)`` in row-major (CSR)
order of the 2-D weight matrix ``(out, fan_in)`` (a convolution's ``(out, in*kh*kw)``), plus a
``CsrPattern`` that holds the indices once per mask. Per step:

* forward            ``y^T = W @ x^T``                  CSR x dense   (``torch.sparse.mm``)
* grad w.r.t. input  ``dx^T = W^T @ dy^T``              CSR x dense   (transposed pattern, values gathered)
* grad w.r.t. weight ``dW[r, c] = dy^T[r] . x^T[c]``     at the nnz positions only (SDDMM,
  ``torch.sparse.sampled_addmm``), returned as a ``(nnz,)`` gradient of ``values``.

The convolution runs the native direct sparse kernels (``feddst_core.native``: one vectorised axpy
per active weight, FLOPs proportional to the number of active weights) when they are built; without
them it lowers to the same CSR GEMM by im2col (``F.unfold``) and folds the input gradient back
(``F.fold``), which is correct but slower than dense. No dense weight, dense weight gradient or dense
momentum exists for a sparse layer.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from feddst_core import native

# torch marks CSR as beta and warns once per process; the kernels below only use its stable core.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _index_dtype(numel: int) -> torch.dtype:
    """int32 indices when every index fits (halves the index memory; MKL's CSR GEMM then needs no
    int64 -> int32 copy per call), int64 otherwise."""
    return torch.int32 if numel < 2**31 else torch.int64


@dataclass(frozen=True)
class CsrPattern:
    """Indices of one layer's active weights, in both CSR (W) and transposed CSR (W^T) order.

    Values are ordered row-major (CSR order). ``transpose_perm`` maps CSR order to W^T's CSR order:
    ``values_t = values[transpose_perm]``. Index tensors are int32 (int64 only for weights with
    >= 2^31 entries; ``t_col`` int16 when W has < 2^15 rows, widened block by block when used): per
    sparse layer the pattern holds 3 x nnz indices (col, t_col, perm), 10-12 bytes per active weight.
    The flat positions (``flat_index``) are derived on demand, not stored.
    """

    shape: tuple[int, int]  # (rows, cols) of the 2-D weight matrix
    weight_shape: tuple[int, ...]  # the parameter's own shape (e.g. (out, in, kh, kw))
    crow: torch.Tensor  # (rows + 1,) int32
    col: torch.Tensor  # (nnz,) int32
    t_crow: torch.Tensor  # (cols + 1,) int32
    t_col: torch.Tensor  # (nnz,) row index of each entry in W^T order; int16 if rows < 2^15, else int32
    transpose_perm: torch.Tensor  # (nnz,) int32
    # W^T's rows in blocks of <= ~TRANSPOSE_BLOCK_NNZ entries: (row0, row1, start, end, rebased crow)
    t_blocks: tuple[tuple[int, int, int, int, torch.Tensor], ...] = ()

    @property
    def nnz(self) -> int:
        return int(self.col.shape[0])

    @functools.cached_property
    def t_col_int32(self) -> torch.Tensor:
        """``t_col`` as int32 (what the native convolution takes), built once per pattern."""
        return self.t_col.to(torch.int32)

    @functools.cached_property
    def col_narrow(self) -> torch.Tensor:
        """``col`` as int16 when every column fits (< 2^15: fc1's 5120), else ``col`` itself: what the native
        linear kernels read (half the index bytes per pass). Built once per pattern."""
        return self.col.to(torch.int16) if self.shape[1] < 2**15 else self.col

    @staticmethod
    def from_mask(mask: torch.Tensor) -> CsrPattern:
        """Pattern of a bool mask of any weight shape; dim 0 is the output dimension."""
        assert mask.dtype == torch.bool and mask.dim() >= 2, "mask must be a bool weight mask"
        rows_n = mask.shape[0]
        mask_2d = mask.reshape(rows_n, -1)
        cols_n = mask_2d.shape[1]
        idx = _index_dtype(rows_n * cols_n)
        flat_index = mask_2d.reshape(-1).nonzero().squeeze(1)  # ascending == row-major, int64
        rows = torch.div(flat_index, cols_n, rounding_mode="floor")
        col = flat_index - rows * cols_n
        del flat_index
        crow = torch.zeros(rows_n + 1, dtype=idx)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=rows_n), 0)
        transpose_perm = torch.argsort(col * rows_n + rows)  # keys unique: order is exact
        t_crow = torch.zeros(cols_n + 1, dtype=idx)
        t_crow[1:] = torch.cumsum(torch.bincount(col, minlength=cols_n), 0)
        t_col = rows[transpose_perm].to(torch.int16 if rows_n < 2**15 else idx)  # widened per block
        return CsrPattern((rows_n, cols_n), tuple(mask.shape), crow, col.to(idx), t_crow, t_col,
                          transpose_perm.to(idx), _row_blocks(t_crow))

    @property
    def flat_index(self) -> torch.Tensor:
        """(nnz,) int64 position of each value in the weight's ``reshape(-1)`` (built on demand)."""
        counts = (self.crow[1:] - self.crow[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), counts)
        return rows * self.shape[1] + self.col.long()

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """W as a CSR tensor (rows, cols) sharing ``values`` (nnz,)."""
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        """W^T as a CSR tensor (cols, rows); gathers the values into transposed order."""
        return torch.sparse_csr_tensor(self.t_crow, self.t_col.to(self.col.dtype),
                                       values.index_select(0, self.transpose_perm),
                                       (self.shape[1], self.shape[0]), check_invariants=False)

    def gather(self, dense_weight: torch.Tensor) -> torch.Tensor:
        """Active entries of a dense weight of ``weight_shape`` -> (nnz,) in CSR order."""
        return dense_weight.reshape(-1)[self.flat_index].clone()

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Dense weight of ``weight_shape``: ``values`` at the active positions, exact zeros elsewhere."""
        dense = torch.zeros(self.shape[0] * self.shape[1], dtype=values.dtype)
        dense[self.flat_index] = values
        return dense.reshape(self.weight_shape)

    def mask(self) -> torch.Tensor:
        """The bool mask this pattern was built from."""
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool)
        flat[self.flat_index] = True
        return flat.reshape(self.weight_shape)


TRANSPOSE_BLOCK_NNZ = 65_536  # W^T values gathered per block in the input gradient (256 KiB float32)


def _row_blocks(crow: torch.Tensor) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """Split a CSR matrix's rows into consecutive blocks of about ``TRANSPOSE_BLOCK_NNZ`` entries."""
    nnz, n_rows = int(crow[-1]), crow.shape[0] - 1
    n_blocks = max(1, -(-nnz // TRANSPOSE_BLOCK_NNZ))
    targets = torch.arange(1, n_blocks, dtype=torch.long) * (nnz // n_blocks)
    cuts = [0, *torch.searchsorted(crow.long(), targets).tolist(), n_rows]
    blocks = []
    for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True):
        if r1 > r0:
            start, end = int(crow[r0]), int(crow[r1])
            blocks.append((r0, r1, start, end, crow[r0:r1 + 1] - crow[r0]))
    return tuple(blocks)


def _spmm(pattern: CsrPattern, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """W @ dense: (rows, cols) CSR x (cols, N) -> (rows, N)."""
    return torch.sparse.mm(pattern.matrix(values), dense)


def _spmm_t(pattern: CsrPattern, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """W^T @ dense: (cols, rows) CSR x (rows, N) -> (cols, N).

    Row block by row block of W^T (``pattern.t_blocks``): each block's values are gathered into a
    small reused buffer and multiplied straight into its rows of the output (``addmm(out=, beta=0)``:
    the same kernel and per-row result as ``sparse.mm``, without a zero-filled output), so no
    (nnz,) transposed copy of the values and no full-size temporary of the kernel exist at once.
    """
    rows_n, cols_n = pattern.shape
    out = torch.empty(cols_n, dense.shape[1], dtype=dense.dtype)
    blocks = pattern.t_blocks or ((0, cols_n, 0, pattern.nnz, pattern.t_crow),)
    buffer = torch.empty(max(end - start for _, _, start, end, _ in blocks), dtype=values.dtype)
    for r0, r1, start, end, crow in blocks:
        block_values = torch.index_select(values, 0, pattern.transpose_perm[start:end], out=buffer[:end - start])
        block = torch.sparse_csr_tensor(crow, pattern.t_col[start:end].to(crow.dtype), block_values, (r1 - r0, rows_n),
                                        check_invariants=False)
        rows = out[r0:r1]
        torch.addmm(rows, block, dense, beta=0.0, out=rows)
    return out


def _sddmm(pattern: CsrPattern, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(left @ right) at the pattern's positions: left (rows, N), right (N, cols) -> (nnz,) values.

    Computed in place (``out=``) in a CSR tensor that shares the pattern's int32 indices and owns a
    fresh zeroed (nnz,) values buffer, which is returned: the only allocation per call (without
    ``out=``, ``sampled_addmm`` allocates int64 copies of the indices on every call). The input is
    that same zeroed tensor: ``beta=0`` does not mask NaN/inf in the input's values, zeros are exact.
    """
    out = pattern.matrix(torch.zeros(pattern.nnz, dtype=left.dtype))
    torch.sparse.sampled_addmm(out, left, right, beta=0.0, out=out)
    return out.values()


@dataclass(frozen=True)
class _LinearBackend:
    """The three products of a CSR linear layer, on transposed activations (features, B)."""

    forward: Callable[[CsrPattern, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # -> y^T = b + W x^T
    input_grad: Callable[[CsrPattern, torch.Tensor, torch.Tensor], torch.Tensor]  # -> dx^T = W^T dy^T
    # -> (dL/dvalues (nnz,) at the mask, dL/dbias (out,) or None)
    weight_grad: Callable[[CsrPattern, torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]
    # Both at once (pattern, values, dy^T, x^T, input_grad, with_bias) -> (dx^T or None, dvalues, dbias or None);
    # None: input_grad then weight_grad.
    backward: Callable[[CsrPattern, torch.Tensor, torch.Tensor, torch.Tensor, bool, bool],
                       tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]] | None = None


def _torch_weight_grad(pattern: CsrPattern, grad_out_t: torch.Tensor, x_t: torch.Tensor,
                       with_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    return _sddmm(pattern, grad_out_t, x_t.t()), grad_out_t.sum(1) if with_bias else None


# torch.sparse (MKL CSR GEMM, sampled_addmm): the fallback without the native library.
_TORCH_LINEAR = _LinearBackend(
    forward=lambda p, values, bias, x_t: torch.addmm(bias.unsqueeze(1), p.matrix(values), x_t),
    input_grad=lambda p, values, grad_out_t: _spmm_t(p, values, grad_out_t),
    weight_grad=_torch_weight_grad,
)
# Native: row-parallel CSR x dense products (W^T read through the stored permutation: no transposed
# copy of the values) and an SDDMM fused with the bias gradient.
_NATIVE_LINEAR = _LinearBackend(
    forward=lambda p, values, bias, x_t: native.csr_matmul(p.crow, p.col_narrow, values, x_t, bias=bias),
    input_grad=lambda p, values, grad_out_t: native.csr_matmul(p.t_crow, p.t_col, values, grad_out_t,
                                                               perm=p.transpose_perm),
    weight_grad=lambda p, grad_out_t, x_t, with_bias: native.csr_sddmm(p.crow, p.col, grad_out_t, x_t, with_bias),
    # one native call and one OpenMP region for the whole backward
    backward=lambda p, values, grad_out_t, x_t, input_grad, with_bias: native.csr_linear_backward(
        p.crow, p.col, p.t_crow, p.t_col, p.transpose_perm, values, grad_out_t, x_t, input_grad, with_bias),
)


def _linear_forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, pattern: CsrPattern,
                    backend: _LinearBackend) -> torch.Tensor:
    assert x.dim() == 2 and x.shape[1] == pattern.shape[1], "x must be (B, in_features)"
    assert values.shape == (pattern.nnz,)
    x_t = x.t().contiguous()  # (in, B): a no-op copy when x comes from forward_mixed's Flatten
    y_t = backend.forward(pattern, values.detach(), bias.detach(), x_t)  # (out, B)
    ctx.pattern, ctx.backend = pattern, backend
    ctx.save_for_backward(x_t, values)
    return y_t.t()  # (B, out)


def _linear_backward(ctx, grad_out: torch.Tensor):
    x_t, values = ctx.saved_tensors
    pattern: CsrPattern = ctx.pattern
    backend: _LinearBackend = ctx.backend
    grad_out_t = grad_out.t().contiguous()  # (out, B)
    grad_x = grad_values = grad_bias = None
    if backend.backward is not None and ctx.needs_input_grad[1]:
        grad_x_t, grad_values, grad_bias = backend.backward(pattern, values.detach(), grad_out_t, x_t,
                                                            ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return None if grad_x_t is None else grad_x_t.t(), grad_values, grad_bias, None
    if ctx.needs_input_grad[0]:
        grad_x = backend.input_grad(pattern, values.detach(), grad_out_t).t()  # (B, in)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        grad_values, grad_bias = backend.weight_grad(pattern, grad_out_t, x_t, ctx.needs_input_grad[2])
        grad_values = grad_values if ctx.needs_input_grad[1] else None
    return grad_x, grad_values, grad_bias, None


@dataclass
class FusedSgd:
    """An SGD step run inside a native sparse linear layer's backward: the layer's values are updated in place as
    ``native.sgd_step_(values, grad, buffer, lr, momentum, weight_decay, None, anchor, prox_mu, first)`` would with
    their gradient, which is never written (autograd gets None for the values). buffer: (nnz,) momentum, required
    when momentum != 0; first: the buffer starts as the gradient; anchor: (nnz,) FedProx's, or None."""

    lr: float
    momentum: float
    weight_decay: float
    buffer: torch.Tensor | None
    first: bool
    anchor: torch.Tensor | None = None
    prox_mu: float = 0.0


class NativeSparseLinearFunction(torch.autograd.Function):
    """y = x @ W^T + b with W as CSR values, native kernels.  x (B, in), values (nnz,), bias (out,) -> (B, out).
    sgd: the values' SGD step, fused into the backward (see ``FusedSgd``), or None."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                pattern: CsrPattern, sgd: FusedSgd | None = None) -> torch.Tensor:
        ctx.sgd = sgd
        return _linear_forward(ctx, x, values, bias, pattern, _NATIVE_LINEAR)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        sgd: FusedSgd | None = ctx.sgd
        if sgd is None or not ctx.needs_input_grad[1]:
            return *_linear_backward(ctx, grad_out), None
        x_t, values = ctx.saved_tensors
        p: CsrPattern = ctx.pattern
        grad_x_t, grad_bias = native.csr_linear_backward_sgd_(
            p.crow, p.col_narrow, values.detach(), grad_out.t().contiguous(), x_t,
            sgd.buffer, sgd.lr, sgd.momentum, sgd.weight_decay, sgd.anchor, sgd.prox_mu, sgd.first,
            ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return None if grad_x_t is None else grad_x_t.t(), None, grad_bias, None, None


class SparseLinearFunction(torch.autograd.Function):
    """y = x @ W^T + b with W as CSR values, torch.sparse kernels (the fallback); same contract."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                pattern: CsrPattern) -> torch.Tensor:
        return _linear_forward(ctx, x, values, bias, pattern, _TORCH_LINEAR)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return _linear_backward(ctx, grad_out)


def sparse_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                  pattern: CsrPattern, use_native: bool | None = None, sgd: FusedSgd | None = None) -> torch.Tensor:
    """x (B, in) -> (B, out) through a CSR weight; differentiable w.r.t. x, values and bias.

    use_native: None = the native kernels when built, else torch.sparse; True / False force one.
    sgd: the values' SGD step run by the backward instead of returning their gradient (native kernels only;
    ``ValueError`` otherwise).
    """
    if use_native is None:
        use_native = native.available() and x.dtype == torch.float32 and pattern.col.dtype == torch.int32
    if use_native:
        return NativeSparseLinearFunction.apply(x, values, bias, pattern, sgd)
    if sgd is not None:
        raise ValueError("a fused SGD step needs the native kernels (float32, int32 CSR indices)")
    return SparseLinearFunction.apply(x, values, bias, pattern)


class NativeSparseConv2dFunction(torch.autograd.Function):
    """Valid, stride-1 conv2d with a CSR weight (out, in*k*k), direct sparse native kernels.

    x (B, C, H, W) contiguous, values (nnz,), bias (out,) -> (B, out, H-k+1, W-k+1) contiguous.
    Saves x (for the weight gradient) and values; the input gradient is computed only when x needs it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                pattern: CsrPattern) -> torch.Tensor:
        out_c, in_c, kh, kw = pattern.weight_shape
        assert x.dim() == 4 and x.shape[1] == in_c and kh == kw, "x must be (B, in_channels, H, W); square kernels"
        x = x.contiguous()
        y = native.sparse_conv2d_forward(x, pattern.crow, pattern.col, values.detach(), bias.detach(), out_c, kh)
        ctx.pattern = pattern
        ctx.save_for_backward(x, values)
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, values = ctx.saved_tensors
        pattern: CsrPattern = ctx.pattern
        out_c, in_c, kh, _ = pattern.weight_shape
        grad_out = grad_out.contiguous()
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            t_values = values.detach().index_select(0, pattern.transpose_perm)  # (nnz,) in W^T order
            grad_x = native.sparse_conv2d_backward_input(grad_out, pattern.t_crow, pattern.t_col_int32,
                                                         t_values, in_c, (x.shape[2], x.shape[3]), kh)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_values, grad_bias = native.sparse_conv2d_backward_weight(x, grad_out, pattern.crow, pattern.col, kh,
                                                                          with_bias=ctx.needs_input_grad[2])
        return grad_x, grad_values, grad_bias, None


class NativeSparseConv2dPoolFunction(torch.autograd.Function):
    """Sparse conv2d (valid, stride 1) -> stride-1 max-pool (-> ReLU) as one autograd node, native kernels.

    x (B, C, H, W), values (nnz,), bias (out,) -> (B, out, Hp, Wp), Hp = H - k - pool_kernel + 2
    (stored batch-last when ``batch_last``: see ``native.sparse_conv2d_pool_forward``).
    Forward never writes the convolution's output (``native.sparse_conv2d_pool_forward``), nor does
    backward: one native call (``native.sparse_conv2d_pool_backward``) routes the gradient through the
    saved uint8 argmax and runs the sparse convolution's two gradients image by image; a batch-last
    gradient (what a Flatten of the batch-last output hands back) is read in place.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, pattern: CsrPattern,
                pool_kernel: int, relu: bool, batch_last: bool = False) -> torch.Tensor:
        out_c, in_c, kh, kw = pattern.weight_shape
        assert x.dim() == 4 and x.shape[1] == in_c and kh == kw, "x must be (B, in_channels, H, W); square kernels"
        x = x.contiguous()
        y, arg = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values.detach(), bias.detach(),
                                                   out_c, kh, pool_kernel, relu, batch_last)
        ctx.pattern, ctx.pool_kernel = pattern, pool_kernel
        ctx.save_for_backward(x, values, arg)
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, values, arg = ctx.saved_tensors
        pattern: CsrPattern = ctx.pattern
        kh = pattern.weight_shape[2]
        grad_out = grad_out if native.is_batch_last(grad_out) else grad_out.contiguous()
        grad_x, grad_values, grad_bias = native.sparse_conv2d_pool_backward(
            x, grad_out, arg, pattern.crow, pattern.col, values.detach(), pattern.t_crow,
            pattern.t_col_int32, pattern.transpose_perm, kh, ctx.pool_kernel, input_grad=ctx.needs_input_grad[0],
            with_bias=ctx.needs_input_grad[2], trusted_arg=True)
        return grad_x, grad_values if ctx.needs_input_grad[1] else None, grad_bias, None, None, None, None


class SparseConv2dFunction(torch.autograd.Function):
    """Valid, stride-1 conv2d with a CSR weight (out, in*k*k) through im2col (the torch-only fallback).

    x (B, C, H, W), values (nnz,), bias (out,) -> (B, out, H-k+1, W-k+1).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                pattern: CsrPattern) -> torch.Tensor:
        out_c, in_c, kh, kw = pattern.weight_shape
        b, c, h, w = x.shape
        assert c == in_c and kh == kw, "x must be (B, in_channels, H, W); square kernels only"
        oh, ow = h - kh + 1, w - kw + 1
        cols = F.unfold(x, kh)  # (B, C*k*k, L)
        cols_2d = cols.transpose(0, 1).reshape(c * kh * kw, b * oh * ow)  # (C*k*k, B*L)
        y_2d = _spmm(pattern, values, cols_2d)  # (out, B*L)
        y_2d.add_(bias.unsqueeze(1))
        ctx.pattern = pattern
        ctx.input_hw = (h, w)
        ctx.save_for_backward(cols_2d, values)
        return y_2d.view(out_c, b, oh, ow).transpose(0, 1)  # (B, out, OH, OW) view

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        cols_2d, values = ctx.saved_tensors
        pattern: CsrPattern = ctx.pattern
        out_c, in_c, kh, kw = pattern.weight_shape
        b, _, oh, ow = grad_out.shape
        grad_2d = grad_out.transpose(0, 1).reshape(out_c, b * oh * ow)  # (out, B*L)
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_cols = _spmm_t(pattern, values, grad_2d)  # (C*k*k, B*L)
            grad_cols = grad_cols.view(in_c * kh * kw, b, oh * ow).transpose(0, 1)  # (B, C*k*k, L)
            grad_x = F.fold(grad_cols, ctx.input_hw, kh)  # (B, C, H, W)
        if ctx.needs_input_grad[1]:
            grad_values = _sddmm(pattern, grad_2d, cols_2d.t())  # (nnz,)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(1)  # (out,)
        return grad_x, grad_values, grad_bias, None


def sparse_conv2d(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                  pattern: CsrPattern, use_native: bool | None = None) -> torch.Tensor:
    """x (B, C, H, W) -> (B, out, H-k+1, W-k+1) through a CSR weight; differentiable in all three.

    use_native: None = the native direct kernels when built (``feddst_core.native.available()``),
    else im2col; True / False force one (True raises if the library is missing).
    """
    if use_native is None:
        use_native = native.available() and x.dtype == torch.float32
    if use_native:
        return NativeSparseConv2dFunction.apply(x, values, bias, pattern)
    return SparseConv2dFunction.apply(x, values, bias, pattern)


def sparse_conv2d_pool(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, pattern: CsrPattern,
                       pool_kernel: int, pool_stride: int, relu: bool, use_native: bool | None = None,
                       batch_last: bool = False) -> torch.Tensor:
    """``max_pool2d(sparse_conv2d(x, ...), pool_kernel, pool_stride, relu)``, fused into one pass when the
    native kernels are built and the pool has stride 1 (the paper CNNs); composed otherwise (same values).

    x (B, C, H, W) -> (B, out, (H-k+1-pool_kernel)//pool_stride + 1, likewise W). batch_last: the fused
    pass stores the output batch-last (for a Flatten to ``(features, B)`` without a copy); the same values
    either way, and the composed path ignores it.
    """
    if use_native is None:
        use_native = native.available() and x.dtype == torch.float32
    if use_native and pool_stride == 1 and pool_kernel <= 15:
        return NativeSparseConv2dPoolFunction.apply(x, values, bias, pattern, pool_kernel, relu, batch_last)
    from feddst_core.pooling import max_pool2d

    return max_pool2d(sparse_conv2d(x, values, bias, pattern, use_native), pool_kernel, pool_stride, relu=relu)
