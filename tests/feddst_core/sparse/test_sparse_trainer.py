"""SparseLocalTrainer reproduces LocalTrainer (masked dense, K = 1) within 1e-4."""

from __future__ import annotations

import pytest
import torch

from feddst_core import native
from feddst_core.masks import init_masks, layer_budgets
from feddst_core.models import DIGITS_CNN, MNIST_CNN, ModelSpec, init_params
from feddst_core.sparse import (
    DEFAULT_THRESHOLDS,
    FC_HEAVY_MNIST_CNN,
    TORCH_ONLY_THRESHOLDS,
    SparseLocalTrainer,
    SparseThreshold,
    choose_layer_kernels,
    make_local_trainer,
)
from feddst_core.training import ClientData, LocalTrainer, TrainConfig


def _setup(spec: ModelSpec, sparsity: float, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = init_params(spec, g)
    shapes = {nm: s for nm, s in spec.parameter_shapes().items() if nm in spec.masked_names()}
    masks = init_masks(params, layer_budgets(shapes, sparsity, "erk"), "random", g)
    c, h, w = spec.input_shape
    data = ClientData(torch.randn(n, c, h, w, generator=g), torch.randint(0, spec.num_classes, (n,), generator=g))
    return params, masks, data


def _assert_same(sparse_out, dense_out, masks_in) -> None:
    assert set(sparse_out.params) == set(dense_out.params)
    for nm, t in dense_out.params.items():
        torch.testing.assert_close(sparse_out.params[nm], t, atol=1e-4, rtol=0)
    for nm, m in dense_out.masks.items():
        assert torch.equal(sparse_out.masks[nm], m), nm
        assert bool((sparse_out.params[nm][~sparse_out.masks[nm]] == 0).all()), f"{nm}: masked weight != 0"
    assert set(sparse_out.mask_changes) == set(dense_out.mask_changes)
    for nm, ch in dense_out.mask_changes.items():  # same sets; near-tied scores may list them reordered
        assert torch.equal(sparse_out.mask_changes[nm].dropped.sort().values, ch.dropped.sort().values)
        assert torch.equal(sparse_out.mask_changes[nm].grown.sort().values, ch.grown.sort().values)
    assert sparse_out.num_samples == dense_out.num_samples
    assert abs(sparse_out.train_loss - dense_out.train_loss) < 1e-4


@pytest.mark.parametrize("kernels", ["sparse", "auto", "dense"])
@pytest.mark.parametrize("readjust", [0.0, 0.3])
@pytest.mark.parametrize("prox_mu", [0.0, 0.1])
def test_round_matches_local_trainer(kernels: str, readjust: float, prox_mu: float) -> None:
    spec = MNIST_CNN
    params, masks, data = _setup(spec, sparsity=0.8, n=40)
    cfg = TrainConfig(local_epochs=3, prox_mu=prox_mu)
    ref = LocalTrainer(spec, cfg).train(params, masks, [data], [123], readjust)[0]
    trainer = SparseLocalTrainer(spec, cfg, kernels=kernels)
    out = trainer.train(params, masks, [data], [123], readjust)[0]
    if kernels == "sparse":
        assert set(trainer.last_layer_kernels.values()) == {"sparse"}
    _assert_same(out, ref, masks)
    if readjust:
        assert any(len(ch.grown) for ch in out.mask_changes.values())


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_digits_model_all_sparse_layers(sparsity: float) -> None:
    spec = DIGITS_CNN
    params, masks, data = _setup(spec, sparsity=sparsity, n=50, seed=5)
    cfg = TrainConfig(local_epochs=2, batch_size=16, momentum=0.5)
    ref = LocalTrainer(spec, cfg).train(params, masks, [data], [7], 0.2)[0]
    out = SparseLocalTrainer(spec, cfg, kernels="sparse").train(params, masks, [data], [7], 0.2)[0]
    _assert_same(out, ref, masks)


def test_global_weights_outside_mask_are_ignored() -> None:
    params, masks, data = _setup(MNIST_CNN, sparsity=0.9, n=20)
    noisy = {nm: t + (~masks[nm]).float() if nm in masks else t for nm, t in params.items()}  # nonzero where masked out
    cfg = TrainConfig(local_epochs=1)
    ref = LocalTrainer(MNIST_CNN, cfg).train(noisy, masks, [data], [1])[0]
    out = SparseLocalTrainer(MNIST_CNN, cfg, kernels="sparse").train(noisy, masks, [data], [1])[0]
    _assert_same(out, ref, masks)


def test_auto_policy_uses_thresholds_and_overrides() -> None:
    _, masks, _ = _setup(MNIST_CNN, sparsity=0.9, n=1)
    always = {"linear": (SparseThreshold(1.0, 0),), "conv": (SparseThreshold(1.0, 0),)}
    never = {"linear": (), "conv": (SparseThreshold(0.0, 0),)}
    assert set(choose_layer_kernels(MNIST_CNN, masks, "auto", always).values()) == {"sparse"}
    assert set(choose_layer_kernels(MNIST_CNN, masks, "auto", never).values()) == {"dense"}
    chosen = choose_layer_kernels(MNIST_CNN, masks, "auto", never, layer_kernels={"fc1": "sparse"})
    assert chosen["fc1"] == "sparse" and chosen["conv2"] == "dense"
    assert set(choose_layer_kernels(MNIST_CNN, masks, "dense").values()) == {"dense"}


def test_bad_config_errors() -> None:
    cfg = TrainConfig()
    with pytest.raises(ValueError, match="unknown kernels 'fast'.*auto, sparse, dense"):
        SparseLocalTrainer(MNIST_CNN, cfg, kernels="fast")
    with pytest.raises(ValueError, match="unknown kernels"):
        make_local_trainer(MNIST_CNN, cfg, "Sparse")
    _, masks, _ = _setup(MNIST_CNN, sparsity=0.5, n=1)
    with pytest.raises(ValueError, match="unknown layers"):
        choose_layer_kernels(MNIST_CNN, masks, "auto", layer_kernels={"fc9": "sparse"})
    with pytest.raises(ValueError, match="must be 'sparse' or 'dense'"):
        choose_layer_kernels(MNIST_CNN, masks, "auto", layer_kernels={"fc1": "csr"})
    params, masks, data = _setup(MNIST_CNN, sparsity=0.5, n=4)
    with pytest.raises(ValueError, match="one client at a time"):
        SparseLocalTrainer(MNIST_CNN, cfg).train(params, masks, [data, data], [1, 2])


def test_factory() -> None:
    cfg = TrainConfig()
    assert type(make_local_trainer(MNIST_CNN, cfg, "dense")) is LocalTrainer
    for k in ("auto", "sparse"):
        trainer = make_local_trainer(MNIST_CNN, cfg, k)
        assert isinstance(trainer, SparseLocalTrainer) and trainer.kernels == k


def test_default_table_picks_fc1_only_when_it_pays() -> None:
    _, masks, _ = _setup(MNIST_CNN, sparsity=0.0, n=1)
    assert set(choose_layer_kernels(MNIST_CNN, masks, "auto").values()) == {"dense"}  # dense masks


def _uniform_masks(spec, density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {nm: torch.rand(spec.parameter_shapes()[nm], generator=g) < density for nm in spec.masked_names()}


@pytest.mark.parametrize(("density", "expected"), [
    (0.5, {"conv1": "dense", "conv2": "dense", "fc1": "dense", "fc2": "dense"}),
    (0.2, {"conv1": "sparse", "conv2": "sparse", "fc1": "sparse", "fc2": "dense"}),
    (0.05, {"conv1": "sparse", "conv2": "sparse", "fc1": "sparse", "fc2": "dense"}),
])
def test_native_default_table_per_layer(density: float, expected: dict[str, str]) -> None:
    """The measured table (docs/sparse_kernels.md): convs and fc1 (256k weights) sparse at <= 0.3, the
    5k-weight fc2 never; without the native library convs stay dense (im2col loses)."""
    masks = _uniform_masks(MNIST_CNN, density)
    assert choose_layer_kernels(MNIST_CNN, masks, "auto", DEFAULT_THRESHOLDS) == expected
    torch_only = choose_layer_kernels(MNIST_CNN, masks, "auto", TORCH_ONLY_THRESHOLDS)
    assert torch_only["conv1"] == torch_only["conv2"] == "dense"
    assert torch_only["fc1"] == ("sparse" if density <= 0.1 else "dense")
    heavy = choose_layer_kernels(FC_HEAVY_MNIST_CNN, _uniform_masks(FC_HEAVY_MNIST_CNN, 0.45), "auto",
                                 DEFAULT_THRESHOLDS)
    assert heavy["fc1"] == "sparse" and heavy["conv2"] == "dense"  # 2.6M weights: sparse up to 0.5


@pytest.mark.parametrize("readjust_epoch", [0, 1, 3])  # before the first, mid-round, after the last epoch
def test_readjust_epoch_schedule_matches(readjust_epoch: int) -> None:
    params, masks, data = _setup(MNIST_CNN, sparsity=0.8, n=40, seed=3)
    cfg = TrainConfig(local_epochs=3, prox_mu=0.05, readjust_epoch=readjust_epoch)
    ref = LocalTrainer(MNIST_CNN, cfg).train(params, masks, [data], [9], 0.4)[0]
    out = SparseLocalTrainer(MNIST_CNN, cfg, kernels="sparse").train(params, masks, [data], [9], 0.4)[0]
    _assert_same(out, ref, masks)


def test_sparse_state_holds_no_dense_tensor_of_a_sparse_layer() -> None:
    """During steps a sparse layer is values + momentum (nnz,) and an int32 pattern: no dense weight,
    gradient, momentum or bool mask; the outcome's mask is rebuilt from the pattern."""
    spec = MNIST_CNN
    params, masks, data = _setup(spec, sparsity=0.8, n=8)
    trainer = SparseLocalTrainer(spec, TrainConfig(batch_size=8), kernels="sparse")
    state = trainer.start(params, masks)
    for _ in range(2):
        trainer.step(state, data.x, data.y)
    assert set(state.patterns) == set(masks) and not state.masks
    for nm, pattern in state.patterns.items():
        assert state.leaves[nm].shape == state.buffers[nm].shape == (pattern.nnz,)
        assert torch.equal(state.all_masks()[nm], masks[nm])


@pytest.mark.skipif(not native.available(), reason="native kernels not built")
def test_step_with_small_dense_leaves_runs_torch_on_one_thread_and_kernels_on_all(monkeypatch) -> None:
    """FC-heavy CNN at density 0.1 (conv1, conv2, fc1 sparse; fc2 and the biases dense and small): the step's torch
    ops (here the loss: the direct step's log-softmax) see one thread, the native kernels the caller's two, the
    caller's setting is restored, and the step's outcome is the same as a step run on one thread throughout (to
    float rounding)."""
    import feddst_core.native.tensor_kernels as wrappers
    import feddst_core.sparse.direct_step as direct_module

    params, masks, data = _setup(FC_HEAVY_MNIST_CNN, 0.9, 32)
    trainer = SparseLocalTrainer(FC_HEAVY_MNIST_CNN, TrainConfig(batch_size=32), kernels="sparse")
    seen_torch: list[int] = []
    seen_kernels: list[int] = []
    loss_fn, threads_fn = direct_module.F.log_softmax, wrappers._threads
    monkeypatch.setattr(direct_module.F, "log_softmax",
                        lambda *a, **k: seen_torch.append(torch.get_num_threads()) or loss_fn(*a, **k))
    monkeypatch.setattr(wrappers, "_threads", lambda: seen_kernels.append(threads_fn()) or seen_kernels[-1])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = trainer.start(params, masks)
        assert one.small_dense
        trainer.step(one, data.x, data.y)
        torch.set_num_threads(2)
        two = trainer.start(params, masks)
        seen_torch.clear()
        seen_kernels.clear()
        trainer.step(two, data.x, data.y)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen_torch == [1] and seen_kernels and set(seen_kernels) == {2}
    for nm, t in one.leaves.items():
        torch.testing.assert_close(two.leaves[nm], t, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not native.available(), reason=native.status())
@pytest.mark.parametrize("prox_mu", [0.0, 0.1])
def test_sparse_linear_weights_take_their_sgd_step_in_their_backward(monkeypatch, prox_mu: float) -> None:
    """fc1 and fc2 (sparse Linears) step inside their backward: autograd is never asked for their gradients and
    sgd_step_ never sees them, and three steps (momentum buffer created on the first) leave every leaf and buffer
    where the separate gradient-then-SGD path leaves them, to float rounding."""
    import feddst_core.sparse.trainer as trainer_module

    params, masks, data = _setup(FC_HEAVY_MNIST_CNN, 0.9, 64)
    cfg = TrainConfig(batch_size=32, weight_decay=1e-3, prox_mu=prox_mu)
    trainer = SparseLocalTrainer(FC_HEAVY_MNIST_CNN, cfg, kernels="sparse")
    stepped: list[int] = []
    sgd_fn = native.sgd_step_
    monkeypatch.setattr(native, "sgd_step_", lambda p, *a, **k: stepped.append(p.data_ptr()) or sgd_fn(p, *a, **k))
    fused = trainer.start(params, masks)
    for start in (0, 32, 0):
        trainer.step(fused, data.x[start:start + 32], data.y[start:start + 32])
    linear = {fused.leaves[nm].data_ptr() for nm in ("fc1.weight", "fc2.weight")}
    assert set(fused.patterns) >= {"fc1.weight", "fc2.weight"} and not linear & set(stepped)
    assert len(stepped) == 3 * (len(fused.leaves) - 2)
    monkeypatch.setattr(trainer_module.SparseLocalTrainer, "_fused_sgd", lambda self, state: {})
    separate = trainer.start(params, masks)
    for start in (0, 32, 0):
        trainer.step(separate, data.x[start:start + 32], data.y[start:start + 32])
    assert not torch.equal(fused.leaves["fc1.weight"], trainer.start(params, masks).leaves["fc1.weight"])
    for nm, t in separate.leaves.items():
        torch.testing.assert_close(fused.leaves[nm], t, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fused.buffers[nm], separate.buffers[nm], atol=1e-6, rtol=1e-5)


def test_kernel_threads_overrides_torch_setting_inside_the_block_only() -> None:
    import feddst_core.native.tensor_kernels as wrappers

    outside = wrappers._threads()
    with native.kernel_threads(3):
        assert wrappers._threads() == 3
        with native.kernel_threads(0):
            assert wrappers._threads() == 1
        assert wrappers._threads() == 3
    assert wrappers._threads() == outside == max(1, torch.get_num_threads())
