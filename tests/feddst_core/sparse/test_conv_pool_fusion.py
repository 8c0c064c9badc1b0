"""The fused sparse conv + max-pool (+ ReLU) node against torch autograd on the masked dense layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_sparse_kernels import USE_NATIVE

from feddst_core import native
from feddst_core.sparse import CsrPattern, sparse_conv2d, sparse_conv2d_pool

SHAPES = [  # (out, in, k, H=W, batch, pool kernel)
    (10, 1, 5, 28, 4, 3),  # the paper's conv1 -> pool 3/1
    (20, 10, 5, 22, 3, 3),  # conv2 -> pool 3/1
    (16, 1, 3, 8, 5, 2),  # the digits CNN's conv1 -> pool 2/1
    (6, 3, 3, 13, 2, 1),
]


@pytest.fixture(params=[1, 2])
def threads(request):
    """Run the test at 1 and at 2 torch threads (the native kernels' OpenMP team); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _problem(shape, density, seed=3):
    out_c, in_c, k, hw, batch, _ = shape
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_c, in_c, k, k, generator=g) < density
    weight = torch.randn(out_c, in_c, k, k, generator=g) / (in_c * k * k) ** 0.5
    bias = torch.randn(out_c, generator=g) * 0.1
    x = torch.randn(batch, in_c, hw, hw, generator=g)
    return mask, weight, bias, x, g


@pytest.mark.parametrize("use_native", USE_NATIVE)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_conv_pool_matches_torch_autograd(shape, density, relu, use_native):
    mask, weight, bias, x, g = _problem(shape, density)
    pool = shape[5]
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight).requires_grad_()
    xs, bs = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y = sparse_conv2d_pool(xs, values, bs, pattern, pool, 1, relu, use_native=use_native)
    assert (y.grad_fn.name() == "NativeSparseConv2dPoolFunctionBackward") == use_native
    grad_out = torch.randn(y.shape, generator=g)
    gx, gv, gb = torch.autograd.grad(y, [xs, values, bs], grad_out)

    wd = (weight * mask).requires_grad_()
    xd, bd = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y_ref = F.max_pool2d(F.conv2d(xd, wd, bd), pool, 1)
    y_ref = F.relu(y_ref) if relu else y_ref
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(y_ref, [xd, wd, bd], grad_out)

    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gv, pattern.gather(gw_ref), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gb, gb_ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(pattern.scatter(gv.detach()) * ~mask, torch.zeros_like(weight))  # nothing off the mask


@pytest.mark.skipif(not native.available(), reason=native.status())
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_fused_forward_equals_conv_then_pool_exactly(shape):
    """Same sums in the same order as the two native kernels run one after the other (ties and all)."""
    mask, weight, bias, x, _ = _problem(shape, 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    conv = native.sparse_conv2d_forward(x, pattern.crow, pattern.col, values, bias, shape[0], shape[2])
    y_ref, arg_ref = native.max_pool2d_forward(conv, shape[5], 1, relu=True)
    y, arg = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, shape[0], shape[2],
                                               shape[5], relu=True)
    assert torch.equal(y, y_ref) and torch.equal(arg, arg_ref)


@pytest.mark.skipif(not native.available(), reason=native.status())
def test_fused_forward_refuses_bad_input_naming_it():
    mask, weight, bias, x, _ = _problem(SHAPES[0], 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    with pytest.raises(ValueError, match="pooling window"):
        native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, 10, 5, 25)
    with pytest.raises(ValueError, match="values"):
        native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values[:-1], bias, 10, 5, 3)
    with pytest.raises(ValueError, match="x must be torch.float32"):
        native.sparse_conv2d_pool_forward(x.double(), pattern.crow, pattern.col, values, bias, 10, 5, 3)


def test_strided_pool_composes_the_unfused_layers():
    mask, weight, bias, x, _ = _problem(SHAPES[1], 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight).requires_grad_()
    y = sparse_conv2d_pool(x, values, bias, pattern, 2, 2, True)
    assert y.grad_fn.name() != "NativeSparseConv2dPoolFunctionBackward"
    ref = F.relu(F.max_pool2d(sparse_conv2d(x, values, bias, pattern), 2, 2))
    torch.testing.assert_close(y, ref)


