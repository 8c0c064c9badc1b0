"""Max-pooling for the models: the native kernel when it is built, torch's otherwise (same values).

``torch.nn.functional.max_pool2d`` keeps int64 argmax indices for backward and its stride-1 CPU kernel
is slow on NCHW input. The native kernel (``feddst_core.native``) keeps uint8 window offsets (8x less
activation memory) and is vectorised. Both return the same values and route the gradient to the same
element: the first maximum in row-major window order (tests compare them on inputs full of ties).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from feddst_core import native


class _NativeMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: int, stride: int, relu: bool) -> torch.Tensor:
        y, arg = native.max_pool2d_forward(x, kernel, stride, relu)
        ctx.save_for_backward(arg)
        ctx.geometry = (tuple(x.shape[-2:]), kernel, stride)
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (arg,) = ctx.saved_tensors
        input_hw, kernel, stride = ctx.geometry
        gx = native.max_pool2d_backward(grad_out.contiguous(), arg, input_hw, kernel, stride, trusted_arg=True)
        return gx, None, None, None


def native_pooling_applies(x: torch.Tensor, kernel: int) -> bool:
    """True when ``max_pool2d`` would use the native kernel for this input."""
    return (native.available() and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
            and kernel <= 15)


def max_pool2d(x: torch.Tensor, kernel: int, stride: int, relu: bool = False) -> torch.Tensor:
    """Max-pool x (B, C, H, W) with a square window, no padding -> (B, C, (H-k)//s + 1, (W-k)//s + 1);
    ``relu=True`` applies a following ReLU in the same pass (the paper CNNs' pool -> ReLU).

    Native kernel for contiguous (NCHW) float32 CPU input when available; torch's otherwise
    (e.g. channels-last input, where oneDNN's pooling is the fast one).
    """
    if native_pooling_applies(x, kernel):
        return _NativeMaxPool2d.apply(x, kernel, stride, relu)
    y = F.max_pool2d(x, kernel, stride)
    return F.relu(y) if relu else y
