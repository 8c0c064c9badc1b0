"""``feddst_core.pooling.max_pool2d`` vs ``torch.nn.functional.max_pool2d``.

The native kernel serves contiguous NCHW float32 input, torch's kernel everything else (channels-last,
float64). Inputs are full of ties (three distinct values), so equal gradients also mean the same
tie-breaking: the first maximum in row-major window order. Values must match exactly; gradients (sums
of overlapping windows' contributions, possibly in another order) within 1e-6.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from feddst_core import native
from feddst_core.pooling import max_pool2d, native_pooling_applies

NATIVE_EXPECTED = bool(os.environ.get("FEDDST_NATIVE", "1") != "0" and (native.available() or shutil.which("cc")))
needs_native = pytest.mark.skipif(not NATIVE_EXPECTED, reason=f"native kernels unavailable: {native.status()}")

POOLS = [(3, 1), (2, 2)]
SHAPES = [(3, 5, 13, 11), (2, 16, 8, 8)]  # odd sizes floor the last stride-2 window


def _ties(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, shape, generator=g).to(dtype)


def _pool_and_grad(pool, x: torch.Tensor, kernel: int, stride: int, grad_out: torch.Tensor | None):
    xs = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y = pool(xs, kernel, stride)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(99), dtype=y.dtype)
    (gx,) = torch.autograd.grad(y, [xs], grad_out)
    return y, gx, grad_out


@needs_native
def test_native_is_available() -> None:
    assert native.available(), native.status()


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel,stride", POOLS)
def test_nchw_native_path_matches_torch(kernel: int, stride: int, shape: tuple[int, ...]) -> None:
    x = _ties(shape, seed=kernel + 10 * stride)
    assert x.is_contiguous() and native_pooling_applies(x, kernel)
    y, gx, grad_out = _pool_and_grad(max_pool2d, x, kernel, stride, None)
    assert type(y.grad_fn).__name__ == "_NativeMaxPool2dBackward"  # the native kernel really ran
    y_ref, gx_ref, _ = _pool_and_grad(F.max_pool2d, x, kernel, stride, grad_out)
    assert y.shape == y_ref.shape and y.is_contiguous()
    assert torch.equal(y, y_ref)
    assert gx_ref.abs().max() > 0.05
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel,stride", POOLS)
def test_channels_last_torch_path_matches_nchw_torch(kernel: int, stride: int, shape: tuple[int, ...]) -> None:
    x = _ties(shape, seed=kernel + 10 * stride + 1)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not native_pooling_applies(x_cl, kernel)
    y, gx, grad_out = _pool_and_grad(max_pool2d, x_cl, kernel, stride, None)
    assert type(y.grad_fn).__name__ != "_NativeMaxPool2dBackward"
    assert y.is_contiguous(memory_format=torch.channels_last)  # the layout is kept for the next conv
    # vs torch on the same channels-last input, and on the NCHW copy (same values, same tie-breaking)
    for x_ref in (x_cl, x):
        y_ref, gx_ref, _ = _pool_and_grad(F.max_pool2d, x_ref, kernel, stride, grad_out.contiguous())
        assert torch.equal(y, y_ref)
        torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)


@needs_native
def test_native_and_channels_last_paths_agree() -> None:
    """The two paths the models use (K = 1: NCHW native; K > 1: channels-last torch) route gradients alike."""
    x = _ties((4, 6, 12, 12), seed=7)
    y_n, gx_n, grad_out = _pool_and_grad(max_pool2d, x, 3, 1, None)
    y_c, gx_c, _ = _pool_and_grad(max_pool2d, x.contiguous(memory_format=torch.channels_last), 3, 1, grad_out)
    assert torch.equal(y_n, y_c)
    torch.testing.assert_close(gx_n, gx_c, rtol=1e-6, atol=1e-6)


def test_native_pooling_applies() -> None:
    x = _ties((2, 4, 9, 9), seed=0)
    assert native_pooling_applies(x, 3) == native.available()
    if NATIVE_EXPECTED:
        assert native_pooling_applies(x, 3)
    assert not native_pooling_applies(x.contiguous(memory_format=torch.channels_last), 3)
    assert not native_pooling_applies(x.double(), 3)
    assert not native_pooling_applies(x[..., ::2], 3)  # a strided view
    assert not native_pooling_applies(x, 16)  # the native window limit


@pytest.mark.parametrize("kernel,stride", POOLS)
def test_float64_goes_through_torch(kernel: int, stride: int) -> None:
    x = _ties((2, 3, 10, 9), seed=3, dtype=torch.float64)
    assert not native_pooling_applies(x, kernel)
    y, gx, grad_out = _pool_and_grad(max_pool2d, x, kernel, stride, None)
    assert y.dtype == torch.float64 and gx.dtype == torch.float64
    y_ref, gx_ref, _ = _pool_and_grad(F.max_pool2d, x, kernel, stride, grad_out)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_relu_equals_pool_then_relu(kernel: int, stride: int, layout: str) -> None:
    """relu=True: the same values as F.relu(F.max_pool2d(x)) and the same gradients, ties, zeros and
    negative windows included (the native path marks clipped outputs so no gradient flows through them)."""
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    base = torch.randint(-2, 3, (3, 4, 11, 13), generator=g).float() * 0.5  # ties, zeros, negatives
    x = base.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else base
    x = x.detach().requires_grad_()
    ref_x = base.clone().requires_grad_()
    y = max_pool2d(x, kernel, stride, relu=True)
    ref = F.relu(F.max_pool2d(ref_x, kernel, stride))
    assert torch.equal(y, ref)
    assert bool((ref == 0).any()) and bool((ref > 0).any())  # both branches exercised
    grad = torch.randn(ref.shape, generator=g)
    (gx,) = torch.autograd.grad(y, x, grad)
    (gref,) = torch.autograd.grad(ref, ref_x, grad)
    torch.testing.assert_close(gx, gref, rtol=0, atol=1e-6)
