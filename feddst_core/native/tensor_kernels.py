"""The checked torch wrappers of the native CPU kernels (loaded by :mod:`feddst_core.native`).

Every wrapper raises ``RuntimeError`` when the library is unavailable (``native.status()`` says why),
checks dtypes (float32 data, int32 indices), contiguity and shapes and raises ``ValueError`` naming
the problem, so the C code never sees memory it does not own. Outputs are freshly allocated torch
tensors. Kernels run on torch's own OpenMP thread pool (``torch.get_num_threads()`` threads).
Callers reach these as ``feddst_core.native.NAME`` too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import torch

from feddst_core.native import _require

T = TypeVar("T")


def _ptr(t: torch.Tensor | None) -> int | None:
    """A pointer argument: the tensor's data address, or NULL for None (the C signatures in
    ``_SIGNATURES`` name the element types; the wrappers check the dtypes)."""
    return None if t is None else t.data_ptr()


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, dim: int | None = None) -> None:
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU tensor")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if t.numel() >= 2**31:
        raise ValueError(f"{name} has {t.numel()} elements; the native kernels index with 32-bit ints (< 2^31)")


# Validations already done, keyed by the ids of the tensors checked: (weakrefs to them, their _versions,
# the other arguments, the result). Patterns are built once per mask and reused for every step (a dozen
# kernel calls each), so their O(nnz) checks run once, not per call; an in-place change bumps a tensor's
# _version and forces a re-check.
_validated: dict[tuple[int, ...], tuple[tuple[weakref.ref, ...], tuple[int, ...], tuple, Any]] = {}


def _cached_check(tensors: tuple[torch.Tensor, ...], args: tuple, check: Callable[[], T]) -> T:
    """``check()``'s result, run only if these exact tensors (unmodified) were not checked with ``args``."""
    key = tuple(id(t) for t in tensors)
    hit = _validated.get(key)
    if (hit is not None and all(ref() is t for ref, t in zip(hit[0], tensors, strict=True))
            and hit[1] == tuple(t._version for t in tensors) and hit[2] == args):
        return cast(T, hit[3])
    result = check()
    if len(_validated) > 256:  # drop entries whose tensors are gone
        for k in [k for k, v in _validated.items() if any(ref() is None for ref in v[0])]:
            del _validated[k]
    _validated[key] = (tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors), args, result)
    return result


def _check_index(name: str, t: torch.Tensor, upper: int) -> None:
    """Every entry of the 1-D index tensor t in [0, upper) (O(n) the first time, O(1) on reuse)."""
    def check() -> None:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= upper):
            raise ValueError(f"{name} has an index outside [0, {upper})")
    _cached_check((t,), (upper,), check)


def _check_csr(crow: torch.Tensor, index: torch.Tensor, rows: int, cols: int) -> int:
    """A well-formed CSR pattern of a (rows, cols) matrix: crow int32 (rows + 1,) from 0, never decreasing;
    index (int32, or int16 where allowed by the caller) (nnz,) in [0, cols). Returns nnz.
    O(nnz) the first time a pattern is seen, O(1) for the same unmodified tensors afterwards."""
    def check() -> int:
        _check("crow", crow, torch.int32, 1)
        if index.dtype not in (torch.int32, torch.int16):
            raise ValueError(f"CSR column index must be int32 or int16, got {index.dtype}")
        _check("index", index, index.dtype, 1)
        if crow.shape[0] != rows + 1:
            raise ValueError(f"crow has {crow.shape[0]} entries for a matrix of {rows} rows (needs {rows + 1})")
        if int(crow[0]) != 0 or int(crow[-1]) != index.shape[0]:
            raise ValueError(f"crow must run from 0 to nnz = {index.shape[0]}, got {int(crow[0])}..{int(crow[-1])}")
        if rows and bool((crow[1:] < crow[:-1]).any()):
            raise ValueError("crow must never decrease")
        _check_index("CSR column index", index, cols)
        return index.shape[0]
    return _cached_check((crow, index), (rows, cols), check)


def _check_kernel(kernel: int) -> None:
    if not isinstance(kernel, int) or kernel < 1:
        raise ValueError(f"kernel must be an int >= 1, got {kernel!r}")