@pytest.mark.skipif(not native.available(), reason=native.status())
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_backward_equals_pool_then_conv_gradients_exactly(shape, threads):
    """One native backward pass gives the numbers of the three native kernels it replaces, run in turn: the
    input and bias gradients bit for bit, the weight gradient's dot products to float rounding (the compiler
    may fuse multiply-adds differently in the two inlined copies)."""
    out_c, in_c, k, _, _, pool = shape
    mask, weight, bias, x, g = _problem(shape, 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    y, arg = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, out_c, k, pool,
                                               relu=True)
    grad_out = torch.randn(y.shape, generator=g)
    conv_hw = (x.shape[2] - k + 1, x.shape[3] - k + 1)
    grad_conv = native.max_pool2d_backward(grad_out, arg, conv_hw, pool, 1)
    gx_ref = native.sparse_conv2d_backward_input(grad_conv, pattern.t_crow, pattern.t_col_int32,
                                                 values[pattern.transpose_perm.long()], in_c, x.shape[2:], k)
    gv_ref, gb_ref = native.sparse_conv2d_backward_weight(x, grad_conv, pattern.crow, pattern.col, k)
    gx, gv, gb = native.sparse_conv2d_pool_backward(x, grad_out, arg, pattern.crow, pattern.col, values,
                                                    pattern.t_crow, pattern.t_col_int32, pattern.transpose_perm,
                                                    k, pool)
    no_gx, gv_only, no_gb = native.sparse_conv2d_pool_backward(
        x, grad_out, arg, pattern.crow, pattern.col, values, pattern.t_crow, pattern.t_col_int32,
        pattern.transpose_perm, k, pool, input_grad=False, with_bias=False)
    assert torch.equal(gx, gx_ref) and torch.equal(gb, gb_ref)
    torch.testing.assert_close(gv, gv_ref, rtol=1e-5, atol=1e-5)
    assert no_gx is None and no_gb is None and torch.equal(gv_only, gv)


@pytest.mark.skipif(not native.available(), reason=native.status())
def test_fused_backward_refuses_bad_input_naming_it():
    mask, weight, bias, x, g = _problem(SHAPES[0], 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    y, arg = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, 10, 5, 3)
    grad = torch.randn(y.shape, generator=g)
    args = (pattern.crow, pattern.col, values, pattern.t_crow, pattern.t_col_int32, pattern.transpose_perm, 5)
    with pytest.raises(ValueError, match="not the pooled output"):
        native.sparse_conv2d_pool_backward(x, grad, arg, *args, 2)
    with pytest.raises(ValueError, match="argmax offsets"):
        native.sparse_conv2d_pool_backward(x, grad, torch.full_like(arg, 9), *args, 3)
    with pytest.raises(ValueError, match="values"):
        native.sparse_conv2d_pool_backward(x, grad, arg, pattern.crow, pattern.col, values[:-1], *args[3:], 3)


@pytest.mark.skipif(not native.available(), reason=native.status())
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_last_output_and_gradient_equal_the_nchw_ones_exactly(shape, threads):
    """The batch-last forward stores the very same values (and argmax) in (O, Hp, Wp, B) memory, and the
    backward reads a batch-last gradient in place to the very same dx, dvalues and dbias."""
    out_c, in_c, k, _, _, pool = shape
    mask, weight, bias, x, g = _problem(shape, 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    y, arg = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, out_c, k, pool, True)
    y_bl, arg_bl = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, out_c, k, pool,
                                                     True, batch_last=True)
    grad_out = torch.randn(y.shape, generator=g)
    grad_bl = grad_out.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    args = (arg, pattern.crow, pattern.col, values, pattern.t_crow, pattern.t_col_int32, pattern.transpose_perm,
            k, pool)
    ref = native.sparse_conv2d_pool_backward(x, grad_out, *args)
    got = native.sparse_conv2d_pool_backward(x, grad_bl, *args)
    assert native.is_batch_last(y_bl) and native.is_batch_last(grad_bl) and not native.is_batch_last(y)
    assert torch.equal(y_bl, y) and torch.equal(arg_bl, arg)
    for r, t in zip(ref, got, strict=True):
        assert torch.equal(t, r)


