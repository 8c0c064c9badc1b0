"""One training step of a client's CSR model without torch.autograd: forward, hand-written backward, gradients.

``SparseLocalTrainer`` runs a step through autograd (``forward_mixed`` builds a graph of custom Functions,
``torch.autograd.grad`` walks it). When every layer of the model is on the native path this module does the
same work directly: it calls the native kernels those autograd Functions call (the fused sparse conv +
stride-1 max-pool (+ReLU) of ``NativeSparseConv2dPoolFunction``, the CSR linear forward and the SGD-fused
backward of ``NativeSparseLinearFunction``, torch's addmm for a dense Linear, log-softmax + NLL for the loss)
and keeps the tensors backward needs itself, so a step costs no graph building, no autograd engine and no
per-node Python dispatch. The numbers are the autograd path's: the same kernels on the same operands in the
same order (the loss and its gradient through aten's own log_softmax / nll_loss / log_softmax backward).

Supported (``direct_plan`` / ``supports_direct_step``): Conv layers each followed by a stride-1 MaxPool
(window <= 15, optionally + ReLU), every Conv sparse; then Flatten; then Linear layers (sparse or dense) with a
ReLU between them; cross-entropy loss; float32 leaves; the native kernels built; every sparse Linear's SGD
step fused into its backward (``FusedSgd``: what ``SparseLocalTrainer._fused_sgd`` gives with the native
kernels). Anything else returns False and the trainer takes the autograd path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from feddst_core import native
from feddst_core.models import (
    Conv,
    Flatten,
    FusedMaxPoolReLU,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    forward_plan,
    row_major,
)
from feddst_core.sparse.kernels import CsrPattern, FusedSgd


@dataclass(frozen=True)
class ConvPoolStage:
    """A Conv and the stride-1 MaxPool (+ ReLU) right after it, run as one fused native pass.
    batch_last: its output goes into Flatten and is stored batch-last (``(O, Hp, Wp, B)`` memory)."""

    layer: Conv
    pool_kernel: int
    relu: bool
    batch_last: bool


@dataclass(frozen=True)
class LinearStage:
    """A Linear layer on ``(features, B)`` activations; relu: a ReLU follows it."""

    layer: Linear
    relu: bool


@functools.lru_cache(maxsize=64)
def direct_plan(spec: ModelSpec) -> tuple[tuple[ConvPoolStage, ...], tuple[LinearStage, ...]] | None:
    """The spec's layers as direct-step stages (conv + pool stages, then linear stages after Flatten), or None
    when its shape is not one this module runs (see the module docstring)."""
    plan = forward_plan(spec.layers)
    convs: list[ConvPoolStage] = []
    i = 0
    while i < len(plan) and isinstance(plan[i], Conv):
        layer, after = plan[i], plan[i + 1] if i + 1 < len(plan) else None
        pool = after.pool if isinstance(after, FusedMaxPoolReLU) else after
        if not isinstance(pool, MaxPool) or pool.stride != 1 or not 1 <= pool.kernel <= 15:
            return None
        assert isinstance(layer, Conv)
        batch_last = i + 2 < len(plan) and isinstance(plan[i + 2], Flatten)
        convs.append(ConvPoolStage(layer, pool.kernel, isinstance(after, FusedMaxPoolReLU), batch_last))
        i += 2
    if i >= len(plan) or not isinstance(plan[i], Flatten):
        return None
    i += 1
    linears: list[LinearStage] = []
    while i < len(plan):
        layer = plan[i]
        if not isinstance(layer, Linear):
            return None
        relu = i + 1 < len(plan) and isinstance(plan[i + 1], ReLU)
        linears.append(LinearStage(layer, relu))
        i += 2 if relu else 1
    if not linears or linears[-1].relu:
        return None  # the logits come straight out of the last Linear
    return tuple(convs), tuple(linears)


def supports_direct_step(spec: ModelSpec, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                         fused_sgd: Mapping[str, FusedSgd]) -> bool:
    """Whether ``direct_step`` can run this client's step: the spec has a ``direct_plan``, the native kernels are
    built, every leaf is float32, every Conv weight is sparse (in ``patterns``, int32 indices) and every sparse
    Linear weight takes its SGD step in its backward (in ``fused_sgd``)."""
    stages = direct_plan(spec)
    if stages is None or not native.available():
        return False
    if any(t.dtype != torch.float32 for t in leaves.values()):
        return False
    convs, linears = stages
    for stage in convs:
        pattern = patterns.get(f"{stage.layer.name}.weight")
        if pattern is None or pattern.col.dtype != torch.int32:
            return False
    for lin in linears:
        name = f"{lin.layer.name}.weight"
        if name in patterns and (name not in fused_sgd or patterns[name].col.dtype != torch.int32):
            return False
    return True


@torch.no_grad()
def direct_step(spec: ModelSpec, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                fused_sgd: Mapping[str, FusedSgd], xb: torch.Tensor, yb: torch.Tensor,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward of the mean cross-entropy loss on xb (B, C, H, W), yb (B,) (int64 classes).

    Returns (loss (a 0-d tensor), gradient of every leaf not in ``fused_sgd``); the weights in ``fused_sgd``
    (sparse Linear values) have taken their SGD step in place, as in the autograd path. The caller checks
    ``supports_direct_step`` first. leaves / patterns as ``trainer.CsrLayers`` takes them."""
    stages = direct_plan(spec)
    assert stages is not None, "direct_step needs supports_direct_step(...) to hold"
    convs, linears = stages
    b = xb.shape[0]
    grads: dict[str, torch.Tensor] = {}
    act = row_major(xb)
    conv_saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, argmax) per conv stage
    for stage in convs:
        name = stage.layer.name
        pattern = patterns[f"{name}.weight"]
        out, arg = native.sparse_conv2d_pool_forward(
            act, pattern.crow, pattern.col, leaves[f"{name}.weight"], leaves[f"{name}.bias"],
            stage.layer.out_channels, stage.layer.kernel, stage.pool_kernel, stage.relu, stage.batch_last)
        conv_saved.append((act, arg))
        act = out
    conv_out_shape = act.shape
    act_t = act.permute(*range(1, act.dim()), 0).reshape(-1, b).contiguous()  # (features, B): free if batch-last
    linear_inputs: list[torch.Tensor] = []  # (in, B) per linear stage
    for lin in linears:
        linear_inputs.append(act_t)
        act_t = _linear_forward(lin.layer, leaves, patterns, act_t)
        if lin.relu:
            act_t = act_t.clamp_min_(0)  # own output: the (out, B) tensor is kept as the next layer's input
    logits = act_t.t()  # (B, classes)
    log_probs = F.log_softmax(logits, 1)
    loss = F.nll_loss(log_probs, yb)
    grad_log_probs = torch.zeros_like(log_probs)
    grad_log_probs.scatter_(1, yb.unsqueeze(1), -1.0 / b)  # d(mean NLL)/d(log-probs)
    grad_t = torch.ops.aten._log_softmax_backward_data(grad_log_probs, log_probs, 1, log_probs.dtype).t()
    first_needs_input = bool(convs)
    for idx in range(len(linears) - 1, -1, -1):
        lin, x_t = linears[idx], linear_inputs[idx]
        needs_input = idx > 0 or first_needs_input
        grad_t = _linear_backward(lin.layer, leaves, patterns, fused_sgd, x_t, grad_t, needs_input, grads)
        if idx > 0 and linears[idx - 1].relu:
            grad_t = torch.ops.aten.threshold_backward(grad_t, x_t, 0)  # x_t is the ReLU's output
    if convs:
        _conv_backward(convs, conv_saved, leaves, patterns, grad_t, conv_out_shape, grads)
    return loss, grads


