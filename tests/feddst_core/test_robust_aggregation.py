"""Robust aggregation and update clipping against independent numpy/scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from feddst_core.models import get_model_spec
from feddst_core.robust_aggregation import HolderStackAccumulator, aggregate_over_holders, clip_update
from feddst_core.strategies import ClientReply, FedStrategy, StrategyConfig


def _oracle(stack: np.ndarray, held: np.ndarray, rule: str, trim: float) -> np.ndarray:
    """Dense (K, n) stack with NaN for non-holders, reduced column by column with numpy / scipy."""
    dense = np.where(held, stack, np.nan)
    out = np.zeros(stack.shape[1:])
    for j in np.ndindex(*stack.shape[1:]):
        col = dense[(slice(None), *j)]
        col = col[~np.isnan(col)]
        if col.size == 0:
            continue
        if rule == "mean":
            out[j] = col.mean()
        elif rule == "median":
            out[j] = np.median(col)
        else:
            out[j] = stats.trim_mean(col, trim)
    return out


@pytest.mark.parametrize("rule,trim", [("mean", 0.0), ("median", 0.0), ("trimmed_mean", 0.1),
                                       ("trimmed_mean", 0.2), ("trimmed_mean", 0.34), ("trimmed_mean", 0.49)])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_matches_numpy_reference_over_holders(rule, trim, k):
    rng = np.random.default_rng(k * 100 + int(trim * 100))
    stack = rng.normal(size=(k, 7, 5)) * rng.choice([1.0, 1000.0], size=(k, 1, 1))  # some clients outliers
    held = rng.random((k, 7, 5)) < 0.6
    agg, count = aggregate_over_holders(torch.from_numpy(stack), torch.from_numpy(held), rule, trim)
    np.testing.assert_allclose(agg.numpy(), _oracle(stack, held, rule, trim), rtol=1e-12, atol=1e-12)
    assert np.array_equal(count.numpy(), held.sum(axis=0))


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_fixed_cut_matches_sorting_and_slicing(cut):
    rng = np.random.default_rng(cut)
    stack = rng.normal(size=(7, 40))
    held = rng.random((7, 40)) < 0.7
    agg, count = aggregate_over_holders(torch.from_numpy(stack), torch.from_numpy(held), "trimmed_mean", cut=cut)
    for j in range(40):
        col = np.sort(stack[held[:, j], j])
        expected = col[cut:col.size - cut].mean() if col.size > 2 * cut else 0.0
        assert agg[j].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hand_computed_column():
    # one position, five holders (plus a non-holder with a huge value that must be ignored)
    values = torch.tensor([[1.0], [2.0], [100.0], [3.0], [-50.0], [1e9]])
    held = torch.tensor([[True], [True], [True], [True], [True], [False]])
    assert aggregate_over_holders(values, held, "median")[0].item() == 2.0
    assert aggregate_over_holders(values, held, "trimmed_mean", 0.2)[0].item() == 2.0  # drops -50 and 100
    assert aggregate_over_holders(values, held, "mean")[0].item() == pytest.approx(56 / 5)


def test_bad_rule_or_fraction_is_a_clear_error():
    x, h = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown aggregation 'mode'"):
        aggregate_over_holders(x, h, "mode")
    with pytest.raises(ValueError, match="trim fraction must be in"):
        aggregate_over_holders(x, h, "trimmed_mean", 0.5)
    with pytest.raises(ValueError, match="share a"):
        aggregate_over_holders(x, h[:1], "median")


def test_clip_update_matches_the_definition():
    g = {"w": torch.tensor([3.0, 4.0, 0.0, 1.0]), "b": torch.tensor([1.0])}
    held = torch.tensor([True, True, True, False])  # position 2 grown by the client (global 0)
    client = {"w": torch.tensor([3.0 + 30.0, 4.0, 40.0, 0.0]), "b": torch.tensor([1.05])}
    clipped, scales = clip_update(client, {"w": held}, g, max_ratio=0.5)
    # ||g over held|| = 5, bound 2.5; delta over held = (30, 0, 40), norm 50 -> scale 0.05
    assert scales["w"] == pytest.approx(0.05)
    assert clipped["w"].tolist() == pytest.approx([3.0 + 1.5, 4.0, 2.0, 0.0])
    assert scales["b"] == 1.0 and torch.equal(clipped["b"], client["b"])  # 0.05 <= 0.5 * 1: untouched
    ratio = torch.linalg.vector_norm((clipped["w"] - g["w"]) * held) / torch.linalg.vector_norm(g["w"] * held)
    assert float(ratio) == pytest.approx(0.5)


def test_clip_update_of_a_zero_global_layer_keeps_the_global_values():
    g = {"w": torch.zeros(3)}
    clipped, scales = clip_update({"w": torch.tensor([1.0, 2.0, 3.0])}, {}, g, max_ratio=10.0)
    assert scales["w"] == 0.0 and clipped["w"].tolist() == [0.0, 0.0, 0.0]


def _replies(strategy, state, n, attacker_scale=None):
    gen = torch.Generator().manual_seed(3)
    replies = []
    for i in range(n):
        params = {k: v + 0.01 * torch.randn(v.shape, generator=gen) * (state.masks[k] if k in state.masks else 1)
                  for k, v in state.params.items()}
        if attacker_scale is not None and i == 0:
            params = {k: state.params[k] + attacker_scale * (v - state.params[k]) for k, v in params.items()}
        replies.append(ClientReply(i, params, state.masks, 10))
    return replies


@pytest.mark.parametrize("rule", ["trimmed_mean", "median"])
def test_robust_strategy_ignores_one_scaled_update(rule):
    spec = get_model_spec("digits_cnn")
    honest = FedStrategy(spec, StrategyConfig(clients_per_round=10, aggregation=rule, trim_fraction=0.1))
    state = honest.initialize(0)
    clean, _ = honest.aggregate_round(1, state, _replies(honest, state, 10))
    attacked, _ = honest.aggregate_round(1, state, _replies(honest, state, 10, attacker_scale=1000.0))
    mean = FedStrategy(spec, StrategyConfig(clients_per_round=10))
    poisoned, _ = mean.aggregate_round(1, state, _replies(mean, state, 10, attacker_scale=1000.0))
    for name in state.params:
        gap = float((attacked.params[name] - clean.params[name]).abs().max())
        moved = float((poisoned.params[name] - clean.params[name]).abs().max())
        assert gap < 0.02 < moved, name  # the honest spread is 0.01; the mean moves by ~1000 * 0.01 / 10


def test_clipping_bounds_the_poisoned_mean():
    spec = get_model_spec("digits_cnn")
    strategy = FedStrategy(spec, StrategyConfig(clients_per_round=10, clip_update_norm=0.1))
    state = strategy.initialize(0)
    new, metrics = strategy.aggregate_round(1, state, _replies(strategy, state, 10, attacker_scale=1000.0))
    assert metrics["clipped_updates"] >= 1.0
    for name, g in state.params.items():
        held = state.masks.get(name, torch.ones_like(g, dtype=torch.bool))
        # each client moves at most 0.1 ||g|| per layer, so the mean does too
        step = torch.linalg.vector_norm((new.params[name] - g) * held * new.masks.get(name, held))
        assert float(step) <= 0.1 * float(torch.linalg.vector_norm(g * held)) * (1 + 1e-5), name


def test_holder_stack_with_min_votes_and_refusals():
    acc = HolderStackAccumulator({"w": (3,), "b": (1,)}, ["w"], "median")
    acc.add({"w": torch.tensor([1.0, 2.0, 0.0]), "b": torch.tensor([1.0])}, {"w": torch.tensor([True, True, False])}, 1)
    acc.add({"w": torch.tensor([3.0, 0.0, 5.0]), "b": torch.tensor([3.0])}, {"w": torch.tensor([True, False, True])}, 1)
    result = acc.result(min_votes=2)
    assert result.params["w"].tolist() == [2.0, 0.0, 0.0] and result.candidates["w"].tolist() == [True, False, False]
    assert result.params["b"].tolist() == [2.0]
    with pytest.raises(ValueError, match="shape"):
        acc.add({"w": torch.zeros(4), "b": torch.zeros(1)}, {"w": torch.ones(4, dtype=torch.bool)}, 1)
    with pytest.raises(ValueError, match="positive"):
        acc.add({"w": torch.zeros(3), "b": torch.zeros(1)}, {"w": torch.ones(3, dtype=torch.bool)}, 0)
    with pytest.raises(ValueError, match="takes trimmed_mean or median"):
        HolderStackAccumulator({"w": (3,)}, ["w"], "mean")


@pytest.mark.parametrize("rule", ["trimmed_mean", "median"])
def test_a_weight_held_by_too_few_devices_is_dropped(rule):
    # K = 10, trim_fraction 0.1 -> f = 1 tolerated attacker: a weight needs 3 holders. Position 0 is held
    # by all, position 1 only by the attacker (a huge grown value), position 2 by two devices, 3 by three.
    acc = HolderStackAccumulator({"w": (4,)}, ["w"], rule, trim_fraction=0.1)
    for i in range(10):
        held = torch.tensor([True, i == 0, i in (1, 2), i in (1, 2, 3)])
        values = torch.tensor([1000.0 if i == 0 else 1.0, 1000.0, 2.0, 3.0]) * held
        acc.add({"w": values}, {"w": held}, 1)
    assert acc.tolerated == 1
    result = acc.result()
    assert result.candidates["w"].tolist() == [True, False, False, True]
    assert result.params["w"].tolist() == [1.0, 0.0, 0.0, 3.0]


def test_strategy_config_rejects_bad_guardrail_settings():
    with pytest.raises(ValueError, match="unknown aggregation"):
        StrategyConfig(aggregation="krum")
    with pytest.raises(ValueError, match="trim fraction"):
        StrategyConfig(trim_fraction=math.nan)
    with pytest.raises(ValueError, match="clip update norm"):
        StrategyConfig(clip_update_norm=0.0)
