"""native.sgd_step_ against the torch ops of feddst_core.training.sgd_update (and the FedProx term)."""

from __future__ import annotations

import itertools

import pytest
import torch

from feddst_core import native
from feddst_core.training import TrainConfig, sgd_update

pytestmark = pytest.mark.skipif(not native.available(), reason=native.status())


@pytest.mark.parametrize(("momentum", "weight_decay", "masked", "prox_mu"),
                         list(itertools.product([0.0, 0.9], [0.0, 1e-3], [False, True], [0.0, 0.01])))
def test_sgd_step_matches_sgd_update_over_steps(momentum, weight_decay, masked, prox_mu):
    g = torch.Generator().manual_seed(7)
    n = 3000  # not a multiple of the kernel's chunk
    cfg = TrainConfig(lr=0.05, momentum=momentum, weight_decay=weight_decay, prox_mu=prox_mu)
    mask = torch.rand(n, generator=g) < 0.5 if masked else None
    anchor = torch.randn(n, generator=g) if prox_mu else None
    p_ref = torch.randn(n, generator=g) * (mask if masked else 1)
    p = p_ref.clone()
    buffers: dict[str, torch.Tensor] = {}
    buf = torch.empty(n) if momentum else None
    for step in range(4):
        grad = torch.randn(n, generator=g)
        keep = grad.clone()
        native.sgd_step_(p, grad, buf, cfg.lr, momentum, weight_decay, mask, anchor, prox_mu, first=step == 0)
        assert torch.equal(grad, keep)  # the gradient is read, not modified
        ref_grad = grad.clone() if anchor is None else grad.add(p_ref - anchor, alpha=prox_mu)
        sgd_update("w", p_ref, ref_grad, mask, buffers, cfg)
        torch.testing.assert_close(p, p_ref, atol=1e-6, rtol=1e-6)
        if momentum:
            torch.testing.assert_close(buf, buffers["w"], atol=1e-6, rtol=1e-6)
    if masked:
        assert torch.equal(p[~mask], torch.zeros_like(p[~mask]))  # masked-out weights stay exactly 0


def test_sgd_step_refuses_mismatched_tensors():
    p = torch.zeros(10)
    with pytest.raises(ValueError, match="grad has 9 elements"):
        native.sgd_step_(p, torch.zeros(9), torch.zeros(10), 0.1, 0.9)
    with pytest.raises(ValueError, match="momentum needs a buffer"):
        native.sgd_step_(p, torch.zeros(10), None, 0.1, 0.9)
    with pytest.raises(ValueError, match="mask must be torch.bool"):
        native.sgd_step_(p, torch.zeros(10), None, 0.1, mask=torch.ones(10))
    with pytest.raises(ValueError, match="contiguous"):
        native.sgd_step_(p, torch.zeros(20)[::2], None, 0.1)
