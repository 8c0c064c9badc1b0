"""The autograd-free sparse step (``feddst_core.sparse.direct_step``) against the autograd path and against an
independent oracle (plain dense torch autograd on the masked dense model, float64), plus its fall-backs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dense_reference import dense_logits

import feddst_core.sparse.trainer as trainer_module
from feddst_core import native
from feddst_core.models import (
    CIFAR10_CNN,
    DIGITS_CNN,
    MNIST_CNN,
    Conv,
    Flatten,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    init_params,
)
from feddst_core.sparse import FC_HEAVY_MNIST_CNN, SparseLocalTrainer
from feddst_core.sparse.direct_step import direct_plan, supports_direct_step
from feddst_core.training import ClientData, TrainConfig

pytestmark = pytest.mark.skipif(not native.available(), reason=native.status())


def _problem(spec: ModelSpec, density: float, n: int, seed: int = 0):
    """Params, uniform random masks of ``density`` (every weight), data of n samples."""
    g = torch.Generator().manual_seed(seed)
    params = init_params(spec, g)
    masks = {nm: torch.rand(params[nm].shape, generator=g) < density for nm in spec.masked_names()}
    c, h, w = spec.input_shape
    data = ClientData(torch.randn(n, c, h, w, generator=g), torch.randint(0, spec.num_classes, (n,), generator=g))
    return params, masks, data


class _Counter:
    """Counts the calls of a wrapped function."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _run_steps(trainer: SparseLocalTrainer, params, masks, data, batch: int, steps: int):
    state = trainer.start(params, masks)
    losses = []
    for i in range(steps):
        start = (i * batch) % len(data)
        losses.append(trainer.step(state, data.x[start:start + batch], data.y[start:start + batch]))
    return state, torch.stack(losses)


CASES = [  # (spec, density, batch, layer_kernels overrides)
    (FC_HEAVY_MNIST_CNN, 0.1, 32, {}),  # the bench case: conv1, conv2, fc1 sparse; fc2 dense
    (FC_HEAVY_MNIST_CNN, 0.05, 7, {}),
    (MNIST_CNN, 0.2, 8, {"fc1": "sparse", "fc2": "sparse"}),  # every layer sparse
    (MNIST_CNN, 0.3, 5, {"fc1": "dense", "fc2": "dense"}),  # sparse convs, dense linears
    (DIGITS_CNN, 0.5, 1, {"fc1": "sparse"}),  # batch 1: batch-last == contiguous
    (CIFAR10_CNN, 0.15, 6, {"fc1": "sparse", "fc2": "dense", "fc3": "sparse"}),  # three linears, ReLUs between
]


def _trainer(spec, cfg, overrides, direct: bool) -> SparseLocalTrainer:
    kernels = {ly.name: "sparse" for ly in spec.layers if isinstance(ly, Conv)} | overrides
    return SparseLocalTrainer(spec, cfg, kernels="auto", layer_kernels=kernels, use_direct_step=direct)


