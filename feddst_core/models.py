"""The paper's models, written once as layer specs and run by one functional forward.

Every model runs *batched over clients*: parameters carry a leading client axis ``K``
(``conv1.weight`` is ``(K, out, in, kh, kw)``) and inputs are ``(K, B, C, H, W)``. A single
device is simply ``K = 1``. Convolutions of the ``K`` clients run as one grouped convolution
and linear layers as one batched matrix product, so the simulator trains a whole round's
clients in one pass while the edge agent runs the very same code with ``K = 1``.

Outputs are logits; the loss applies the softmax (the reference code's double softmax is a bug).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F

from feddst_core import native
from feddst_core.memory_layout import row_major_strides
from feddst_core.pooling import max_pool2d

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Conv:
    name: str
    in_channels: int
    out_channels: int
    kernel: int


@dataclass(frozen=True)
class MaxPool:
    kernel: int
    stride: int


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class Flatten:
    pass


Layer = Conv | MaxPool | Linear | ReLU | Flatten


@dataclass(frozen=True)
class FusedMaxPoolReLU:
    """A MaxPool and the ReLU right after it, run as one pass (see ``fuse_pool_relu``)."""

    pool: MaxPool


@dataclass(frozen=True)
class ModelSpec:
    """A feed-forward model: an input shape and a list of layers."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    num_classes: int
    layers: tuple[Layer, ...]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter of *one* client, in forward order (weights before biases)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.layers:
            if isinstance(layer, Conv):
                k = layer.kernel
                shapes[f"{layer.name}.weight"] = (layer.out_channels, layer.in_channels, k, k)
                shapes[f"{layer.name}.bias"] = (layer.out_channels,)
            elif isinstance(layer, Linear):
                shapes[f"{layer.name}.weight"] = (layer.out_features, layer.in_features)
                shapes[f"{layer.name}.bias"] = (layer.out_features,)
        return shapes

    def masked_names(self) -> list[str]:
        """Parameters that carry a sparsity mask: every weight tensor, never a bias."""
        return [n for n, s in self.parameter_shapes().items() if len(s) >= 2]

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.parameter_shapes().values())


# --- the models --------------------------------------------------------------------------------

def paper_mnist_cnn(hidden: int = 50, name: str = "mnist_cnn") -> ModelSpec:
    """Paper MNIST CNN: 28x28 -> conv5 -> 24 -> pool3/1 -> 22 -> conv5 -> 18 -> pool3/1 -> 16; 20*16*16 = 5120
    features -> fc1 (``hidden`` units) -> fc2 -> 10 logits."""
    return ModelSpec(
        name=name,
        input_shape=(1, 28, 28),
        num_classes=10,
        layers=(
            Conv("conv1", 1, 10, 5), MaxPool(3, 1), ReLU(),
            Conv("conv2", 10, 20, 5), MaxPool(3, 1), ReLU(),
            Flatten(),
            Linear("fc1", 5120, hidden), ReLU(),
            Linear("fc2", hidden, 10),
        ),
    )


MNIST_CNN = paper_mnist_cnn()
# The same CNN with fc1 widened to 5120 -> 512: fully connected weights dominate (sparse-kernel benchmark).
FC_HEAVY_MNIST_CNN = paper_mnist_cnn(512, name="mnist_cnn_fc512")

# Paper CIFAR-10 CNN: 32 -> conv5 -> 28 -> pool -> 26 -> conv5 -> 22 -> pool -> 20; 16*20*20 = 6400.
CIFAR10_CNN = ModelSpec(
    name="cifar10_cnn",
    input_shape=(3, 32, 32),
    num_classes=10,
    layers=(
        Conv("conv1", 3, 6, 5), MaxPool(3, 1), ReLU(),
        Conv("conv2", 6, 16, 5), MaxPool(3, 1), ReLU(),
        Flatten(),
        Linear("fc1", 6400, 120), ReLU(),
        Linear("fc2", 120, 84), ReLU(),
        Linear("fc3", 84, 10),
    ),
)