def _run(fn, *args) -> None:
    """Call a kernel; its outputs are fresh tensors, so on failure nothing the caller holds is half-written."""
    if fn(*args) != 0:
        raise MemoryError(f"{fn.__name__}: out of memory for its scratch buffers")


_KERNEL_THREADS: ContextVar[int | None] = ContextVar("feddst_native_kernel_threads", default=None)


@contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    """Inside this block the native kernels run n threads (>= 1) whatever ``torch.get_num_threads()`` says:
    a caller can run its tiny torch ops on one thread (``torch.set_num_threads(1)``) and keep the kernels
    on all of them."""
    token = _KERNEL_THREADS.set(max(1, int(n)))
    try:
        yield
    finally:
        _KERNEL_THREADS.reset(token)


def _threads() -> int:
    """The kernels' thread count: ``kernel_threads``'s inside one, else ``torch.get_num_threads()``."""
    n = _KERNEL_THREADS.get()
    return n if n is not None else max(1, torch.get_num_threads())


def sparse_conv2d_forward(x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                          bias: torch.Tensor, out_channels: int, kernel: int) -> torch.Tensor:
    """Valid stride-1 conv of x (B, C, H, W) with a CSR weight (O, C*k*k) -> (B, O, H-k+1, W-k+1)."""
    lib = _require()
    _check("x", x, torch.float32, 4)
    _check("bias", bias, torch.float32, 1)
    _check_kernel(kernel)
    b, c, h, w = x.shape
    if h < kernel or w < kernel or bias.shape[0] != out_channels:
        raise ValueError(f"input {tuple(x.shape)} smaller than kernel {kernel} or bias of the wrong size")
    _check("col", col, torch.int32, 1)
    _check("values", values, torch.float32, 1)
    if _check_csr(crow, col, out_channels, c * kernel * kernel) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values for a pattern of {col.shape[0]} entries")
    y = torch.empty(b, out_channels, h - kernel + 1, w - kernel + 1)
    _run(lib.feddst_sconv_forward, _ptr(x), b, c, h, w, _ptr(crow), _ptr(col), _ptr(values), _ptr(bias),
                             out_channels, kernel, _ptr(y), _threads())
    return y


