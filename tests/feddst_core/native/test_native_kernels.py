"""Native C kernels (``feddst_core.native``) vs torch: sparse conv, max-pool, threads, argument checks.

References are torch's dense ops on the masked weight, computed in float64 (inputs cast to double)
with autograd. Weights use the models' init scale (std ~ 1/sqrt(fan_in)) and upstream gradients are
scaled by 1/sqrt(B*Ho*Wo), so outputs and all gradients are O(1): rtol=atol=1e-5 is a float32
tolerance at unit scale. Each comparison also checks the reference is not trivially zero.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import feddst_core.native as native
from feddst_core.sparse.kernels import CsrPattern

if os.environ.get("FEDDST_NATIVE", "1") == "0":
    pytest.skip("native kernels disabled by FEDDST_NATIVE=0", allow_module_level=True)
if shutil.which("cc") is None and not native.available():
    pytest.skip(f"no C compiler, native kernels not built: {native.status()}", allow_module_level=True)

TOL = {"rtol": 1e-5, "atol": 1e-5}

# (B, C, O, H, W, K)
CONV_SHAPES = [
    (32, 10, 20, 22, 22, 5),
    (4, 1, 10, 28, 28, 5),
    (3, 3, 6, 32, 32, 5),
    (2, 4, 5, 9, 13, 3),  # non-square input
    (1, 2, 3, 5, 5, 5),  # 1x1 output
    (5, 3, 4, 7, 6, 1),  # K=1
]
MASKS = ["1.0", "0.5", "0.1", "0.02", "0.5-zero-rows", "empty"]


def test_native_library_available() -> None:
    # A compiler is present (or the library exists): a missing build is a failure, not a skip.
    assert native.available(), native.status()


def _mask(kind: str, o: int, c: int, k: int, g: torch.Generator) -> torch.Tensor:
    if kind == "empty":
        return torch.zeros(o, c, k, k, dtype=torch.bool)
    mask = torch.rand(o, c, k, k, generator=g) < float(kind.split("-")[0])
    if kind.endswith("zero-rows"):
        mask[0] = False  # an empty CSR row (output channel) ...
        mask[-1] = False
        mask[:, 0, 0, 0] = False  # ... and an empty W^T row
    return mask


def _conv_case(shape: tuple[int, ...], kind: str, seed: int = 0):
    b, c, o, h, w, k = shape
    g = torch.Generator().manual_seed(seed)
    mask = _mask(kind, o, c, k, g)
    weight = torch.randn(o, c, k, k, generator=g) / (c * k * k) ** 0.5
    bias = torch.randn(o, generator=g)
    x = torch.randn(b, c, h, w, generator=g)
    ho, wo = h - k + 1, w - k + 1
    grad_y = torch.randn(b, o, ho, wo, generator=g)  # for dL/dx: O(1) input gradients
    grad_out = grad_y / (b * ho * wo) ** 0.5  # for dL/dW, dL/db: O(1) weight gradients, as a mean loss gives
    return mask, weight, bias, x, grad_y, grad_out


def _close(actual: torch.Tensor, expected: torch.Tensor, nontrivial: bool = True) -> None:
    assert actual.dtype == torch.float32
    if nontrivial:
        assert expected.abs().max() > 100 * TOL["atol"], "reference ~zero: the comparison would prove nothing"
    torch.testing.assert_close(actual.double(), expected, **TOL)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sparse_conv_matches_masked_dense(shape: tuple[int, ...], kind: str) -> None:
    b, c, o, h, w, k = shape
    mask, weight, bias, x, grad_y, grad_out = _conv_case(shape, kind)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    values_t = values[pattern.transpose_perm.long()].contiguous()
    t_row = pattern.t_col.to(torch.int32)
    empty = pattern.nnz == 0

    # float64 reference on the masked dense weight
    xd = x.double().requires_grad_()
    wd = (weight * mask).double().requires_grad_()
    bd = bias.double().requires_grad_()
    y_ref = F.conv2d(xd, wd, bd)
    (gx_ref,) = torch.autograd.grad(y_ref, [xd], grad_y.double(), retain_graph=True)
    gw_ref, gb_ref = torch.autograd.grad(y_ref, [wd, bd], grad_out.double())
    gv_ref = pattern.gather(gw_ref)

    y = native.sparse_conv2d_forward(x, pattern.crow, pattern.col, values, bias, o, k)
    assert y.shape == (b, o, h - k + 1, w - k + 1)
    _close(y, y_ref.detach())
    _close(y - bias.view(1, o, 1, 1), (y_ref - bd.view(1, o, 1, 1)).detach(), nontrivial=not empty)

    gx = native.sparse_conv2d_backward_input(grad_y, pattern.t_crow, t_row, values_t, c, (h, w), k)
    assert gx.shape == x.shape
    if empty:
        assert torch.equal(gx, torch.zeros_like(x))
    else:
        _close(gx, gx_ref)

    gv, gb = native.sparse_conv2d_backward_weight(x, grad_out, pattern.crow, pattern.col, k)
    assert gv.shape == (pattern.nnz,) and gb is not None
    _close(gv, gv_ref, nontrivial=not empty)
    _close(gb, gb_ref)
    gv2, gb2 = native.sparse_conv2d_backward_weight(x, grad_out, pattern.crow, pattern.col, k, with_bias=False)
    assert gb2 is None
    torch.testing.assert_close(gv2, gv, rtol=0, atol=0)


POOL_PARAMS = [(3, 1), (2, 2), (2, 1), (3, 2)]
POOL_SHAPES = [(3, 4, 13, 11), (5, 9, 10)]  # (B, C, H, W) and (N, H, W); odd sizes floor the last window


def _pool_input(shape: tuple[int, ...], kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "ties":  # three distinct values: nearly every window has tied maxima
        return torch.randint(0, 3, shape, generator=g).float()
    return torch.randn(shape, generator=g)


def _flat_argmax(arg: torch.Tensor, w: int, kernel: int, stride: int) -> torch.Tensor:
    """The kernels' window offsets (kh*K + kw) as torch's flat indices into the (H, W) plane."""
    ho, wo = arg.shape[-2:]
    a = arg.long()
    rows = torch.arange(ho).view(ho, 1) * stride + torch.div(a, kernel, rounding_mode="floor")
    cols = torch.arange(wo).view(1, wo) * stride + a % kernel
    return rows * w + cols


@pytest.mark.parametrize("kind", ["ties", "randn"])
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel,stride", POOL_PARAMS)
def test_max_pool_matches_torch(kernel: int, stride: int, shape: tuple[int, ...], kind: str) -> None:
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    x = _pool_input(shape, kind, g)
    h, w = shape[-2:]

    xs = x.clone().requires_grad_()
    y_ref, idx_ref = F.max_pool2d(xs, kernel, stride, return_indices=True)
    grad_out = torch.randn(y_ref.shape, generator=g)
    (gx_ref,) = torch.autograd.grad(y_ref, [xs], grad_out)

    y, arg = native.max_pool2d_forward(x, kernel, stride)
    assert y.shape == y_ref.shape and arg.shape == y_ref.shape and arg.dtype == torch.uint8
    assert torch.equal(y, y_ref.detach())
    assert int(arg.max()) < kernel * kernel
    assert torch.equal(_flat_argmax(arg, w, kernel, stride), idx_ref)  # same tie-breaking: first max

    gx = native.max_pool2d_backward(grad_out, arg, (h, w), kernel, stride)
    assert gx.shape == x.shape
    assert gx_ref.abs().max() > 0.05
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)


def test_max_pool_nan_routing_matches_torch() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (2, 3, 9, 8), generator=g).float()
    x[torch.rand(x.shape, generator=g) < 0.1] = float("nan")
    y_ref, idx_ref = F.max_pool2d(x, 3, 1, return_indices=True)
    y, arg = native.max_pool2d_forward(x, 3, 1)
    assert torch.isnan(y_ref).any()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(_flat_argmax(arg, 8, 3, 1), idx_ref)


def _run_all(shape: tuple[int, ...], kind: str) -> list[torch.Tensor]:
    b, c, o, h, w, k = shape
    mask, weight, bias, x, grad_y, grad_out = _conv_case(shape, kind, seed=7)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    values_t = values[pattern.transpose_perm.long()].contiguous()
    y = native.sparse_conv2d_forward(x, pattern.crow, pattern.col, values, bias, o, k)
    gx = native.sparse_conv2d_backward_input(grad_y, pattern.t_crow, pattern.t_col.to(torch.int32), values_t,
                                             c, (h, w), k)
    gv, gb = native.sparse_conv2d_backward_weight(x, grad_out, pattern.crow, pattern.col, k)
    pooled, arg = native.max_pool2d_forward(y, 2, 2)
    gp = native.max_pool2d_backward(torch.ones_like(pooled), arg, y.shape[-2:], 2, 2)
    return [y, gx, gv, gb, pooled, arg, gp]


@pytest.mark.parametrize("kind", ["0.5", "0.02"])
def test_results_independent_of_thread_count(kind: str) -> None:
    shape = (32, 10, 20, 22, 22, 5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_all(shape, kind)
        torch.set_num_threads(2)
        two = _run_all(shape, kind)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        if a.dtype == torch.uint8:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.fixture
def small_conv():
    shape = (2, 3, 4, 8, 8, 3)
    mask, weight, bias, x, _, grad_out = _conv_case(shape, "0.5", seed=5)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    values_t = values[pattern.transpose_perm.long()].contiguous()
    return shape, pattern, values, values_t, bias, x, grad_out


def test_errors_dtype_and_contiguity(small_conv) -> None:
    (b, c, o, h, w, k), p, values, _, bias, x, _ = small_conv
    with pytest.raises(ValueError, match=r"x must be torch\.float32, got torch\.float64"):
        native.sparse_conv2d_forward(x.double(), p.crow, p.col, values, bias, o, k)
    with pytest.raises(ValueError, match="x must be a contiguous CPU tensor"):
        native.sparse_conv2d_forward(x.transpose(2, 3), p.crow, p.col, values, bias, o, k)
    with pytest.raises(ValueError, match=r"crow must be torch\.int32, got torch\.int64"):
        native.sparse_conv2d_forward(x, p.crow.long(), p.col, values, bias, o, k)
    with pytest.raises(ValueError, match=r"values must be torch\.float32"):
        native.sparse_conv2d_forward(x, p.crow, p.col, values.double(), bias, o, k)
    with pytest.raises(ValueError, match=r"x must be torch\.float32"):
        native.max_pool2d_forward(x.double(), 2, 2)
    with pytest.raises(ValueError, match="x must be a contiguous CPU tensor"):
        native.max_pool2d_forward(x[..., ::2], 2, 2)


def test_errors_shapes(small_conv) -> None:
    (b, c, o, h, w, k), p, values, values_t, bias, x, grad_out = small_conv
    t_row = p.t_col.to(torch.int32)
    bad_grad = grad_out[:, :, :-1].contiguous()
    with pytest.raises(ValueError, match="grad_out .* does not match input"):
        native.sparse_conv2d_backward_input(bad_grad, p.t_crow, t_row, values_t, c, (h, w), k)
    with pytest.raises(ValueError, match="grad_out .* does not match input"):
        native.sparse_conv2d_backward_weight(x, bad_grad, p.crow, p.col, k)
    with pytest.raises(ValueError, match="smaller than kernel"):
        native.sparse_conv2d_forward(x[:, :, : k - 1].contiguous(), p.crow, p.col, values, bias, o, k)
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        native.max_pool2d_forward(x, 9, 1)
    with pytest.raises(ValueError, match="values for a pattern of"):
        native.sparse_conv2d_forward(x, p.crow, p.col, values[:-1].contiguous(), bias, o, k)
    y, arg = native.max_pool2d_forward(x, 2, 2)
    with pytest.raises(ValueError, match="argmax .* differ"):
        native.max_pool2d_backward(y[..., :-1].contiguous(), arg, (h, w), 2, 2)


def test_errors_csr_column_out_of_range(small_conv) -> None:
    (b, c, o, h, w, k), p, values, values_t, bias, x, grad_out = small_conv
    col = p.col.clone()
    col[-1] = c * k * k  # one past the last column
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, "):
        native.sparse_conv2d_forward(x, p.crow, col, values, bias, o, k)
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, "):
        native.sparse_conv2d_backward_weight(x, grad_out, p.crow, col, k)
    col[-1] = -1
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, "):
        native.sparse_conv2d_forward(x, p.crow, col, values, bias, o, k)
    t_row = p.t_col.to(torch.int32)
    t_row[0] = o  # W^T's "columns" are output channels
    with pytest.raises(ValueError, match=r"CSR column index has an index outside \[0, "):
        native.sparse_conv2d_backward_input(grad_out, p.t_crow, t_row, values_t, c, (h, w), k)


def test_max_pool_backward_rejects_inconsistent_geometry() -> None:
    x = torch.randn(2, 6, 6)
    y, arg = native.max_pool2d_forward(x, 2, 2)
    # input_hw (4, 4) pools to (2, 2), not grad_out's (3, 3): would read part of grad_out / write out of bounds
    with pytest.raises(ValueError, match="is not the pooled shape"):
        native.max_pool2d_backward(torch.ones_like(y), arg, (4, 4), 2, 2)
    with pytest.raises(ValueError, match="is not the pooled shape"):
        native.max_pool2d_backward(torch.ones_like(y), arg, (3000, 3000), 2, 2)
    with pytest.raises(ValueError, match="kernel <= 15"):
        native.max_pool2d_backward(torch.ones_like(y), arg, (6, 6), 0, 2)
    with pytest.raises(ValueError, match="argmax offsets must be < kernel"):
        native.max_pool2d_backward(torch.ones(1, 1, 1), torch.full((1, 1, 1), 8, dtype=torch.uint8), (2, 2), 2, 1)
    with pytest.raises(ValueError, match=r"\(\.\.\., Ho, Wo\)"):
        native.max_pool2d_backward(torch.ones(3), torch.zeros(3, dtype=torch.uint8), (2, 2), 2, 1)


def test_malformed_crow_and_kernel_rejected() -> None:
    x = torch.randn(1, 1, 40, 40)
    with pytest.raises(ValueError, match="never decrease"):
        native.sparse_conv2d_forward(x, torch.tensor([0, 3000000, 3], dtype=torch.int32),
                                     torch.tensor([0, 1, 2], dtype=torch.int32), torch.ones(3), torch.zeros(2), 2, 3)
    with pytest.raises(ValueError, match="crow must run from 0"):
        native.sparse_conv2d_forward(x, torch.tensor([1, 2, 3], dtype=torch.int32),
                                     torch.tensor([0, 1, 2], dtype=torch.int32), torch.ones(3), torch.zeros(2), 2, 3)
    with pytest.raises(ValueError, match="kernel must be an int >= 1"):
        native.sparse_conv2d_forward(torch.randn(1, 1, 5, 5), torch.tensor([0, 1], dtype=torch.int32),
                                     torch.tensor([0], dtype=torch.int32), torch.ones(1), torch.zeros(1), 1, -1)


def test_env_var_disables_native() -> None:
    env = {**os.environ, "FEDDST_NATIVE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", "import feddst_core.native as n; print(n.available(), n.status())"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert out.startswith("False"), out
    assert "FEDDST_NATIVE" in out, out


@pytest.mark.parametrize("relu", [False, True])
def test_stride1_max_pool_backward_sums_each_element_in_window_offset_order(relu: bool) -> None:
    """The stride-1 backward adds the windows' gradients into each input element in window-offset (kh, kw) order:
    bit for bit the float32 sums of a torch oracle that adds one offset's masked, shifted gradient plane at a time
    (ties input: most elements take several windows' gradients, where the order changes the rounding)."""
    g = torch.Generator().manual_seed(21)
    kernel, (n, h, w) = 3, (6, 17, 23)
    x = _pool_input((n, h, w), "ties", g) - 1.0  # -1, 0, 1: the ReLU clips some windows
    y, arg = native.max_pool2d_forward(x, kernel, 1, relu=relu)
    grad_out = torch.randn(y.shape, generator=g) * 1e3  # large and small terms: rounding depends on order
    ho, wo = y.shape[-2:]
    expected = torch.zeros(n, h, w)
    for d in range(kernel * kernel):  # (kh, kw) order; POOL_CLIPPED (255) matches no offset
        kh, kw = divmod(d, kernel)
        expected[:, kh:kh + ho, kw:kw + wo] += torch.where(arg.long() == d, grad_out, torch.zeros(()))
    assert int((arg.long() < kernel * kernel).sum()) > 0 and (not relu or int((arg == 255).sum()) > 0)
    gx = native.max_pool2d_backward(grad_out, arg, (h, w), kernel, 1)
    assert torch.equal(gx, expected)
