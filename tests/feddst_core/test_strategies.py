import numpy as np
import pytest
import torch

from feddst_core.masks import density
from feddst_core.models import DIGITS_CNN
from feddst_core.strategies import ClientReply, FedStrategy, StrategyConfig
from feddst_core.training import ClientData, LocalTrainer, TrainConfig

SPEC = DIGITS_CNN


def replies_from(state, n_clients=3, seed=0, readjust=0.0):
    g = torch.Generator().manual_seed(seed)
    trainer = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=1))
    out = []
    for c in range(n_clients):
        n = 10 + 5 * c
        data = ClientData(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
        (o,) = trainer.train(state.params, state.masks, [data], [c], readjust)
        out.append(ClientReply(c, o.params, o.masks, o.num_samples, o.train_loss))
    return out


def test_fedavg_at_zero_sparsity_is_plain_weighted_averaging():
    strategy = FedStrategy(SPEC, StrategyConfig(algorithm="fedavg", clients_per_round=3))
    state = strategy.initialize(0)
    assert density(state.masks) == 1.0
    replies = replies_from(state)
    new_state, metrics = strategy.aggregate_round(1, state, replies)
    total = sum(r.num_samples for r in replies)
    for name in state.params:
        expected = sum(r.params[name].double() * r.num_samples for r in replies) / total
        torch.testing.assert_close(new_state.params[name], expected.float(), atol=1e-6, rtol=1e-6)
    assert metrics["clients"] == 3


def test_feddst_keeps_target_density_after_aggregating_divergent_masks():
    strategy = FedStrategy(SPEC, StrategyConfig(algorithm="feddst", sparsity=0.8, clients_per_round=3,
                                                readjust_ratio=0.3))
    state = strategy.initialize(0)
    replies = replies_from(state, readjust=0.3)
    union = {n: torch.stack([r.masks[n] for r in replies]).any(0) for n in state.masks}
    assert density(union) > 0.2  # clients grew different weights
    new_state, metrics = strategy.aggregate_round(1, state, replies)
    for n, k in strategy.budgets.items():
        assert int(new_state.masks[n].sum()) == k
        assert torch.count_nonzero(new_state.params[n][~new_state.masks[n]]) == 0
        assert not (new_state.masks[n] & ~union[n]).any(), "server keeps only weights some client holds"
    assert metrics["mask_changed"] == 1.0 and new_state.mask_version == 1


def test_randommask_never_readjusts_and_keeps_its_mask():
    strategy = FedStrategy(SPEC, StrategyConfig(algorithm="randommask", sparsity=0.8, readjust_ratio=0.5,
                                                clients_per_round=3))
    assert strategy.readjust_fraction(1) == 0.0
    state = strategy.initialize(0)
    new_state, _ = strategy.aggregate_round(1, state, replies_from(state))
    assert all(torch.equal(new_state.masks[n], state.masks[n]) for n in state.masks)


def test_feddst_readjust_schedule():
    strategy = FedStrategy(SPEC, StrategyConfig(algorithm="feddst", readjust_ratio=0.2, readjust_every=10,
                                                readjust_until=30))
    assert strategy.readjust_fraction(1) == pytest.approx(0.2 / 2 * (1 + np.cos(np.pi / 30)))
    assert strategy.readjust_fraction(2) == 0.0
    assert strategy.readjust_fraction(31) == 0.0


def test_fedavgm_applies_server_momentum():
    plain = FedStrategy(SPEC, StrategyConfig(algorithm="fedavg", clients_per_round=3))
    momentum = FedStrategy(SPEC, StrategyConfig(algorithm="fedavgm", server_momentum=0.9, clients_per_round=3))
    state = plain.initialize(0)
    replies = replies_from(state)
    a, _ = plain.aggregate_round(1, state, replies)
    b, _ = momentum.aggregate_round(1, state, replies)
    # first step: buffer = pseudo-gradient, so one step equals plain averaging ...
    for n in state.params:
        torch.testing.assert_close(a.params[n], b.params[n], atol=1e-6, rtol=1e-5)
    # ... the second step adds beta * previous pseudo-gradient.
    a2, _ = plain.aggregate_round(2, a, replies)
    b2, _ = momentum.aggregate_round(2, b, replies)
    assert b2.momentum is not None
    n = "fc1.weight"
    expected = a2.params[n] - 0.9 * b.momentum[n]
    torch.testing.assert_close(b2.params[n], expected, atol=1e-5, rtol=1e-4)


def test_clients_are_drawn_without_replacement_and_seeded():
    strategy = FedStrategy(SPEC, StrategyConfig(clients_per_round=20))
    state = strategy.initialize(0)
    for r in range(1, 50):
        plan = strategy.configure_round(r, state, list(range(25)), np.random.default_rng(r))
        assert len(set(plan.clients)) == 20
    a = strategy.configure_round(1, state, list(range(400)), np.random.default_rng(5)).clients
    b = strategy.configure_round(1, state, list(range(400)), np.random.default_rng(5)).clients
    assert a == b


def test_more_clients_per_round_than_clients_is_refused():
    strategy = FedStrategy(SPEC, StrategyConfig(clients_per_round=30))
    with pytest.raises(ValueError, match="exceeds the available clients"):
        strategy.configure_round(1, strategy.initialize(0), list(range(10)), np.random.default_rng(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "fedsgd"}, "unknown algorithm"),
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"readjust_ratio": -0.1}, "readjust ratio"),
])
def test_bad_strategy_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StrategyConfig(**kwargs)


def test_zero_replies_give_no_new_state():
    strategy = FedStrategy(SPEC, StrategyConfig())
    new_state, metrics = strategy.aggregate_round(1, strategy.initialize(0), [])
    assert new_state is None and metrics["clients"] == 0