def sparse_conv2d_pool_forward(x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                               bias: torch.Tensor, out_channels: int, kernel: int, pool_kernel: int,
                               relu: bool = False, batch_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid stride-1 sparse conv (as ``sparse_conv2d_forward``) then a stride-1 ``pool_kernel`` max-pool
    (then ReLU if ``relu``), without writing the convolution's output: x (B, C, H, W) ->
    (pooled (B, O, Hp, Wp), argmax uint8 (B, O, Hp, Wp) as ``max_pool2d_forward`` returns them),
    Hp = H - kernel - pool_kernel + 2 (likewise Wp).

    batch_last: the pooled tensor is stored batch-last, a ``(B, O, Hp, Wp)`` view of contiguous
    ``(O, Hp, Wp, B)`` memory (same values), so flattening it to ``(O*Hp*Wp, B)`` is free."""
    lib = _require()
    _check("x", x, torch.float32, 4)
    _check("bias", bias, torch.float32, 1)
    _check_kernel(kernel)
    b, c, h, w = x.shape
    if h < kernel or w < kernel or bias.shape[0] != out_channels:
        raise ValueError(f"input {tuple(x.shape)} smaller than kernel {kernel} or bias of the wrong size")
    if not 1 <= pool_kernel <= 15 or h - kernel + 1 < pool_kernel or w - kernel + 1 < pool_kernel:
        raise ValueError(f"pooling window {pool_kernel} must be in [1, 15] and fit the convolution's output")
    _check("col", col, torch.int32, 1)
    _check("values", values, torch.float32, 1)
    if _check_csr(crow, col, out_channels, c * kernel * kernel) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values for a pattern of {col.shape[0]} entries")
    hp, wp = h - kernel - pool_kernel + 2, w - kernel - pool_kernel + 2
    y = torch.empty(out_channels, hp, wp, b).permute(3, 0, 1, 2) if batch_last else torch.empty(b, out_channels, hp, wp)
    arg = torch.empty(b, out_channels, hp, wp, dtype=torch.uint8)
    _run(lib.feddst_sconv_pool_forward, _ptr(x), b, c, h, w, _ptr(crow), _ptr(col), _ptr(values), _ptr(bias),
         out_channels, kernel, pool_kernel, int(relu), int(batch_last), _ptr(y), _ptr(arg), _threads())
    return y, arg


def is_batch_last(t: torch.Tensor) -> bool:
    """True for a 4-D ``(B, O, H, W)`` tensor stored as contiguous ``(O, H, W, B)`` (and not also plain
    contiguous, as when B == 1): the layout ``sparse_conv2d_pool_forward(batch_last=True)`` returns."""
    return t.dim() == 4 and not t.is_contiguous() and t.permute(1, 2, 3, 0).is_contiguous()


def sparse_conv2d_pool_backward(x: torch.Tensor, grad_out: torch.Tensor, arg: torch.Tensor, crow: torch.Tensor,
                                col: torch.Tensor, values: torch.Tensor, t_crow: torch.Tensor, t_row: torch.Tensor,
                                perm: torch.Tensor, kernel: int, pool_kernel: int, input_grad: bool = True,
                                with_bias: bool = True, trusted_arg: bool = False,
                                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Backward of ``sparse_conv2d_pool_forward`` in one pass: (dL/dx (B, C, H, W) or None if not
    ``input_grad``, dL/dvalues (nnz,), dL/dbias (O,) or None) from the pooled gradient grad_out and its
    argmax arg (both (B, O, Hp, Wp)); the (B, O, Ho, Wo) convolution gradient is never materialised.

    The weight is W's CSR (crow, col, values) plus W^T's (t_crow, t_row int32, perm: entry -> position
    in values). The same sums as ``max_pool2d_backward`` then ``sparse_conv2d_backward_input`` and
    ``sparse_conv2d_backward_weight`` (dx and dbias bit for bit, dvalues to float rounding).
    grad_out is contiguous or batch-last (``is_batch_last``: read in place, no transposing copy).
    trusted_arg: arg is the forward's own output (its O(n) range check is skipped)."""
    lib = _require()
    _check("x", x, torch.float32, 4)
    batch_last = is_batch_last(grad_out)
    _check("grad_out", grad_out.permute(1, 2, 3, 0) if batch_last else grad_out, torch.float32, 4)
    _check("arg", arg, torch.uint8, 4)
    _check_kernel(kernel)
    _check_kernel(pool_kernel)
    b, c, h, w = x.shape
    o = grad_out.shape[1]
    if pool_kernel > 15 or grad_out.shape != (b, o, h - kernel - pool_kernel + 2, w - kernel - pool_kernel + 2):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} is not the pooled output of input {tuple(x.shape)}, "
                         f"kernel {kernel}, pooling window {pool_kernel} (<= 15)")
    if arg.shape != grad_out.shape:
        raise ValueError(f"argmax {tuple(arg.shape)} and grad_out {tuple(grad_out.shape)} differ")
    if not trusted_arg and arg.numel() and bool(((arg >= pool_kernel ** 2) & (arg != POOL_CLIPPED)).any()):
        raise ValueError(f"argmax offsets must be < pool_kernel ** 2 = {pool_kernel ** 2} (or {POOL_CLIPPED})")
    _check("col", col, torch.int32, 1)
    _check("values", values, torch.float32, 1)
    nnz = _check_csr(crow, col, o, c * kernel * kernel)
    if values.shape[0] != nnz:
        raise ValueError(f"{values.shape[0]} values for a pattern of {nnz} entries")
    _check("t_row", t_row, torch.int32, 1)
    _check("perm", perm, torch.int32, 1)
    if _check_csr(t_crow, t_row, c * kernel * kernel, o) != nnz or perm.shape[0] != nnz:
        raise ValueError(f"W^T's pattern ({t_row.shape[0]} entries, perm {perm.shape[0]}) is not W's ({nnz})")
    _check_index("perm", perm, nnz)
    gx = torch.empty(b, c, h, w) if input_grad else None
    grad_values = torch.empty(nnz)
    grad_bias = torch.empty(o) if with_bias else None
    _run(lib.feddst_sconv_pool_backward, _ptr(x), _ptr(grad_out), int(batch_last), _ptr(arg), b, c, h, w, o, kernel,
         pool_kernel,
         _ptr(crow), _ptr(col), _ptr(values), _ptr(t_crow), _ptr(t_row), _ptr(perm), _ptr(gx), _ptr(grad_values),
         _ptr(grad_bias), _threads())
    return gx, grad_values, grad_bias

