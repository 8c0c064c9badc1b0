"""Update checks and the collector's verdicts, without a broker: every bad update gets a clean
``invalid`` verdict naming its reason, and nothing it contains reaches (or breaks) the aggregation."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.round_collector import RoundCollector
from feddst_core.models import get_model_spec
from feddst_core.readjust import readjust_masks
from feddst_core.strategies import FedStrategy, StrategyConfig
from feddst_core.wire_format import update_message, update_to_model
from protocol import InvalidMessageError, MaskChange, SparseTensor, Update, decode_message, encode_message

SPEC = get_model_spec("digits_cnn")
ALPHA = 0.1
DEVICES = ("dev-a", "dev-b", "dev-c")


def _strategy(**kwargs) -> FedStrategy:
    return FedStrategy(SPEC, StrategyConfig(clients_per_round=3, **kwargs))


def _collector(strategy: FedStrategy | None = None, *, alpha: float = ALPHA, registered: int = 50,
               max_sample_count: int | None = None) -> RoundCollector:
    strategy = strategy or _strategy()
    state = strategy.initialize(0)
    return RoundCollector("run-1", 1, DEVICES, strategy.begin_aggregation(state), readjust_fraction=alpha,
                          registered_samples=lambda device_id: registered, max_sample_count=max_sample_count)


def _honest(collector: RoundCollector, device: str = "dev-a", readjust: bool = True, seed: int = 1,
            samples: int = 40) -> Update:
    """An update as a device builds it: trained weights (here: noise) and, optionally, a readjusted mask."""
    state = collector.aggregation.state
    gen = torch.Generator().manual_seed(seed)
    params = {n: p + 0.01 * torch.randn(p.shape, generator=gen) for n, p in state.params.items()}
    masks = state.masks
    if readjust:
        grads = {n: torch.randn(m.shape, generator=gen) for n, m in masks.items()}
        masks, _ = readjust_masks(state.masks, params, grads, collector.readjust_fraction)
    params = {n: p * masks[n] if n in masks else p for n, p in params.items()}
    return update_message("run-1", 1, device, params, state.masks, masks, samples, 0.5, 1.0)


def _rebuild(update: Update, **changes) -> Update:
    fields = dict(run_id=update.run_id, server_round=update.server_round, device_id=update.device_id,
                  tensors=dict(update.tensors), mask_changes=dict(update.mask_changes),
                  sample_count=update.sample_count, train_loss=update.train_loss, compute_s=update.compute_s)
    fields.update(changes)
    return Update(**fields)


def _sums(collector: RoundCollector) -> dict[str, torch.Tensor]:
    if collector.fold is not None:
        collector.fold.flush()  # accepted updates' compact sums into the accumulator
    acc = collector.aggregation.accumulator
    return {n: t.clone() for n, t in acc.weighted_sum.items()}  # type: ignore[union-attr]


def test_an_honest_update_with_a_readjusted_mask_is_accepted():
    collector = _collector()
    update = _honest(collector)
    assert update.mask_changes  # the readjustment moved weights: the budget check is exercised
    verdict = collector.offer(update, 100)
    assert verdict.kind == "accepted", verdict.detail
    assert collector.counts == {"accepted": 1}


def _expect_invalid(collector: RoundCollector, update: Update, reason: str, words: str) -> None:
    before = _sums(collector)
    verdict = collector.offer(update, 100)
    assert (verdict.kind, verdict.reason) == ("invalid", reason), verdict
    assert words in verdict.detail and not verdict.ack_ok
    assert verdict.ack_detail.startswith(f"{reason}: ")
    assert collector.counts[f"invalid_{reason}"] == 1 and "dev-a" not in collector.accepted
    after = _sums(collector)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_nan_and_inf_values_are_rejected():
    collector = _collector()
    update = _honest(collector)
    t = update.tensors["fc1.weight"]
    values = t.values.copy()
    values[3] = np.nan
    values[7] = np.inf
    poisoned = {**update.tensors, "fc1.weight": SparseTensor(t.shape, values)}
    _expect_invalid(collector, _rebuild(update, tensors=poisoned), "non_finite", "fc1.weight: 2 of")
    _expect_invalid(_collector(), _rebuild(update, train_loss=math.nan), "non_finite", "train_loss")


def test_wrong_names_and_shapes_are_rejected_before_any_dense_tensor():
    collector = _collector()
    update = _honest(collector)
    tensors = dict(update.tensors)
    tensors["fc9.weight"] = tensors.pop("fc2.weight")
    _expect_invalid(collector, _rebuild(update, tensors=tensors, mask_changes={}), "tensor_names",
                    "missing fc2.weight; unexpected fc9.weight")
    # a huge shape: rejected from the header, never densified (2**40 elements would not fit in memory)
    huge = SparseTensor((1 << 20, 1 << 20), np.zeros(10, np.float32))
    _expect_invalid(_collector(), _rebuild(update, tensors={**update.tensors, "fc2.bias": huge}), "tensor_shape",
                    "fc2.bias: shape (1048576, 1048576) != model shape (10,)")
    bias_change = {**update.mask_changes, "fc1.bias": MaskChange([0], [])}
    _expect_invalid(_collector(), _rebuild(update, mask_changes=bias_change), "tensor_names",
                    "mask changes for tensors without a mask: fc1.bias")


def test_values_outside_the_sent_mask_are_rejected():
    collector = _collector(alpha=0.0)
    update = _honest(collector, readjust=False)
    t = update.tensors["fc1.weight"]
    more = SparseTensor(t.shape, np.concatenate([t.values, [1.0]]))
    _expect_invalid(collector, _rebuild(update, tensors={**update.tensors, "fc1.weight": more}), "outside_mask",
                    f"{t.values.size + 1} values for {t.values.size} held positions")
    sparse_bias = SparseTensor.from_dense(np.ones(10, np.float32), np.arange(10) < 5)
    _expect_invalid(_collector(alpha=0.0), _rebuild(update, tensors={**update.tensors, "fc2.bias": sparse_bias}),
                    "outside_mask", "fc2.bias has no mask")
    sent = collector.aggregation.state.masks["fc1.weight"].numpy().reshape(-1)
    regrow = {"fc1.weight": MaskChange([], [int(np.flatnonzero(sent)[0])])}  # grows a position already held
    _expect_invalid(_collector(alpha=0.0), _rebuild(update, mask_changes=regrow), "outside_mask",
                    "already set")


def test_mask_changes_beyond_the_readjustment_budget_are_rejected():
    collector = _collector()
    update = _honest(collector)
    sent = collector.aggregation.state.masks["fc1.weight"].numpy().reshape(-1)
    active = int(sent.sum())
    allowed = min(math.floor(ALPHA * active), sent.size - active)
    t = update.tensors["fc1.weight"]
    # densify: grow allowed + 1 positions without dropping any (values on the new mask)
    grown = np.flatnonzero(~sent)[: allowed + 1]
    new = sent.copy()
    new[grown] = True
    dense = SparseTensor(t.shape, np.ones(int(new.sum()), np.float32))
    _expect_invalid(collector, _rebuild(update, tensors={**update.tensors, "fc1.weight": dense},
                                        mask_changes={**update.mask_changes, "fc1.weight": MaskChange([], grown)}),
                    "mask_budget", f"0 weights dropped but {allowed + 1} grown")
    dropped = np.flatnonzero(sent)[: allowed + 1]
    swap = sent.copy()
    swap[dropped], swap[grown] = False, True
    moved = SparseTensor.from_dense(np.ones(t.shape, np.float32), swap.reshape(t.shape))  # a self-contained mask
    changes = {k: v for k, v in update.mask_changes.items() if k != "fc1.weight"}
    _expect_invalid(_collector(), _rebuild(update, tensors={**update.tensors, "fc1.weight": moved},
                                           mask_changes=changes),
                    "mask_budget",
                    f"{allowed + 1} weights moved; alpha 0.1 of {active} active weights allows {allowed}")
    _expect_invalid(_collector(alpha=0.0), update, "mask_budget", "this round does not readjust masks")


def test_sample_count_is_checked_and_capped():
    _expect_invalid(_collector(), _rebuild(_honest(_collector()), sample_count=0), "sample_count", ">= 1")
    collector = _collector(registered=30, max_sample_count=20)
    verdict = collector.offer(_honest(collector, samples=10**12), 100)
    assert verdict.kind == "accepted" and verdict.ack_ok
    assert verdict.detail == "sample_count 1000000000000 capped at 20 (the run's max_sample_count)"
    assert collector.counts["accepted_sample_count_capped"] == 1
    assert collector.aggregation.accumulator.total_weight == 20
    unregistered = _collector(registered=0, max_sample_count=25)  # Register never seen: only the run's cap
    verdict = unregistered.offer(_honest(unregistered, samples=40), 100)
    assert verdict.kind == "accepted" and unregistered.aggregation.accumulator.total_weight == 25


def test_capped_weight_is_what_the_mean_uses():
    # two devices, one claiming 10**6 samples: capped at its registered 40, the mean is the plain average
    collector = _collector(registered=40)
    a, b = _honest(collector, "dev-a", readjust=False, seed=1), _honest(collector, "dev-b", readjust=False, seed=2)
    assert collector.offer(_rebuild(a, sample_count=10**6), 1).kind == "accepted"
    assert collector.offer(b, 1).kind == "accepted"
    new, _ = collector.finish()
    expected = (a.tensors["fc1.bias"].values.astype(np.float64) + b.tensors["fc1.bias"].values) / 2
    np.testing.assert_allclose(new.params["fc1.bias"].numpy(), expected, rtol=1e-6)


# --- fuzz: malformed but well-enveloped updates --------------------------------------------------

MUTATIONS = ("nan", "inf", "huge", "rename", "drop_tensor", "extra_tensor", "reshape", "value_count", "grow_more",
             "drop_only", "bias_change", "own_mask", "sparse_bias", "sample_count", "loss", "random_values")


def _mutate(update: Update, collector: RoundCollector, op: str, pick: int, rng: np.random.Generator) -> Update:
    names = sorted(update.tensors)
    name = names[pick % len(names)]
    masked = sorted(collector.expectations.sent_masks)
    mname = masked[pick % len(masked)]
    t = update.tensors[name]
    tensors = dict(update.tensors)
    changes = dict(update.mask_changes)
    if op in ("nan", "inf", "huge", "random_values") and t.values.size:
        values = t.values.copy()
        where = rng.integers(0, values.size, size=max(1, values.size // 10))
        values[where] = {"nan": np.nan, "inf": -np.inf, "huge": 3.0e38}.get(op, 0.0)
        if op == "random_values":
            values = rng.normal(0, 1e4, size=values.size).astype(np.float32)
        tensors[name] = SparseTensor(t.shape, values, t.mask)
    elif op == "rename":
        tensors[name + "x"] = tensors.pop(name)
        changes.pop(name, None)
    elif op == "drop_tensor":
        tensors.pop(name)
        changes.pop(name, None)
    elif op == "extra_tensor":
        tensors["extra"] = SparseTensor((3, 3), np.zeros(9, np.float32))
    elif op == "reshape":
        tensors[name] = SparseTensor(t.shape[::-1] + (1,), t.values)
        changes.pop(name, None)
    elif op == "value_count":
        tensors[name] = SparseTensor(t.shape, t.values[: max(0, t.values.size - 1 - pick % 3)])
    elif op in ("grow_more", "drop_only"):
        flat = collector.expectations.sent_masks[mname].reshape(-1)
        idx = np.flatnonzero(~flat if op == "grow_more" else flat)
        chosen = rng.choice(idx, size=min(idx.size, 1 + pick % 400), replace=False) if idx.size else idx
        changes[mname] = MaskChange([], chosen) if op == "grow_more" else MaskChange(chosen, [])
    elif op == "bias_change":
        changes["fc1.bias"] = MaskChange([pick % 64], [])
    elif op == "own_mask":
        shape = collector.expectations.sent_masks[mname].shape  # an earlier mutation may have removed the tensor
        mask = rng.random(shape) < rng.random()
        tensors[mname] = SparseTensor.from_dense(rng.normal(size=shape).astype(np.float32), mask)
        changes.pop(mname, None)
    elif op == "sparse_bias":
        tensors["fc2.bias"] = SparseTensor.from_dense(np.ones(10, np.float32), rng.random(10) < 0.5)
    elif op == "sample_count":
        return _rebuild(update, tensors=tensors, mask_changes=changes, sample_count=[0, 1, 2**64 - 1][pick % 3])
    elif op == "loss":
        return _rebuild(update, tensors=tensors, mask_changes=changes, train_loss=[math.nan, math.inf][pick % 2])
    return _rebuild(update, tensors=tensors, mask_changes=changes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10**6)), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1), rule=st.sampled_from(["mean", "median", "trimmed_mean"]),
       clip=st.sampled_from([None, 0.5]))
def test_fuzzed_updates_get_clean_verdicts_and_leave_the_model_finite(ops, seed, rule, clip):
    strategy = _strategy(aggregation=rule, clip_update_norm=clip)
    collector = _collector(strategy, max_sample_count=100)
    rng = np.random.default_rng(seed)
    assert collector.offer(_honest(collector, "dev-a"), 10).kind == "accepted"
    bad = _honest(collector, "dev-b", seed=2)
    for op, pick in ops:
        bad = _mutate(bad, collector, op, pick, rng)
    try:
        wire = decode_message(encode_message(bad, seq=1))  # well-enveloped: what the coordinator decodes
    except InvalidMessageError:
        return  # not representable on the wire (e.g. a mask change for a tensor that is not sent)
    assert isinstance(wire, Update)
    verdict = collector.offer(wire, 10)
    assert verdict.kind in ("accepted", "invalid") and verdict.detail is not None
    if verdict.kind == "invalid":
        assert verdict.reason and collector.counts[f"invalid_{verdict.reason}"] == 1
        assert collector.aggregation.accumulator.num_clients == 1
    new, _ = collector.finish()
    assert new is not None
    for name, p in new.params.items():
        assert bool(torch.isfinite(p).all()), name
        assert tuple(p.shape) == SPEC.parameter_shapes()[name]
    for name, m in new.masks.items():
        assert int(m.sum()) <= strategy.budgets[name]


@pytest.mark.parametrize("op", MUTATIONS)
def test_every_mutation_alone_is_judged_cleanly(op):
    collector = _collector(max_sample_count=100)
    bad = _mutate(_honest(collector, "dev-b", seed=2), collector, op, 7, np.random.default_rng(0))
    verdict = collector.offer(decode_message(encode_message(bad, seq=1)), 10)  # type: ignore[arg-type]
    # the finite-but-hostile value mutations pass the structural checks (clipping / robust rules handle them);
    # a sample count of 1 is legal
    harmless = {"huge", "random_values"} | ({"sample_count"} if verdict.kind == "accepted" else set())
    assert verdict.kind == ("accepted" if op in harmless else "invalid"), (op, verdict)


def test_a_huge_declared_shape_allocates_nothing_of_that_shape():
    # tracemalloc sees numpy's array buffers: the refusal must come from the header, not a failed allocation
    collector = _collector()
    update = _honest(collector)
    huge = SparseTensor((1 << 20, 1 << 20), np.zeros(10, np.float32))
    bad = _rebuild(update, tensors={**update.tensors, "fc1.weight": huge},
                   mask_changes={n: c for n, c in update.mask_changes.items() if n != "fc1.weight"})
    tracemalloc.start()
    try:
        verdict = collector.offer(bad, 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (verdict.kind, verdict.reason) == ("invalid", "tensor_shape"), verdict
    assert "fc1.weight: shape (1048576, 1048576)" in verdict.detail
    assert peak < 1 << 20, f"{peak} bytes allocated before the shape was refused"
    assert collector.offer(update, 100).kind == "accepted"  # the honest one still fits afterwards


def test_an_accepted_update_is_aggregated_on_the_masks_the_checks_worked_out():
    # oracle: the update rebuilt on its own (wire_format.update_to_model from the torch sent masks)
    collector = _collector()
    update = _honest(collector)
    params, masks = update_to_model(update, collector.aggregation.state.masks)
    assert collector.offer(update, 100).kind == "accepted"
    sums = _sums(collector)
    for name, p in params.items():
        assert torch.equal(sums[name], p.to(torch.float64) * 40), name
    acc = collector.aggregation.accumulator
    for name, m in masks.items():
        assert torch.equal(acc.votes[name], m.to(torch.int32)), name  # type: ignore[union-attr]
