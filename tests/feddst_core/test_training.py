import ast
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from feddst_core.masks import init_masks, layer_budgets
from feddst_core.models import DIGITS_CNN, forward_single, init_params
from feddst_core.training import ClientData, LocalTrainer, TrainConfig, client_seed

SPEC = DIGITS_CNN


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return ClientData(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def sparse_model(sparsity=0.8, seed=0):
    params = init_params(SPEC, torch.Generator().manual_seed(seed))
    shapes = SPEC.parameter_shapes()
    budgets = layer_budgets({n: shapes[n] for n in SPEC.masked_names()}, sparsity, "erk")
    masks = init_masks(params, budgets, "magnitude")
    for n, m in masks.items():
        params[n] = params[n] * m
    return params, masks


def test_masked_weights_stay_exactly_zero_with_momentum_and_weight_decay():
    params, masks = sparse_model()
    trainer = LocalTrainer(SPEC, TrainConfig(lr=0.05, momentum=0.9, weight_decay=0.01, batch_size=8,
                                             local_epochs=3))
    (out,) = trainer.train(params, masks, [make_data(20, 1)], [7])
    for n, m in masks.items():
        assert torch.count_nonzero(out.params[n][~m]) == 0
        assert torch.count_nonzero(out.params[n][m]) > 0.9 * int(m.sum())
        assert not torch.equal(out.params[n], params[n])


def test_dense_training_matches_torch_optim_sgd():
    """With all-true masks the trainer is exactly torch.optim.SGD on the same batches."""
    params, _ = sparse_model(sparsity=0.0)
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in SPEC.masked_names()}
    cfg = TrainConfig(lr=0.03, momentum=0.9, weight_decay=0.001, batch_size=6, local_epochs=2)
    data = make_data(15, 3)
    (out,) = LocalTrainer(SPEC, cfg).train(params, masks, [data], [11])

    ref = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    opt = torch.optim.SGD(list(ref.values()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(11)
    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad()
            F.cross_entropy(forward_single(SPEC, ref, data.x[idx]), data.y[idx]).backward()
            opt.step()
    for n in params:
        torch.testing.assert_close(out.params[n], ref[n].detach(), atol=1e-6, rtol=1e-5)


def test_batched_clients_equal_one_by_one():
    params, masks = sparse_model()
    trainer = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=2))
    datasets = [make_data(20, s) for s in (1, 2, 3)]
    seeds = [client_seed(0, 1, c) for c in range(3)]
    together = trainer.train(params, masks, datasets, seeds, readjust_fraction=0.2)
    for i in range(3):
        (alone,) = trainer.train(params, masks, [datasets[i]], [seeds[i]], readjust_fraction=0.2)
        for n in params:
            torch.testing.assert_close(together[i].params[n], alone.params[n], atol=1e-5, rtol=1e-4)
        for n in masks:
            assert torch.equal(together[i].masks[n], alone.masks[n])


def test_readjustment_after_last_epoch_uploads_grown_weights_at_zero():
    params, masks = sparse_model()
    trainer = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=2, readjust_epoch=2))
    (out,) = trainer.train(params, masks, [make_data(20, 4)], [5], readjust_fraction=0.3)
    changed = 0
    for n, m in masks.items():
        assert int(out.masks[n].sum()) == int(m.sum())
        grown = out.mask_changes[n].grown
        assert torch.count_nonzero(out.params[n].reshape(-1)[grown]) == 0, "grown weights start at 0"
        assert torch.count_nonzero(out.params[n][~out.masks[n]]) == 0
        changed += len(grown)
    assert changed > 0


def test_mid_round_readjustment_trains_grown_weights_and_zeroes_dropped_ones():
    params, masks = sparse_model()
    trainer = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=4, momentum=0.9))
    assert trainer.readjust_epoch() == 2  # default: halfway through local training
    (out,) = trainer.train(params, masks, [make_data(20, 4)], [5], readjust_fraction=0.3)
    grown_nonzero = 0
    for n, m in masks.items():
        change = out.mask_changes[n]
        flat = out.params[n].reshape(-1)
        assert int(out.masks[n].sum()) == int(m.sum())
        # dropped weights stay exactly zero although their momentum was non-zero before the drop
        assert torch.count_nonzero(flat[change.dropped]) == 0
        assert torch.count_nonzero(out.params[n][~out.masks[n]]) == 0
        grown_nonzero += int(torch.count_nonzero(flat[change.grown]))
    assert grown_nonzero > 0, "grown weights were trained after the readjustment"


def test_fedprox_term_changes_training():
    params, masks = sparse_model()
    data = make_data(20, 6)
    base = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=3)).train(params, masks, [data], [1])[0]
    prox = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=3, prox_mu=1.0)).train(
        params, masks, [data], [1])[0]
    drift_base = sum(float((base.params[n] - params[n]).norm()) for n in params)
    drift_prox = sum(float((prox.params[n] - params[n]).norm()) for n in params)
    assert any(not torch.allclose(base.params[n], prox.params[n]) for n in params)
    assert drift_prox < drift_base, "the proximal term pulls weights toward the global model"


def test_same_seed_same_result_and_inputs_untouched():
    params, masks = sparse_model()
    before = copy.deepcopy(params)
    trainer = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=2))
    a = trainer.train(params, masks, [make_data(20, 1)], [9])[0]
    b = trainer.train(params, masks, [make_data(20, 1)], [9])[0]
    c = trainer.train(params, masks, [make_data(20, 1)], [10])[0]
    assert all(torch.equal(a.params[n], b.params[n]) for n in params)
    assert any(not torch.equal(a.params[n], c.params[n]) for n in params)
    assert all(torch.equal(before[n], params[n]) for n in params)


def test_unequal_client_sizes_cannot_be_batched():
    params, masks = sparse_model()
    with pytest.raises(ValueError, match="same number of samples"):
        LocalTrainer(SPEC, TrainConfig()).train(params, masks, [make_data(10, 1), make_data(12, 2)], [1, 2])


def client_seeds_in_a_fresh_process(hash_seed: str) -> list[int]:
    """client_seed over a small grid, computed by another interpreter with its own PYTHONHASHSEED."""
    code = ("from feddst_core.training import client_seed; "
            "print([client_seed(s, r, c) for s in (0, 7) for r in range(3) for c in range(3)])")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return ast.literal_eval(out)


def test_client_seed_is_stable_and_distinct():
    # the simulator and a device compute it in different processes: it must not depend on hash() salts
    # or on any random state of the process
    here = [client_seed(s, r, c) for s in (0, 7) for r in range(3) for c in range(3)]
    assert client_seeds_in_a_fresh_process("1") == here == client_seeds_in_a_fresh_process("2")
    assert all(0 <= seed < 2**63 for seed in here)  # fits torch.Generator.manual_seed and numpy
    assert len({client_seed(0, r, c) for r in range(5) for c in range(5)}) == 25