def sparse_conv2d_backward_input(grad_out: torch.Tensor, t_crow: torch.Tensor, t_row: torch.Tensor,
                                 t_values: torch.Tensor, in_channels: int, input_hw: tuple[int, int],
                                 kernel: int) -> torch.Tensor:
    """dL/dx (B, C, H, W) from grad_out (B, O, Ho, Wo) and W^T's CSR (C*k*k rows, values in W^T order)."""
    lib = _require()
    _check("grad_out", grad_out, torch.float32, 4)
    _check_kernel(kernel)
    b, o, ho, wo = grad_out.shape
    h, w = input_hw
    if (ho, wo) != (h - kernel + 1, w - kernel + 1):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} does not match input {input_hw} and kernel {kernel}")
    _check("t_row", t_row, torch.int32, 1)
    _check("t_values", t_values, torch.float32, 1)
    if _check_csr(t_crow, t_row, in_channels * kernel * kernel, o) != t_values.shape[0]:
        raise ValueError(f"{t_values.shape[0]} values for a pattern of {t_row.shape[0]} entries")
    gx = torch.empty(b, in_channels, h, w)
    _run(lib.feddst_sconv_backward_input, _ptr(grad_out), b, o, _ptr(t_crow), _ptr(t_row), _ptr(t_values),
                                    in_channels, h, w, kernel, _ptr(gx), _threads())
    return gx


def sparse_conv2d_backward_weight(x: torch.Tensor, grad_out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor,
                                  kernel: int, with_bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dL/dvalues (nnz,), dL/dbias (O,) or None) at the CSR pattern's positions only."""
    lib = _require()
    _check("x", x, torch.float32, 4)
    _check("grad_out", grad_out, torch.float32, 4)
    _check_kernel(kernel)
    b, c, h, w = x.shape
    o = grad_out.shape[1]
    if grad_out.shape != (b, o, h - kernel + 1, w - kernel + 1):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} does not match input {tuple(x.shape)}, kernel {kernel}")
    _check("col", col, torch.int32, 1)
    _check_csr(crow, col, o, c * kernel * kernel)
    grad_values = torch.empty(col.shape[0])
    grad_bias = torch.empty(o) if with_bias else None
    _run(lib.feddst_sconv_backward_weight, _ptr(x), _ptr(grad_out), b, c, h, w, o, kernel, _ptr(crow),
                                     _ptr(col), _ptr(grad_values),
                                     _ptr(grad_bias), _threads())
    return grad_values, grad_bias


def csr_matmul(crow: torch.Tensor, index: torch.Tensor, values: torch.Tensor, src: torch.Tensor,
               bias: torch.Tensor | None = None, perm: torch.Tensor | None = None) -> torch.Tensor:
    """out (R, B) = [bias +] M @ src for a CSR matrix M (R, Cn) and a dense src (Cn, B).

    index: column of each entry, int32 or int16. values: (nnz,) in entry order, or in another order
    with ``perm`` (int32, entry -> position in values): how W^T is applied from W's values.
    """
    lib = _require()
    _check("src", src, torch.float32, 2)
    _check("values", values, torch.float32, 1)
    rows, (cols, b) = crow.shape[0] - 1, src.shape
    nnz = _check_csr(crow, index, rows, cols)
    if perm is None and values.shape[0] != nnz:
        raise ValueError(f"{values.shape[0]} values for a pattern of {nnz} entries")
    if perm is not None:
        _check("perm", perm, torch.int32, 1)
        if perm.shape[0] != nnz:
            raise ValueError(f"perm has {perm.shape[0]} entries for a pattern of {nnz}")
        _check_index("perm", perm, values.shape[0])
    if bias is not None:
        _check("bias", bias, torch.float32, 1)
        if bias.shape[0] != rows:
            raise ValueError(f"bias has {bias.shape[0]} entries for {rows} rows")
    out = torch.empty(rows, b)
    _run(lib.feddst_csr_matmul, _ptr(crow), _ptr(index) if index.dtype == torch.int32 else None,
                          _ptr(index) if index.dtype == torch.int16 else None, _ptr(values),
                          _ptr(perm),
                          _ptr(bias), rows, _ptr(src), b, _ptr(out), _threads())
    return out


