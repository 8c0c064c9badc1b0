"""``feddst_core.models.forward``: the K == 1 layout (NCHW + native max-pool, the edge agent's path) computes
the same logits and parameter gradients as the K > 1 layout (channels-last + torch's pooling, the
simulator's path).

The same client is run alone (K = 1) and duplicated (K = 2): every client slice of the K = 2 result must
equal the K = 1 result within 1e-5 (float32, O(1) logits; a mean loss keeps gradients O(1) or smaller).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from feddst_core import native, pooling
from feddst_core.models import DIGITS_CNN, MNIST_CNN, ModelSpec, forward, forward_single, init_params

TOL = {"rtol": 1e-5, "atol": 1e-5}
NATIVE_EXPECTED = bool(os.environ.get("FEDDST_NATIVE", "1") != "0" and (native.available() or shutil.which("cc")))


def _loss_and_grads(spec: ModelSpec, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    leaves = {n: t.detach().clone().requires_grad_() for n, t in params.items()}
    logits = forward(spec, leaves, x)  # (K, B, classes)
    loss = F.cross_entropy(logits.reshape(-1, spec.num_classes), y.reshape(-1))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return logits.detach(), dict(zip(leaves, grads, strict=True))


@pytest.fixture
def pool_spy(monkeypatch):
    """Records, for every max_pool2d call, whether the native kernel was used."""
    calls: list[bool] = []
    real = pooling.native_pooling_applies

    def spy(x: torch.Tensor, kernel: int) -> bool:
        calls.append(real(x, kernel))
        return calls[-1]

    monkeypatch.setattr(pooling, "native_pooling_applies", spy)
    return calls


@pytest.mark.parametrize("background", [False, True], ids=["randn", "zero-background"])
@pytest.mark.parametrize("spec", [MNIST_CNN, DIGITS_CNN], ids=lambda s: s.name)
def test_single_client_layout_matches_multi_client_layout(spec: ModelSpec, background: bool,
                                                          pool_spy: list[bool]) -> None:
    g = torch.Generator().manual_seed(0)
    params = init_params(spec, g)
    batch = 5
    x = torch.randn(batch, *spec.input_shape, generator=g)
    if background:  # digit-like images: a zero background makes conv outputs equal (the bias) -> pooling ties
        c, h, w = spec.input_shape
        x[..., : h // 3, :] = 0
        x[..., :, : w // 3] = 0
    labels = torch.randint(0, spec.num_classes, (batch,), generator=g)
    n_pools = sum(type(layer).__name__ == "MaxPool" for layer in spec.layers)

    logits1, grads1 = _loss_and_grads(spec, {n: t.unsqueeze(0) for n, t in params.items()}, x.unsqueeze(0),
                                      labels.unsqueeze(0))
    assert pool_spy == [native.available()] * n_pools  # K = 1: NCHW, native pooling (when built)
    if NATIVE_EXPECTED:
        assert all(pool_spy)
    pool_spy.clear()

    logits2, grads2 = _loss_and_grads(spec, {n: torch.stack([t, t]) for n, t in params.items()},
                                      torch.stack([x, x]), torch.stack([labels, labels]))
    assert pool_spy == [False] * n_pools  # K = 2: channels-last, torch pooling

    assert logits1.shape == (1, batch, spec.num_classes) and logits2.shape == (2, batch, spec.num_classes)
    assert logits1.abs().max() > 0.01
    for k in range(2):
        torch.testing.assert_close(logits2[k], logits1[0], **TOL)
    for name, g1 in grads1.items():
        assert g1.abs().max() > 1e-4, name
        for k in range(2):
            # the K = 2 loss averages over twice the samples: each client's gradient is half its own
            torch.testing.assert_close(2 * grads2[name][k], g1[0], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_forward_single_uses_the_one_client_path() -> None:
    g = torch.Generator().manual_seed(1)
    params = init_params(DIGITS_CNN, g)
    x = torch.randn(3, *DIGITS_CNN.input_shape, generator=g)
    single = forward_single(DIGITS_CNN, params, x)
    batched = forward(DIGITS_CNN, {n: t.unsqueeze(0) for n, t in params.items()}, x.unsqueeze(0))[0]
    torch.testing.assert_close(single, batched, rtol=0, atol=0)
    assert single.shape == (3, DIGITS_CNN.num_classes)