def _linear_forward(layer: Linear, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                    x_t: torch.Tensor) -> torch.Tensor:
    """y^T (out, B) = b + W x^T for x_t (in, B) contiguous: the CSR native kernel or addmm."""
    weight, bias = leaves[f"{layer.name}.weight"], leaves[f"{layer.name}.bias"]
    pattern = patterns.get(f"{layer.name}.weight")
    if pattern is None:
        return torch.addmm(bias.unsqueeze(1), weight, x_t)
    return native.csr_matmul(pattern.crow, pattern.col_narrow, weight, x_t, bias=bias)


def _linear_backward(layer: Linear, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                     fused_sgd: Mapping[str, FusedSgd], x_t: torch.Tensor, grad_t: torch.Tensor, needs_input: bool,
                     grads: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """dL/dx^T (in, B) (None unless ``needs_input``) from dL/dy^T (out, B); records the weight and bias gradients
    in ``grads`` (a sparse weight instead takes its fused SGD step)."""
    name = layer.name
    weight = leaves[f"{name}.weight"]
    pattern = patterns.get(f"{name}.weight")
    if pattern is None:
        grads[f"{name}.weight"] = torch.mm(grad_t, x_t.t())  # (out, in)
        grads[f"{name}.bias"] = grad_t.sum(1)
        return torch.mm(weight.t(), grad_t) if needs_input else None
    sgd = fused_sgd[f"{name}.weight"]
    grad_x_t, grad_bias = native.csr_linear_backward_sgd_(
        pattern.crow, pattern.col_narrow, weight, grad_t.contiguous(), x_t, sgd.buffer, sgd.lr, sgd.momentum,
        sgd.weight_decay, sgd.anchor, sgd.prox_mu, sgd.first, needs_input, True)
    assert grad_bias is not None
    grads[f"{name}.bias"] = grad_bias
    return grad_x_t


def _conv_backward(convs: tuple[ConvPoolStage, ...], saved: list[tuple[torch.Tensor, torch.Tensor]],
                   leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern], grad_t: torch.Tensor,
                   out_shape: torch.Size, grads: dict[str, torch.Tensor]) -> None:
    """The conv + pool stages' backward, last first, from the Flatten's gradient grad_t (features, B); records
    each Conv's weight (CSR values) and bias gradients in ``grads``."""
    b, o, hp, wp = out_shape
    grad: torch.Tensor | None = grad_t.reshape(o, hp, wp, b).permute(3, 0, 1, 2)  # batch-last, read in place
    for idx in range(len(convs) - 1, -1, -1):
        stage, (x, arg) = convs[idx], saved[idx]
        name = stage.layer.name
        pattern = patterns[f"{name}.weight"]
        assert grad is not None
        grad = grad if native.is_batch_last(grad) else grad.contiguous()
        grad, grad_values, grad_bias = native.sparse_conv2d_pool_backward(
            x, grad, arg, pattern.crow, pattern.col, leaves[f"{name}.weight"], pattern.t_crow, pattern.t_col_int32,
            pattern.transpose_perm, stage.layer.kernel, stage.pool_kernel, input_grad=idx > 0, with_bias=True,
            trusted_arg=True)
        grads[f"{name}.weight"] = grad_values
        assert grad_bias is not None
        grads[f"{name}.bias"] = grad_bias