@pytest.mark.parametrize(("spec", "density", "batch", "overrides"), CASES)
@pytest.mark.parametrize("prox_mu", [0.0, 0.1])
def test_direct_step_equals_autograd_path(monkeypatch, spec, density, batch, overrides, prox_mu) -> None:
    """Three steps (momentum buffers created on the first): losses, leaves and momentum equal the autograd path's
    (float32, same kernels: to float rounding), and the direct step never calls torch.autograd.grad."""
    params, masks, data = _problem(spec, density, 2 * batch)
    cfg = TrainConfig(batch_size=batch, weight_decay=1e-3, prox_mu=prox_mu)
    grad_calls = _Counter(torch.autograd.grad)
    monkeypatch.setattr(trainer_module.torch.autograd, "grad", grad_calls)
    direct, direct_losses = _run_steps(_trainer(spec, cfg, overrides, True), params, masks, data, batch, 3)
    assert grad_calls.calls == 0
    reference, ref_losses = _run_steps(_trainer(spec, cfg, overrides, False), params, masks, data, batch, 3)
    assert grad_calls.calls == 3
    torch.testing.assert_close(direct_losses, ref_losses, atol=1e-6, rtol=1e-6)
    assert set(direct.leaves) == set(reference.leaves) and set(direct.buffers) == set(reference.buffers)
    for nm, t in reference.leaves.items():
        torch.testing.assert_close(direct.leaves[nm], t, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(direct.buffers[nm], reference.buffers[nm], atol=1e-6, rtol=1e-5)


def _dense_oracle(spec: ModelSpec, params, masks, data, cfg: TrainConfig, batch: int, steps: int):
    """torch.optim.SGD-style steps of the masked dense model in float64 with F.conv2d / F.max_pool2d / F.linear
    and autograd: (losses, final dense params)."""
    p = {nm: (t.double() * masks[nm] if nm in masks else t.double()).requires_grad_() for nm, t in params.items()}
    anchor = {nm: t.detach().clone() for nm, t in p.items()}
    buffers: dict[str, torch.Tensor] = {}
    losses = []
    for i in range(steps):
        start = (i * batch) % len(data)
        act = dense_logits(spec, p, data.x[start:start + batch].double())
        loss = F.cross_entropy(act, data.y[start:start + batch])
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for (nm, t), g in zip(p.items(), grads, strict=True):
                g = g + cfg.prox_mu * (t - anchor[nm])
                if nm in masks:
                    g = g * masks[nm]
                g = g + cfg.weight_decay * t
                buffers[nm] = g if nm not in buffers else cfg.momentum * buffers[nm] + g
                t -= cfg.lr * buffers[nm]
        losses.append(float(loss.detach()))
    return torch.tensor(losses, dtype=torch.float64), {nm: t.detach() for nm, t in p.items()}


@pytest.mark.parametrize(("spec", "density", "batch", "overrides"), CASES)
def test_direct_step_matches_dense_float64_autograd(spec, density, batch, overrides) -> None:
    """Independent oracle: the direct step's losses and weights after three steps match plain dense autograd in
    float64 on the masked model (float32 rounding apart), and masked-out weights stay exactly 0."""
    params, masks, data = _problem(spec, density, 2 * batch, seed=4)
    cfg = TrainConfig(batch_size=batch, lr=0.05, weight_decay=1e-3, prox_mu=0.05)
    trainer = _trainer(spec, cfg, overrides, True)
    state, losses = _run_steps(trainer, params, masks, data, batch, 3)
    ref_losses, ref_params = _dense_oracle(spec, params, masks, data, cfg, batch, 3)
    torch.testing.assert_close(losses.double(), ref_losses, atol=2e-5, rtol=1e-5)
    dense = state.dense_params()
    for nm, t in ref_params.items():
        torch.testing.assert_close(dense[nm].double(), t, atol=2e-5, rtol=1e-4)
        if nm in masks:
            assert bool((dense[nm][~masks[nm]] == 0).all()), nm


@pytest.mark.parametrize("readjust", [0.0, 0.3])
def test_round_with_readjustment_equals_autograd_path(readjust: float) -> None:
    """A whole round (epochs, readjustment halfway, CSR rebuilt for the new masks): the direct step's outcome
    equals the autograd path's (params, masks, mask changes, loss)."""
    spec = FC_HEAVY_MNIST_CNN
    params, masks, data = _problem(spec, 0.1, 40, seed=2)
    cfg = TrainConfig(batch_size=16, local_epochs=2)
    direct = SparseLocalTrainer(spec, cfg).train(params, masks, [data], [5], readjust)[0]
    ref = SparseLocalTrainer(spec, cfg, use_direct_step=False).train(params, masks, [data], [5], readjust)[0]
    for nm, t in ref.params.items():
        torch.testing.assert_close(direct.params[nm], t, atol=1e-6, rtol=1e-5)
        assert torch.equal(direct.masks.get(nm, torch.empty(0)), ref.masks.get(nm, torch.empty(0))), nm
    assert set(direct.mask_changes) == set(ref.mask_changes)
    for nm, ch in ref.mask_changes.items():
        assert torch.equal(direct.mask_changes[nm].dropped.sort().values, ch.dropped.sort().values)
        assert torch.equal(direct.mask_changes[nm].grown.sort().values, ch.grown.sort().values)
    assert abs(direct.train_loss - ref.train_loss) < 1e-6
    if readjust:
        assert any(len(ch.grown) for ch in direct.mask_changes.values())


def test_direct_plan_of_the_paper_models() -> None:
    convs, linears = direct_plan(FC_HEAVY_MNIST_CNN)
    assert [(c.layer.name, c.pool_kernel, c.relu, c.batch_last) for c in convs] == [
        ("conv1", 3, True, False), ("conv2", 3, True, True)]
    assert [(lin.layer.name, lin.relu) for lin in linears] == [("fc1", True), ("fc2", False)]
    assert [lin.relu for lin in direct_plan(CIFAR10_CNN)[1]] == [True, True, False]


def _spec(*layers) -> ModelSpec:
    return ModelSpec("t", (1, 8, 8), 10, tuple(layers))


@pytest.mark.parametrize("layers", [
    (Conv("c", 1, 4, 3), MaxPool(2, 2), ReLU(), Flatten(), Linear("f", 36, 10)),  # strided pool
    (Conv("c", 1, 4, 3), ReLU(), Flatten(), Linear("f", 144, 10)),  # conv without a pool
    (Conv("c", 1, 4, 3), MaxPool(2, 1), Flatten(), Linear("f", 100, 10), ReLU()),  # ReLU on the logits
    (Conv("c", 1, 4, 3), MaxPool(2, 1), Conv("d", 4, 4, 3), Flatten(), Linear("f", 64, 10)),  # d has no pool
])
def test_unsupported_layer_shapes_have_no_plan(layers) -> None:
    assert direct_plan(_spec(*layers)) is None


def test_supported_small_spec_without_relu_after_pool() -> None:
    spec = _spec(Conv("c", 1, 4, 3), MaxPool(2, 1), Flatten(), Linear("f", 100, 10))
    assert direct_plan(spec) is not None
    params, masks, data = _problem(spec, 0.5, 6)
    cfg = TrainConfig(batch_size=3)
    direct, losses = _run_steps(SparseLocalTrainer(spec, cfg, kernels="sparse"), params, masks, data, 3, 2)
    ref, ref_losses = _run_steps(SparseLocalTrainer(spec, cfg, kernels="sparse", use_direct_step=False),
                                 params, masks, data, 3, 2)
    torch.testing.assert_close(losses, ref_losses, atol=1e-6, rtol=1e-6)
    for nm, t in ref.leaves.items():
        torch.testing.assert_close(direct.leaves[nm], t, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["dense_conv", "no_native", "float64", "flag_off"])
def test_fall_back_to_the_autograd_path(monkeypatch, case: str) -> None:
    """A dense Conv, missing native kernels, float64 leaves or use_direct_step=False: the step runs through
    autograd (torch.autograd.grad called once per step), direct_step is never called, and it still trains."""
    import feddst_core.sparse.direct_step as direct_module

    spec = MNIST_CNN
    params, masks, data = _problem(spec, 0.2, 8)
    overrides = {"conv1": "dense"} if case == "dense_conv" else {}
    trainer = _trainer(spec, TrainConfig(batch_size=8), overrides, case != "flag_off")
    state = trainer.start(params, masks)
    if case == "float64":
        state.leaves = {nm: t.detach().double().requires_grad_() for nm, t in state.leaves.items()}
    if case == "no_native":
        monkeypatch.setattr(direct_module.native, "available", lambda: False)
    assert supports_direct_step(spec, state.leaves, state.patterns, trainer._fused_sgd(state)) is (
        case == "flag_off")
    grad_calls = _Counter(torch.autograd.grad)
    monkeypatch.setattr(trainer_module.torch.autograd, "grad", grad_calls)
    monkeypatch.setattr(trainer_module, "direct_step", lambda *a, **k: pytest.fail("direct_step called"))
    before = {nm: t.detach().clone() for nm, t in state.leaves.items()}
    loss = trainer.step(state, data.x.double() if case == "float64" else data.x, data.y)
    assert grad_calls.calls == 1 and torch.isfinite(loss)
    assert any(not torch.equal(before[nm], t) for nm, t in state.leaves.items())