def csr_sddmm(crow: torch.Tensor, col: torch.Tensor, left: torch.Tensor, right_t: torch.Tensor,
              with_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(left @ right_t^T) at the CSR pattern's positions -> ((nnz,), row sums of left (R,) or None).

    left (R, B) and right_t (Cn, B): for a linear layer dy^T and x^T, giving dL/dW at the mask.
    """
    lib = _require()
    _check("left", left, torch.float32, 2)
    _check("right_t", right_t, torch.float32, 2)
    rows, b = left.shape
    if right_t.shape[1] != b:
        raise ValueError(f"left {tuple(left.shape)} and right_t {tuple(right_t.shape)} disagree on B")
    _check("col", col, torch.int32, 1)
    _check_csr(crow, col, rows, right_t.shape[0])
    grad = torch.empty(col.shape[0])
    grad_bias = torch.empty(rows) if with_bias else None
    _run(lib.feddst_csr_sddmm, _ptr(crow), _ptr(col), rows, _ptr(left), _ptr(right_t), b, _ptr(grad),
                         _ptr(grad_bias), _threads())
    return grad, grad_bias


def _check_linear_operands(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, grad_out_t: torch.Tensor,
                           x_t: torch.Tensor) -> tuple[int, int, int, int]:
    """W's CSR (col int32 or int16), its values and dy^T, x^T of a CSR linear backward, checked: (rows R, columns Cn,
    batch B, nnz)."""
    _check("grad_out_t", grad_out_t, torch.float32, 2)
    _check("x_t", x_t, torch.float32, 2)
    _check("values", values, torch.float32, 1)
    (rows, b), cols = grad_out_t.shape, x_t.shape[0]
    if x_t.shape[1] != b:
        raise ValueError(f"grad_out_t {tuple(grad_out_t.shape)} and x_t {tuple(x_t.shape)} disagree on B")
    return rows, cols, b, _check_csr(crow, col, rows, cols)


def _check_linear_backward(crow: torch.Tensor, col: torch.Tensor, t_crow: torch.Tensor, t_row: torch.Tensor,
                           perm: torch.Tensor, values: torch.Tensor, grad_out_t: torch.Tensor,
                           x_t: torch.Tensor) -> tuple[int, int, int, int]:
    """The arguments of the CSR linear backward kernels, checked: (rows R, columns Cn, batch B, nnz)."""
    _check("col", col, torch.int32, 1)
    _check("perm", perm, torch.int32, 1)
    rows, cols, b, nnz = _check_linear_operands(crow, col, values, grad_out_t, x_t)
    if _check_csr(t_crow, t_row, cols, rows) != nnz or values.shape[0] != nnz or perm.shape[0] != nnz:
        raise ValueError(f"W ({nnz} entries), W^T ({t_row.shape[0]}), values ({values.shape[0]}) and perm "
                         f"({perm.shape[0]}) disagree")
    _check_index("perm", perm, nnz)
    return rows, cols, b, nnz


def _t_row_args(t_row: torch.Tensor) -> tuple[int | None, int | None]:
    """A CSR index (W^T's row index, or W's column index) as the kernels' (int32 pointer, int16 pointer) pair, the
    other NULL."""
    return (_ptr(t_row), None) if t_row.dtype == torch.int32 else (None, _ptr(t_row))


def csr_linear_backward(crow: torch.Tensor, col: torch.Tensor, t_crow: torch.Tensor, t_row: torch.Tensor,
                        perm: torch.Tensor, values: torch.Tensor, grad_out_t: torch.Tensor, x_t: torch.Tensor,
                        input_grad: bool = True, with_bias: bool = True,
                        ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """A CSR linear layer's whole backward in one native call (one OpenMP region): (dx^T = W^T dy^T (Cn, B) or
    None if not ``input_grad``, dL/dvalues (nnz,) at the mask, dL/dbias (R,) or None), the same numbers as
    ``csr_matmul(t_crow, t_row, values, grad_out_t, perm=perm)`` and ``csr_sddmm(crow, col, grad_out_t, x_t)``.

    W (R, Cn): crow, col (int32), values (nnz,); W^T: t_crow, t_row (int16 or int32), perm (int32, entry ->
    position in values). grad_out_t = dy^T (R, B), x_t = x^T (Cn, B)."""
    lib = _require()
    rows, cols, b, nnz = _check_linear_backward(crow, col, t_crow, t_row, perm, values, grad_out_t, x_t)
    gx_t = torch.empty(cols, b) if input_grad else None
    grad = torch.empty(nnz)
    grad_bias = torch.empty(rows) if with_bias else None
    _run(lib.feddst_csr_linear_backward, _ptr(crow), _ptr(col), _ptr(t_crow), *_t_row_args(t_row),
         _ptr(perm), _ptr(values), rows, cols, _ptr(grad_out_t), _ptr(x_t), b, _ptr(gx_t), _ptr(grad),
         _ptr(grad_bias), _threads())
    return gx_t, grad, grad_bias


def csr_linear_backward_sgd_(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, grad_out_t: torch.Tensor,
                             x_t: torch.Tensor, buffer: torch.Tensor | None, lr: float, momentum: float = 0.0,
                             weight_decay: float = 0.0, anchor: torch.Tensor | None = None, prox_mu: float = 0.0,
                             first: bool = False, input_grad: bool = True, with_bias: bool = True,
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A CSR linear layer's backward with the values' SGD step fused in, in one pass over W's CSR (one native call,
    one OpenMP region; no W^T needed): returns (dx^T = W^T dy^T (Cn, B) or None, dL/dbias (R,) or None), both from
    the values before the step, and updates ``values`` (and ``buffer``) in place as ``sgd_step_(values, dL/dvalues,
    buffer, lr, momentum, weight_decay, None, anchor, prox_mu, first)`` would with ``csr_sddmm``'s weight gradient
    (the same sums), which is never written. dx^T is the same sums as ``csr_matmul`` on W^T (each element summed over
    W's rows in row order), on any thread count: each thread owns a range of dx^T's rows (W's columns).

    W (R, Cn): crow (int32), col (int32, or int16: fewer bytes to read), values (nnz,).
    grad_out_t = dy^T (R, B), x_t = x^T (Cn, B)."""
    lib = _require()
    rows, cols, b, nnz = _check_linear_operands(crow, col, values, grad_out_t, x_t)
    if values.shape[0] != nnz:
        raise ValueError(f"{values.shape[0]} values for a pattern of {nnz} entries")
    for name, t in (("buffer", buffer), ("anchor", anchor)):
        if t is not None:
            _check(name, t, torch.float32, 1)
            if t.shape[0] != nnz:
                raise ValueError(f"{name} has {t.shape[0]} elements, values {nnz}")
    if momentum and buffer is None:
        raise ValueError("momentum needs a buffer")
    gx_t = torch.empty(cols, b) if input_grad else None
    grad_bias = torch.empty(rows) if with_bias else None
    _run(lib.feddst_csr_linear_backward_sgd, _ptr(crow), *_t_row_args(col), _ptr(values), rows, cols,
         _ptr(grad_out_t), _ptr(x_t), b, _ptr(gx_t), _ptr(grad_bias), _ptr(buffer), _ptr(anchor), lr, momentum,
         weight_decay, prox_mu if anchor is not None else 0.0, int(first), _threads())
    return gx_t, grad_bias