# Small model for scikit-learn's 8x8 digits: 8 -> conv3 -> 6 -> pool2/1 -> 5; 16*5*5 = 400.
DIGITS_CNN = ModelSpec(
    name="digits_cnn",
    input_shape=(1, 8, 8),
    num_classes=10,
    layers=(
        Conv("conv1", 1, 16, 3), MaxPool(2, 1), ReLU(),
        Flatten(),
        Linear("fc1", 400, 64), ReLU(),
        Linear("fc2", 64, 10),
    ),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (MNIST_CNN, CIFAR10_CNN, DIGITS_CNN, FC_HEAVY_MNIST_CNN)}


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def fuse_pool_relu(layers: Sequence[Layer]) -> list[Layer | FusedMaxPoolReLU]:
    """``layers`` with every MaxPool directly followed by a ReLU replaced by one ``FusedMaxPoolReLU``
    (the forward passes then pool and rectify in one pass: ``feddst_core.pooling.max_pool2d(relu=True)``)."""
    out: list[Layer | FusedMaxPoolReLU] = []
    for layer in layers:
        if isinstance(layer, ReLU) and out and isinstance(out[-1], MaxPool):
            pool = out.pop()
            assert isinstance(pool, MaxPool)
            out.append(FusedMaxPoolReLU(pool))
        else:
            out.append(layer)
    return out


# --- parameters ----------------------------------------------------------------------------------


