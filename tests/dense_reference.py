"""The independent oracle several core tests compare against: a ModelSpec's forward pass in plain dense torch
(F.conv2d / F.max_pool2d / F.relu / F.linear), with no project kernels."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from feddst_core.models import Conv, Flatten, MaxPool, ModelSpec, ReLU


def dense_logits(spec: ModelSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (B, classes) of ``spec`` on ``x`` (B, C, H, W) with dense ``params`` (``"<layer>.weight"``/``.bias``)."""
    act = x
    for layer in spec.layers:
        if isinstance(layer, Conv):
            act = F.conv2d(act, params[f"{layer.name}.weight"], params[f"{layer.name}.bias"])
        elif isinstance(layer, MaxPool):
            act = F.max_pool2d(act, layer.kernel, layer.stride)
        elif isinstance(layer, ReLU):
            act = F.relu(act)
        elif isinstance(layer, Flatten):
            act = act.flatten(1)
        else:
            act = F.linear(act, params[f"{layer.name}.weight"], params[f"{layer.name}.bias"])
    return act
