import math

import pytest
import torch

from feddst_core.readjust import cosine_readjust_fraction, is_readjust_round, prune_and_grow, readjust_masks


def random_mask(shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < density


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
def test_prune_and_grow_keeps_count_and_regrows_only_inactive(fraction, density):
    mask = random_mask((40, 30), density, 1)
    g = torch.Generator().manual_seed(2)
    weights = torch.randn(40, 30, generator=g) * mask
    grads = torch.randn(40, 30, generator=g)
    new, change = prune_and_grow(mask, weights.abs(), grads.abs(), fraction)
    assert int(new.sum()) == int(mask.sum())
    flat = mask.reshape(-1)
    expected = min(math.floor(fraction * int(mask.sum())), int((~mask).sum()))
    assert len(change.dropped) == len(change.grown) == expected
    assert flat[change.dropped].all(), "only active weights are dropped"
    assert not flat[change.grown].any(), "only inactive weights are regrown"
    assert set(change.dropped.tolist()).isdisjoint(change.grown.tolist())
    assert (new.reshape(-1) ^ flat).sum() == 2 * expected


def test_drops_smallest_magnitudes_and_grows_largest_gradients():
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    weights = torch.tensor([0.9, -0.1, 0.5, 0.05, 0, 0, 0, 0])
    grads = torch.tensor([9.0, 9.0, 9.0, 9.0, 0.1, -3.0, 2.0, 0.2])  # active grads must be ignored
    new, change = prune_and_grow(mask, weights.abs(), grads.abs(), 0.5)
    assert sorted(change.dropped.tolist()) == [1, 3]
    assert sorted(change.grown.tolist()) == [5, 6]
    assert new.tolist() == [True, False, True, False, False, True, True, False]


def test_fraction_out_of_range_is_refused():
    with pytest.raises(ValueError):
        prune_and_grow(torch.ones(4, dtype=torch.bool), torch.ones(4), torch.ones(4), 1.5)


def test_cosine_schedule():
    assert cosine_readjust_fraction(0, 0.2, 100) == pytest.approx(0.2)
    assert cosine_readjust_fraction(50, 0.2, 100) == pytest.approx(0.1)
    assert cosine_readjust_fraction(100, 0.2, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_readjust_fraction(101, 0.2, 100) == 0.0
    values = [cosine_readjust_fraction(t, 0.2, 100) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)), "monotone decay"


def test_readjust_rounds_every_r_adj_until_t_end():
    rounds = [t for t in range(1, 60) if is_readjust_round(t, 10, 35)]
    assert rounds == [1, 11, 21, 31]


def test_readjust_masks_per_layer():
    masks = {"a": random_mask((10, 10), 0.3, 5), "b": random_mask((5, 8), 0.5, 6)}
    weights = {n: torch.randn(m.shape) * m for n, m in masks.items()}
    grads = {n: torch.randn(m.shape) for n, m in masks.items()}
    new, changes = readjust_masks(masks, weights, grads, 0.2)
    for n in masks:
        assert int(new[n].sum()) == int(masks[n].sum())
        assert len(changes[n].grown) == math.floor(0.2 * int(masks[n].sum()))


def test_non_finite_scores_keep_the_active_count():
    # a diverged client: NaN / Inf weights and gradients must not break the invariant (NaN ranks as 0)
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    drop = torch.tensor([float("nan"), float("inf"), float("nan"), 2.0, 0.0, 0.0, 0.0, 0.0])
    grow = torch.tensor([0.0, 0.0, 0.0, 0.0, float("nan"), float("inf"), 1.0, float("-inf")])
    new, change = prune_and_grow(mask, drop, grow, 0.5)
    assert int(new.sum()) == 4
    assert sorted(change.dropped.tolist()) == [0, 2]  # the NaN scores (0) go first
    assert sorted(change.grown.tolist()) == [5, 6]  # +Inf, then 1.0; NaN (0) and -Inf after