@pytest.mark.skipif(not native.available(), reason=native.status())
@pytest.mark.parametrize(("out_c", "team"), [(5, 2), (7, 3), (2, 3), (1, 4)])
def test_batch_last_forward_splits_channels_over_any_team_to_the_one_thread_values(out_c, team):
    """The batch-last forward gives each thread its own group of output channels: whatever the team size (more
    threads than channels included), every (b, o) plane is computed once, to the one-thread NCHW values."""
    mask, weight, bias, x, _ = _problem((out_c, 3, 3, 12, 5, 2), 0.4)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    args = (x, pattern.crow, pattern.col, values, bias, out_c, 3, 2, True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y, arg = native.sparse_conv2d_pool_forward(*args)
        torch.set_num_threads(team)
        y_bl, arg_bl = native.sparse_conv2d_pool_forward(*args, batch_last=True)
    finally:
        torch.set_num_threads(before)
    assert native.is_batch_last(y_bl)
    assert torch.equal(y_bl, y) and torch.equal(arg_bl, arg)


@pytest.mark.skipif(not native.available(), reason=native.status())
def test_flatten_after_batch_last_conv_pool_copies_nothing_and_matches_autograd(monkeypatch):
    """forward_mixed runs the conv feeding Flatten batch-last: fc1's (features, B) operand is the fused
    kernel's own output memory (no copy), and the gradients still equal torch autograd's."""
    from feddst_core.models import MNIST_CNN, init_params
    from feddst_core.sparse.trainer import convs_before_flatten, forward_mixed

    assert convs_before_flatten(MNIST_CNN) == frozenset({"conv2"})
    g = torch.Generator().manual_seed(5)
    params = init_params(MNIST_CNN, g)
    masks = {nm: torch.rand(params[nm].shape, generator=g) < 0.3 for nm in MNIST_CNN.masked_names()}
    patterns = {nm: CsrPattern.from_mask(masks[nm]) for nm in ("conv2.weight", "fc1.weight")}
    leaves = {nm: (patterns[nm].gather(t) if nm in patterns else t * masks.get(nm, 1)).requires_grad_()
              for nm, t in params.items()}
    x, y = torch.rand(6, 1, 28, 28, generator=g), torch.randint(0, 10, (6,), generator=g)
    pooled, fc1_inputs = [], []
    conv_pool, linear = native.sparse_conv2d_pool_forward, native.csr_matmul

    def conv_pool_spy(*args, **kwargs):
        out, arg = conv_pool(*args, **kwargs)
        pooled.append(out)
        return out, arg

    def linear_spy(crow, index, values, src, bias=None, perm=None):
        if bias is not None:  # a forward (input gradients pass no bias)
            fc1_inputs.append(src)
        return linear(crow, index, values, src, bias=bias, perm=perm)

    monkeypatch.setattr(native, "sparse_conv2d_pool_forward", conv_pool_spy)
    monkeypatch.setattr(native, "csr_matmul", linear_spy)
    loss = F.cross_entropy(forward_mixed(MNIST_CNN, leaves, patterns, x), y)
    monkeypatch.undo()
    assert len(pooled) == 1 and len(fc1_inputs) == 1
    assert native.is_batch_last(pooled[0]) and fc1_inputs[0].data_ptr() == pooled[0].data_ptr()
    grads = torch.autograd.grad(loss, list(leaves.values()))

    dense = {nm: (t * masks[nm] if nm in masks else t).detach().requires_grad_() for nm, t in params.items()}
    act = F.relu(F.max_pool2d(F.conv2d(x, dense["conv1.weight"], dense["conv1.bias"]), 3, 1))
    act = F.relu(F.max_pool2d(F.conv2d(act, dense["conv2.weight"], dense["conv2.bias"]), 3, 1))
    act = F.relu(F.linear(act.flatten(1), dense["fc1.weight"], dense["fc1.bias"]))
    ref_loss = F.cross_entropy(F.linear(act, dense["fc2.weight"], dense["fc2.bias"]), y)
    ref = torch.autograd.grad(ref_loss, list(dense.values()))
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for nm, got, want in zip(leaves, grads, ref, strict=True):
        want = patterns[nm].gather(want) if nm in patterns else want
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=nm)


@pytest.mark.skipif(not native.available(), reason=native.status())
def test_fused_backward_with_images_handed_out_dynamically_gives_the_same_bits_every_call():
    """The fused backward hands images to whichever thread is free; each image's sums go to its own partial row,
    reduced in the static split's order, so two threads give the same bits on every call (and the bias gradient
    the weight kernel's, checked above)."""
    out_c, in_c, k, _, _, pool = SHAPES[0]
    mask, weight, bias, x, g = _problem(SHAPES[0], 0.3)
    pattern = CsrPattern.from_mask(mask)
    values = pattern.gather(weight)
    y, arg = native.sparse_conv2d_pool_forward(x, pattern.crow, pattern.col, values, bias, out_c, k, pool, relu=True)
    grad_out = torch.randn(y.shape, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [native.sparse_conv2d_pool_backward(x, grad_out, arg, pattern.crow, pattern.col, values, pattern.t_crow,
                                                   pattern.t_col_int32, pattern.transpose_perm, k, pool)
                for _ in range(6)]
    finally:
        torch.set_num_threads(before)
    for gx, gv, gb in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(gv, runs[0][1]) and torch.equal(gb, runs[0][2])
