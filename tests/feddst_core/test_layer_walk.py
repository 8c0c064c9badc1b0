"""One interpreter of the layer list (``models.run_layers``) for both forward passes: the K-client
``GroupedLayers`` (``models.forward``) and the one-client CSR ``CsrLayers`` (``sparse.forward_mixed``).

Oracle: the layer list run by this test's own plain loop over torch.nn.functional (unfused, NCHW, masked
dense weights), so neither executor is compared with itself.
"""

from __future__ import annotations

import pytest
import torch
from dense_reference import dense_logits

from feddst_core.models import (
    CIFAR10_CNN,
    DIGITS_CNN,
    MNIST_CNN,
    Conv,
    Flatten,
    FusedMaxPoolReLU,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    forward,
    forward_plan,
    init_params,
    run_layers,
)
from feddst_core.sparse.kernels import CsrPattern
from feddst_core.sparse.trainer import CsrLayers, forward_mixed

TOL = {"rtol": 1e-4, "atol": 1e-4}
# a ReLU right before Flatten (not after a pool): the plan moves it after Flatten
RELU_FLATTEN = ModelSpec("relu_flatten", (1, 8, 8), 10, (Conv("conv1", 1, 4, 3), ReLU(), Flatten(),
                                                         Linear("fc1", 144, 10)))


def _sparse_model(spec: ModelSpec, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = init_params(spec, g)
    masks = {n: torch.rand(params[n].shape, generator=g) < density for n in spec.masked_names()}
    return {n: p * masks[n] if n in masks else p for n, p in params.items()}, masks


@pytest.mark.parametrize("spec", [DIGITS_CNN, MNIST_CNN, CIFAR10_CNN, RELU_FLATTEN], ids=lambda s: s.name)
@pytest.mark.parametrize("sparse_layers", ["none", "all", "convs"])
def test_both_executors_compute_the_reference_logits(spec: ModelSpec, sparse_layers: str) -> None:
    params, masks = _sparse_model(spec, 0.3)
    x = torch.randn(5, *spec.input_shape, generator=torch.Generator().manual_seed(1))
    want = dense_logits(spec, params, x)
    grouped = forward(spec, {n: p.unsqueeze(0) for n, p in params.items()}, x.unsqueeze(0))[0]
    torch.testing.assert_close(grouped, want, **TOL)
    names = {"none": [], "all": list(masks), "convs": [n for n in masks if n.startswith("conv")]}[sparse_layers]
    patterns = {n: CsrPattern.from_mask(masks[n]) for n in names}
    leaves = {n: patterns[n].gather(p) if n in patterns else p for n, p in params.items()}
    torch.testing.assert_close(forward_mixed(spec, leaves, patterns, x), want, **TOL)


class _Recording(CsrLayers):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls: list[str] = []

    def conv(self, layer, act):
        self.calls.append(f"conv {layer.name}")
        return super().conv(layer, act)

    def conv_pool(self, layer, pool, relu, act):
        self.calls.append(f"conv_pool {layer.name} relu={relu}")
        return super().conv_pool(layer, pool, relu, act)

    def max_pool(self, pool, relu, act):
        self.calls.append(f"max_pool relu={relu}")
        return super().max_pool(pool, relu, act)


def test_a_sparse_conv_runs_fused_with_its_pool_and_a_dense_one_does_not() -> None:
    params, masks = _sparse_model(MNIST_CNN, 0.3)
    patterns = {"conv2.weight": CsrPattern.from_mask(masks["conv2.weight"])}
    leaves = {n: patterns[n].gather(p) if n in patterns else p for n, p in params.items()}
    executor = _Recording(leaves, patterns, 2)
    run_layers(MNIST_CNN, executor, torch.randn(2, 1, 28, 28))
    assert executor.calls == ["conv conv1", "max_pool relu=True", "conv_pool conv2 relu=True"]


def test_the_plan_fuses_pool_relu_and_moves_a_relu_after_flatten() -> None:
    layers = (Conv("c", 1, 2, 3), MaxPool(2, 1), ReLU(), Conv("d", 2, 2, 3), ReLU(), Flatten(), Linear("l", 8, 2))
    plan = forward_plan(layers)
    assert plan == [Conv("c", 1, 2, 3), FusedMaxPoolReLU(MaxPool(2, 1)), Conv("d", 2, 2, 3), Flatten(), ReLU(),
                    Linear("l", 8, 2)]