POOL_CLIPPED = 255  # argmax of an output the fused ReLU set to 0: no gradient flows back through it


def max_pool2d_forward(x: torch.Tensor, kernel: int, stride: int,
                       relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool x (..., H, W) without padding -> (values (..., Ho, Wo), argmax uint8 offsets kh*k + kw).

    relu: also apply a following ReLU (outputs <= 0 become 0, their argmax ``POOL_CLIPPED``).
    """
    lib = _require()
    _check("x", x, torch.float32)
    if x.dim() < 2 or not 1 <= kernel <= 15 or stride < 1:
        raise ValueError("max_pool2d needs (..., H, W) input, 1 <= kernel <= 15 and stride >= 1")
    h, w = x.shape[-2:]
    if h < kernel or w < kernel:
        raise ValueError(f"input {tuple(x.shape)} smaller than the pooling window {kernel}")
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    n = x.numel() // (h * w)
    y = torch.empty(*x.shape[:-2], ho, wo)
    arg = torch.empty(*x.shape[:-2], ho, wo, dtype=torch.uint8)
    _run(lib.feddst_maxpool_forward, _ptr(x), n, h, w, kernel, stride, int(relu), _ptr(y), _ptr(arg),
         _threads())
    return y, arg


def max_pool2d_backward(grad_out: torch.Tensor, arg: torch.Tensor, input_hw: tuple[int, int], kernel: int,
                        stride: int, trusted_arg: bool = False) -> torch.Tensor:
    """dL/dx (..., H, W): each window's gradient added at its argmax."""
    lib = _require()
    _check("grad_out", grad_out, torch.float32)
    _check("arg", arg, torch.uint8)
    if grad_out.dim() < 2 or not 1 <= kernel <= 15 or stride < 1:
        raise ValueError("max_pool2d backward needs (..., Ho, Wo) gradients, 1 <= kernel <= 15 and stride >= 1")
    if arg.shape != grad_out.shape:
        raise ValueError(f"argmax {tuple(arg.shape)} and grad_out {tuple(grad_out.shape)} differ")
    h, w = input_hw
    if h < kernel or w < kernel or ((h - kernel) // stride + 1, (w - kernel) // stride + 1) != grad_out.shape[-2:]:
        raise ValueError(f"grad_out {tuple(grad_out.shape)} is not the pooled shape of an input {input_hw} "
                         f"with kernel {kernel}, stride {stride}")
    # trusted_arg: arg is what max_pool2d_forward returned for this geometry (the autograd Function's own
    # saved tensor), so its O(n) range check is skipped; every other check still runs.
    if not trusted_arg and arg.numel() and bool(((arg >= kernel * kernel) & (arg != POOL_CLIPPED)).any()):
        raise ValueError(f"argmax offsets must be < kernel * kernel = {kernel * kernel} (or {POOL_CLIPPED})")
    n = grad_out.numel() // (grad_out.shape[-2] * grad_out.shape[-1])
    gx = torch.empty(*grad_out.shape[:-2], h, w)
    _run(lib.feddst_maxpool_backward, _ptr(grad_out), _ptr(arg), n, h, w, kernel, stride, _ptr(gx), _threads())
    return gx


def sgd_step_(param: torch.Tensor, grad: torch.Tensor, buffer: torch.Tensor | None, lr: float, momentum: float = 0.0,
              weight_decay: float = 0.0, mask: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
              prox_mu: float = 0.0, first: bool = False) -> None:
    """One ``torch.optim.SGD`` step of ``param`` in place, as ``feddst_core.training.sgd_update`` (and the
    FedProx term before it) computes it, in one native pass: ``g = grad + prox_mu * (param - anchor)``
    (anchor given), ``g *= mask`` (bool, given), ``g += weight_decay * param``; with momentum
    ``buffer = g`` (``first``) or ``momentum * buffer + g``, ``param -= lr * buffer``; else
    ``param -= lr * g``. ``grad`` is not modified. All float32 tensors contiguous, of param's size."""
    lib = _require()
    n = param.numel()
    for name, t, dtype in (("param", param, torch.float32), ("grad", grad, torch.float32),
                           ("buffer", buffer, torch.float32), ("mask", mask, torch.bool),
                           ("anchor", anchor, torch.float32)):
        if t is not None:
            _check(name, t, dtype)
            if t.numel() != n:
                raise ValueError(f"{name} has {t.numel()} elements, param {n}")
    if momentum and buffer is None:
        raise ValueError("momentum needs a buffer")
    _run(lib.feddst_sgd_step, _ptr(param), _ptr(grad), _ptr(buffer), _ptr(mask), _ptr(anchor), n, lr, momentum,
         weight_decay, prox_mu if anchor is not None else 0.0, int(first))