def init_params(spec: ModelSpec, generator: torch.Generator) -> Params:
    """PyTorch's default initialisation (Kaiming-uniform weights, fan-in-uniform biases), seeded.

    Returns one client's parameters (no client axis).
    """
    params: Params = {}
    for name, shape in spec.parameter_shapes().items():
        if name.endswith(".weight"):
            fan_in = math.prod(shape[1:])
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) reduces to this
            params[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        else:
            weight_shape = spec.parameter_shapes()[name[: -len(".bias")] + ".weight"]
            bound = 1.0 / math.sqrt(math.prod(weight_shape[1:]))
            params[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return params


# --- forward ------------------------------------------------------------------------------------


Act = TypeVar("Act")  # an executor's activations: torch tensors, or the ONNX graph builder's value names


class LayerExecutor(Protocol[Act]):
    """How one forward pass runs each kind of layer on its activations; :func:`run_layers` is the one
    walk of a model's layer list, for every executor (the K-client grouped one below, the CSR one of
    ``feddst_core.sparse.trainer``, the ONNX graph builder of ``feddst_core.onnx_export``). Activation
    layouts (and types) are the executor's own."""

    def conv(self, layer: Conv, act: Act) -> Act: ...

    def fuses_conv_pool(self, layer: Conv) -> bool:
        """Whether this Conv and the MaxPool right after it run as one ``conv_pool`` call."""
        ...

    def conv_pool(self, layer: Conv, pool: MaxPool, relu: bool, act: Act) -> Act: ...

    def max_pool(self, pool: MaxPool, relu: bool, act: Act) -> Act:
        """The pool, and the ReLU after it in the same pass when ``relu``."""
        ...

    def relu(self, act: Act) -> Act: ...

    def flatten(self, act: Act) -> Act: ...

    def linear(self, layer: Linear, act: Act) -> Act: ...


def forward_plan(layers: Sequence[Layer]) -> list[Layer | FusedMaxPoolReLU]:
    """The layers as :func:`run_layers` runs them: ``fuse_pool_relu``, then every ReLU right before a
    Flatten moved after it (elementwise, the same values: the flattened copy is then the one tensor
    both the ReLU and the next Linear keep for backward, not two copies)."""
    plan = fuse_pool_relu(layers)
    for i in range(len(plan) - 1):
        if isinstance(plan[i], ReLU) and isinstance(plan[i + 1], Flatten):
            plan[i], plan[i + 1] = plan[i + 1], plan[i]
    return plan


def run_layers(spec: ModelSpec, executor: LayerExecutor[Act], act: Act) -> Act:
    """Run ``spec``'s layers (:func:`forward_plan`) on ``act`` with ``executor``; returns the last
    Linear's output. A Conv the executor fuses with the MaxPool (or MaxPool + ReLU) after it runs as
    one ``conv_pool`` call."""
    plan = forward_plan(spec.layers)
    flattened = False
    i = 0
    while i < len(plan):
        layer = plan[i]
        after = plan[i + 1] if i + 1 < len(plan) else None
        if (isinstance(layer, Conv) and isinstance(after, (MaxPool, FusedMaxPoolReLU))
                and executor.fuses_conv_pool(layer)):
            pool, relu = (after.pool, True) if isinstance(after, FusedMaxPoolReLU) else (after, False)
            act = executor.conv_pool(layer, pool, relu, act)
            i += 2
            continue
        if isinstance(layer, Conv):
            act = executor.conv(layer, act)
        elif isinstance(layer, FusedMaxPoolReLU):
            act = executor.max_pool(layer.pool, True, act)
        elif isinstance(layer, MaxPool):
            act = executor.max_pool(layer, False, act)
        elif isinstance(layer, ReLU):
            act = executor.relu(act)
        elif isinstance(layer, Flatten):
            act, flattened = executor.flatten(act), True
        else:
            assert flattened, "a Linear layer must follow Flatten"
            act = executor.linear(layer, act)
        i += 1
    assert flattened, "a model must end in Linear layers"
    return act


class GroupedLayers:
    """:class:`LayerExecutor` of K clients at once: convolutions on the grouped layout (B, K*C, H, W)
    (client k owns channels [k*C, (k+1)*C)), Flatten to (K, B, F), Linear as one batched product.
    ``params``: each ``(K, *shape)``."""

    def __init__(self, params: Mapping[str, torch.Tensor], k: int, b: int):
        self.params, self.k, self.b = params, k, b

    def conv(self, layer: Conv, act: torch.Tensor) -> torch.Tensor:
        weight = self.params[f"{layer.name}.weight"]  # (K, out, in, kh, kw)
        bias = self.params[f"{layer.name}.bias"]  # (K, out)
        return F.conv2d(act, weight.reshape(self.k * layer.out_channels, *weight.shape[2:]),
                        bias.reshape(-1), groups=self.k)  # (B, K*out, H', W')

    def fuses_conv_pool(self, layer: Conv) -> bool:
        return False

    def conv_pool(self, layer: Conv, pool: MaxPool, relu: bool, act: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("GroupedLayers runs convolutions and pools separately")

    def max_pool(self, pool: MaxPool, relu: bool, act: torch.Tensor) -> torch.Tensor:
        return max_pool2d(act, pool.kernel, pool.stride, relu=relu)  # native for NCHW, else torch

    def relu(self, act: torch.Tensor) -> torch.Tensor:
        return F.relu(act)

    def flatten(self, act: torch.Tensor) -> torch.Tensor:
        return act.reshape(self.b, self.k, -1).transpose(0, 1)  # (K, B, C*H*W), per-sample C,H,W order

    def linear(self, layer: Linear, act: torch.Tensor) -> torch.Tensor:
        weight = self.params[f"{layer.name}.weight"]  # (K, out, in)
        bias = self.params[f"{layer.name}.bias"]  # (K, out)
        # W @ x^T rather than x @ W^T: autograd then returns a contiguous (K, out, in) weight gradient,
        # which keeps the optimiser's element-wise passes over the big fc1 weight cache-friendly.
        return torch.baddbmm(bias.unsqueeze(2), weight, act.transpose(1, 2)).transpose(1, 2)  # (K, B, out)


def row_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` when its strides are row-major in every dimension, else a row-major copy (same values).

    ``Tensor.contiguous()`` is not enough for the NCHW kernels: it ignores the stride of a size-1 dimension,
    but ``F.conv2d`` chooses its output's memory format from all strides. A one-channel batch (B, 1, H, W) with
    strides (H*W, 1, W, 1), as numpy leaves an ``[:, None]`` view after fancy indexing (the agent's MNIST
    share), counts as contiguous AND channels-last: conv2d then returns a channels-last output, and the
    native NCHW max-pool (``feddst_core.pooling``) falls back to torch's and the sparse kernels copy
    (measured 2026-12-04: one agent round 0.098-0.114 CPU s against 0.079 with row-major data)."""
    if tuple(x.stride()) == row_major_strides(x.shape):
        return x
    return x.clone(memory_format=torch.contiguous_format)


def forward(spec: ModelSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of K clients' models on K batches (:func:`run_layers` with :class:`GroupedLayers`).

    params: each ``(K, *shape)``; x: ``(K, B, C, H, W)``. Returns ``(K, B, num_classes)``.
    """
    k, b = x.shape[:2]
    c, h, w = x.shape[2:]
    act = x.transpose(0, 1).reshape(b, k * c, h, w)  # (B, K*C, H, W)
    # Layout by measurement (2-core AVX-512 CPU, paper CNN step): one client (K = 1, the edge agent) runs
    # NCHW with the native max-pool (feddst_core.pooling), 0.6x the time of channels-last + oneDNN pooling;
    # several clients' grouped convolutions are faster channels-last (NCHW: 1.3x at K = 8), where oneDNN's
    # pooling is also ~2.5x faster than torch's NCHW one. Without the native library: channels-last always.
    nchw = k == 1 and native.available()
    act = row_major(act) if nchw else act.contiguous(memory_format=torch.channels_last)
    return run_layers(spec, GroupedLayers(params, k, b), act)


def forward_single(spec: ModelSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of one model (params without client axis) on ``x`` of shape (B, C, H, W) -> (B, classes)."""
    stacked = {n: t.unsqueeze(0) for n, t in params.items()}
    return forward(spec, stacked, x.unsqueeze(0))[0]


@torch.no_grad()
def predict(spec: ModelSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
            batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of every sample of ``x`` (N, C, H, W) -> (N,) int64."""
    out = [forward_single(spec, params, x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
