import math

import pytest
import torch

from feddst_core.masks import density, init_masks, layer_budgets, topk_mask
from feddst_core.models import CIFAR10_CNN, DIGITS_CNN, MNIST_CNN, init_params


def masked_shapes(spec):
    shapes = spec.parameter_shapes()
    return {n: shapes[n] for n in spec.masked_names()}


@pytest.mark.parametrize("spec", [MNIST_CNN, CIFAR10_CNN, DIGITS_CNN], ids=lambda s: s.name)
@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.98])
def test_budgets_sum_to_target_density(spec, distribution, sparsity):
    shapes = masked_shapes(spec)
    total = sum(math.prod(s) for s in shapes.values())
    budgets = layer_budgets(shapes, sparsity, distribution)
    assert sum(budgets.values()) == round((1 - sparsity) * total)
    for name, k in budgets.items():
        assert 1 <= k <= math.prod(shapes[name])


def test_erk_gives_small_layers_higher_density_than_big_ones():
    shapes = masked_shapes(MNIST_CNN)
    budgets = layer_budgets(shapes, 0.8, "erk")
    dens = {n: budgets[n] / math.prod(shapes[n]) for n in shapes}
    assert dens["fc2.weight"] > dens["fc1.weight"]
    assert dens["conv1.weight"] > dens["fc1.weight"]


def test_erk_caps_layers_at_fully_dense_and_redistributes():
    shapes = masked_shapes(MNIST_CNN)
    budgets = layer_budgets(shapes, 0.5, "erk")  # at 50% the small layers would exceed density 1
    assert budgets["conv1.weight"] == 250 and budgets["fc2.weight"] == 500
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(budgets.values()) == round(0.5 * total)


def test_uniform_gives_every_layer_the_same_density():
    shapes = masked_shapes(MNIST_CNN)
    budgets = layer_budgets(shapes, 0.5, "uniform")
    for name, k in budgets.items():
        assert abs(k / math.prod(shapes[name]) - 0.5) < 1e-2


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="sparsity must be in"):
        layer_budgets(masked_shapes(MNIST_CNN), bad, "erk")


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="unknown sparsity distribution"):
        layer_budgets(masked_shapes(MNIST_CNN), 0.5, "lognormal")


def test_magnitude_init_keeps_largest_weights_and_budget():
    params = init_params(MNIST_CNN, torch.Generator().manual_seed(0))
    budgets = layer_budgets(masked_shapes(MNIST_CNN), 0.8, "erk")
    masks = init_masks(params, budgets, "magnitude")
    for name, k in budgets.items():
        m = masks[name]
        assert int(m.sum()) == k
        w = params[name].abs()
        if k < m.numel():
            assert w[m].min() >= w[~m].max()
    assert abs(density(masks) - 0.2) < 1e-4


def test_random_init_is_seeded():
    params = init_params(MNIST_CNN, torch.Generator().manual_seed(0))
    budgets = layer_budgets(masked_shapes(MNIST_CNN), 0.8, "erk")
    a = init_masks(params, budgets, "random", torch.Generator().manual_seed(3))
    b = init_masks(params, budgets, "random", torch.Generator().manual_seed(3))
    c = init_masks(params, budgets, "random", torch.Generator().manual_seed(4))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_topk_mask_breaks_ties_by_lowest_index():
    m = topk_mask(torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5]), 2)
    assert m.tolist() == [False, True, True, False, False]
