"""CSR layers vs masked dense layers: outputs and every gradient agree within 1e-5.

Weights use the models' init scale (std ~ 1/sqrt(fan_in)) so activations are O(1), and upstream gradients are
scaled so weight gradients are O(1) too (as a mean loss makes them): 1e-5 is then an absolute
float32 tolerance at unit scale.

The layer tests run both implementations: ``use_native=True`` (the C kernels of ``feddst_core.native``)
and ``use_native=False`` (the torch.sparse / im2col fallbacks used when the library is not built).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from feddst_core import native
from feddst_core.sparse import CsrPattern, sparse_conv2d, sparse_linear

DENSITIES = (0.0, 0.05, 0.2, 0.5, 1.0)

# The native kernels are tested unless they cannot exist here (no compiler and no built library) or are
# deliberately disabled; with a compiler present, a missing build makes the native cases fail, not skip.
_NATIVE_SKIP = None
if os.environ.get("FEDDST_NATIVE", "1") == "0":
    _NATIVE_SKIP = "native kernels disabled by FEDDST_NATIVE=0"
elif not native.available() and shutil.which("cc") is None:
    _NATIVE_SKIP = f"no C compiler, native kernels not built: {native.status()}"
USE_NATIVE = [
    pytest.param(True, id="native", marks=pytest.mark.skipif(_NATIVE_SKIP is not None, reason=str(_NATIVE_SKIP))),
    pytest.param(False, id="torch"),
]


@pytest.mark.skipif(_NATIVE_SKIP is not None, reason=str(_NATIVE_SKIP))
def test_native_kernels_available() -> None:
    assert native.available(), native.status()


def _mask(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator) < density


@pytest.mark.parametrize("use_native", USE_NATIVE)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", [(7, 13, 5), (50, 5120, 32), (10, 50, 1), (9, 40, 37)])  # (out, in, batch)
def test_sparse_linear_matches_masked_dense(density: float, shape: tuple[int, int, int], use_native: bool) -> None:
    out_f, in_f, batch = shape
    g = torch.Generator().manual_seed(1)
    mask = _mask((out_f, in_f), density, g)
    weight = torch.randn(out_f, in_f, generator=g) / in_f**0.5  # init scale: outputs O(1)
    bias = torch.randn(out_f, generator=g)
    x = torch.randn(batch, in_f, generator=g)
    grad_out = torch.randn(batch, out_f, generator=g) / batch**0.5  # weight gradients O(1)
    pattern = CsrPattern.from_mask(mask)

    values = pattern.gather(weight).requires_grad_()
    xs, bs = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y = sparse_linear(xs, values, bs, pattern, use_native=use_native)
    assert _used_native(y) == use_native
    gx, gv, gb = torch.autograd.grad(y, [xs, values, bs], grad_out)

    wd = (weight * mask).requires_grad_()
    xd, bd = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y_ref = F.linear(xd, wd, bd)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(y_ref, [xd, wd, bd], grad_out)

    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gv, pattern.gather(gw_ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gb, gb_ref, atol=1e-5, rtol=1e-5)
    # the dense weight gradient restricted to the mask is exactly what the values carry
    torch.testing.assert_close(pattern.scatter(gv), gw_ref * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_native", USE_NATIVE)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", [(10, 1, 5, 28, 4), (20, 10, 5, 22, 3), (6, 3, 3, 9, 2)])
def test_sparse_conv2d_matches_masked_dense(density: float, shape: tuple[int, ...], use_native: bool) -> None:
    out_c, in_c, k, hw, batch = shape
    g = torch.Generator().manual_seed(2)
    mask = _mask((out_c, in_c, k, k), density, g)
    weight = torch.randn(out_c, in_c, k, k, generator=g) / (in_c * k * k) ** 0.5
    bias = torch.randn(out_c, generator=g)
    x = torch.randn(batch, in_c, hw, hw, generator=g)
    positions = batch * (hw - k + 1) ** 2  # terms summed into each weight gradient
    grad_out = torch.randn(batch, out_c, hw - k + 1, hw - k + 1, generator=g) / positions**0.5
    pattern = CsrPattern.from_mask(mask)

    values = pattern.gather(weight).requires_grad_()
    xs, bs = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y = sparse_conv2d(xs, values, bs, pattern, use_native=use_native)
    assert _used_native(y) == use_native
    gx, gv, gb = torch.autograd.grad(y, [xs, values, bs], grad_out)

    wd = (weight * mask).requires_grad_()
    xd, bd = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y_ref = F.conv2d(xd, wd, bd)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(y_ref, [xd, wd, bd], grad_out)

    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gv, pattern.gather(gw_ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gb, gb_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_native", USE_NATIVE)
def test_sparse_layers_partial_gradients(use_native: bool) -> None:
    """Only some inputs need gradients (a frozen first layer's x, a frozen bias): the others stay None
    and the requested ones are unchanged."""
    g = torch.Generator().manual_seed(6)
    mask = _mask((8, 3, 3, 3), 0.5, g)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(torch.randn(mask.shape, generator=g) / 27**0.5).requires_grad_()
    x, bias = torch.randn(2, 3, 7, 7, generator=g), torch.randn(8, generator=g)
    y = sparse_conv2d(x, values, bias, pattern, use_native=use_native)
    (gv,) = torch.autograd.grad(y.square().sum(), [values])
    vd = (pattern.scatter(values.detach())).requires_grad_()
    (gw_ref,) = torch.autograd.grad(F.conv2d(x, vd, bias).square().sum(), [vd])
    torch.testing.assert_close(gv, pattern.gather(gw_ref), atol=1e-4, rtol=1e-5)

    lmask = _mask((6, 10), 0.5, g)
    lpattern = CsrPattern.from_mask(lmask)
    lvalues = lpattern.gather(torch.randn(6, 10, generator=g) / 10**0.5)
    xl = torch.randn(4, 10, generator=g).requires_grad_()
    yl = sparse_linear(xl, lvalues, torch.zeros(6), lpattern, use_native=use_native)
    (gx,) = torch.autograd.grad(yl.sum(), [xl])
    torch.testing.assert_close(gx, (lpattern.scatter(lvalues)).sum(0).expand(4, 10), atol=1e-5, rtol=1e-5)


def _used_native(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__.startswith("Native")


def test_pattern_round_trip_and_transpose() -> None:
    g = torch.Generator().manual_seed(3)
    mask = _mask((9, 4, 2, 2), 0.4, g)
    weight = torch.randn(mask.shape, generator=g)
    pattern = CsrPattern.from_mask(mask)
    assert pattern.nnz == int(mask.sum())
    assert torch.equal(pattern.mask(), mask)
    values = pattern.gather(weight)
    dense = pattern.scatter(values)
    assert torch.equal(dense, weight * mask)
    assert bool((dense[~mask] == 0).all())
    assert torch.equal(pattern.matrix(values).to_dense(), dense.reshape(9, 16))
    assert torch.equal(pattern.matrix_t(values).to_dense(), dense.reshape(9, 16).t())


def test_pattern_indices_are_int32_and_flat_index_is_derived() -> None:
    g = torch.Generator().manual_seed(4)
    mask = _mask((6, 3, 2, 2), 0.4, g)
    pattern = CsrPattern.from_mask(mask)
    for idx in (pattern.crow, pattern.col, pattern.t_crow, pattern.transpose_perm):
        assert idx.dtype == torch.int32
    assert pattern.t_col.dtype == torch.int16  # row numbers of W (6 rows) in W^T order
    assert torch.equal(pattern.flat_index, mask.reshape(-1).nonzero().squeeze(1))


def test_value_gradient_is_fresh_per_call_and_ignores_weight_values() -> None:
    """The SDDMM writes into a new buffer each call (no aliasing between steps); the weights' own
    values (even inf/NaN) do not leak into the weight gradient, which depends on x and dy only."""
    g = torch.Generator().manual_seed(5)
    mask = _mask((9, 16), 0.3, g)
    pattern = CsrPattern.from_mask(mask)
    x, grad_out, bias = torch.randn(4, 16, generator=g), torch.randn(4, 9, generator=g), torch.zeros(9)
    grads = []
    for fill in (1.0, float("nan")):
        values = torch.full((pattern.nnz,), fill).requires_grad_()
        y = sparse_linear(x, values, bias, pattern)
        (gv,) = torch.autograd.grad(y, [values], grad_out)
        grads.append(gv)
    assert grads[0].data_ptr() != grads[1].data_ptr()
    torch.testing.assert_close(grads[1], grads[0], atol=0, rtol=0)
    torch.testing.assert_close(grads[0], pattern.gather(grad_out.t() @ x), atol=1e-5, rtol=1e-5)
