import pytest
import torch

from feddst_core.aggregation import MaskedMeanAccumulator, prune_to_budgets

SHAPES = {"w": (4,), "b": (1,)}


def two_clients(acc):
    # client A: 1 sample, holds positions 0 and 1; client B: 3 samples, holds 1 and 2.
    acc.add({"w": torch.tensor([1.0, 2.0, 0.0, 0.0]), "b": torch.tensor([1.0])},
            {"w": torch.tensor([True, True, False, False])}, 1.0)
    acc.add({"w": torch.tensor([0.0, 4.0, -6.0, 0.0]), "b": torch.tensor([5.0])},
            {"w": torch.tensor([False, True, True, False])}, 3.0)


def test_hand_computed_two_client_example_with_overlapping_masks():
    acc = MaskedMeanAccumulator(SHAPES, ["w"])
    two_clients(acc)
    result = acc.result()
    # position 0: only A -> 1; position 1: (1*2 + 3*4) / 4 = 3.5; position 2: only B -> -6; 3: nobody -> 0
    assert result.params["w"].tolist() == [1.0, 3.5, -6.0, 0.0]
    assert result.candidates["w"].tolist() == [True, True, True, False]
    assert result.params["b"].tolist() == [4.0]  # (1*1 + 3*5) / 4: a plain weighted mean
    masks = prune_to_budgets(result.params, result.candidates, {"w": 2})
    assert masks["w"].tolist() == [False, True, True, False]  # the two largest magnitudes survive


def test_min_votes_drops_weights_held_by_too_few_clients():
    acc = MaskedMeanAccumulator(SHAPES, ["w"])
    two_clients(acc)
    result = acc.result(min_votes=2)
    assert result.candidates["w"].tolist() == [False, True, False, False]
    assert result.params["w"].tolist() == [0.0, 3.5, 0.0, 0.0]


def test_budget_larger_than_candidates_keeps_all_candidates():
    acc = MaskedMeanAccumulator(SHAPES, ["w"])
    two_clients(acc)
    result = acc.result()
    masks = prune_to_budgets(result.params, result.candidates, {"w": 4})
    assert masks["w"].tolist() == [True, True, True, False]


def test_result_does_not_depend_on_arrival_order():
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (50, 40), "b": (50,)}
    clients = [({"w": torch.randn(50, 40, generator=g), "b": torch.randn(50, generator=g)},
                {"w": torch.rand(50, 40, generator=g) < 0.3}, float(i + 1)) for i in range(7)]
    forward, backward = MaskedMeanAccumulator(shapes, ["w"]), MaskedMeanAccumulator(shapes, ["w"])
    for p, m, w in clients:
        forward.add(p, m, w)
    for p, m, w in reversed(clients):
        backward.add(p, m, w)
    a, b = forward.result(), backward.result()
    assert torch.equal(a.params["w"], b.params["w"]) and torch.equal(a.params["b"], b.params["b"])


def test_bad_updates_are_refused():
    acc = MaskedMeanAccumulator(SHAPES, ["w"])
    with pytest.raises(ValueError, match="positive"):
        acc.add({"w": torch.zeros(4), "b": torch.zeros(1)}, {"w": torch.ones(4, dtype=torch.bool)}, 0.0)
    with pytest.raises(ValueError, match="shape"):
        acc.add({"w": torch.zeros(5), "b": torch.zeros(1)}, {"w": torch.ones(5, dtype=torch.bool)}, 1.0)
    with pytest.raises(ValueError, match="names"):
        acc.add({"w": torch.zeros(4)}, {"w": torch.ones(4, dtype=torch.bool)}, 1.0)
    with pytest.raises(ValueError, match="zero client updates"):
        MaskedMeanAccumulator(SHAPES, ["w"]).result()


def test_a_refused_update_leaves_the_accumulator_untouched():
    # "b" has the wrong shape: the check comes before anything is added, so "w" is not half-added
    acc, alone = MaskedMeanAccumulator(SHAPES, ["w"]), MaskedMeanAccumulator(SHAPES, ["w"])
    with pytest.raises(ValueError, match="b: shape"):
        acc.add({"w": torch.tensor([9.0, 9.0, 0.0, 0.0]), "b": torch.zeros(2)},
                {"w": torch.tensor([True, True, False, False])}, 1.0)
    with pytest.raises(ValueError, match="w: no mask"):
        acc.add({"w": torch.ones(4), "b": torch.zeros(1)}, {"w": torch.ones(5, dtype=torch.bool)}, 1.0)
    two_clients(acc)
    two_clients(alone)
    assert acc.num_clients == 2 and acc.total_weight == 4.0
    for name in SHAPES:
        assert torch.equal(acc.result().params[name], alone.result().params[name])
    assert acc.result().params["w"].tolist() == [1.0, 3.5, -6.0, 0.0]
