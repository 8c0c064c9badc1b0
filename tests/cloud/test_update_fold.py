"""The collector folds accepted updates into the streaming mean from their wire form (cloud.update_fold):
the result is the masked, sample-weighted mean computed by hand in numpy from the devices' dense
weights and masks, and the same as the dense path's (update_to_model + RoundAggregation.add)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cloud.round_collector import RoundCollector
from cloud.update_fold import can_fold
from feddst_core.models import get_model_spec
from feddst_core.readjust import readjust_masks
from feddst_core.strategies import FedStrategy, StrategyConfig
from feddst_core.wire_format import update_message
from protocol import SparseTensor, decode_message, encode_message

SPEC = get_model_spec("digits_cnn")
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")
WEIGHTS = {"dev-a": 40, "dev-b": 7, "dev-c": 19, "dev-d": 3}


def _collector(fold: bool = True, **config) -> RoundCollector:
    strategy = FedStrategy(SPEC, StrategyConfig(clients_per_round=4, **config))
    collector = RoundCollector("run-1", 1, DEVICES, strategy.begin_aggregation(strategy.initialize(0)),
                               readjust_fraction=0.1)
    if not fold:
        collector.fold = None  # the dense path, as for clipping or a robust rule
    return collector


def _device_update(collector: RoundCollector, device: str, seed: int):
    """(wire-decoded update, dense params, held masks) of a device: noisy weights on a readjusted mask;
    dev-b keeps the sent mask (the fold's compact path), dev-c sends its mask itself instead of changes."""
    state = collector.aggregation.state
    gen = torch.Generator().manual_seed(seed)
    params = {n: p + 0.05 * torch.randn(p.shape, generator=gen) for n, p in state.params.items()}
    grads = {n: torch.randn(m.shape, generator=gen) for n, m in state.masks.items()}
    masks, _ = readjust_masks(state.masks, params, grads, collector.readjust_fraction)
    if device == "dev-b":
        masks = state.masks
    params = {n: p * masks[n] if n in masks else p for n, p in params.items()}
    update = update_message("run-1", 1, device, params, state.masks, masks, WEIGHTS[device], 0.25 * seed, 1.0)
    if device == "dev-c":
        tensors = {n: SparseTensor.from_dense(params[n].numpy(), masks[n].numpy()) if n in masks else t
                   for n, t in update.tensors.items()}
        update = dataclasses.replace(update, tensors=tensors, mask_changes={})
    if device != "dev-b":
        assert update.mask_changes or device == "dev-c"
    update = decode_message(encode_message(update, seq=1))  # exactly what arrives
    return update, params, masks


def _fill(collector: RoundCollector):
    devices = {}
    for seed, device in enumerate(DEVICES, start=1):
        update, params, masks = _device_update(collector, device, seed)
        assert collector.offer(update, 100).kind == "accepted"
        devices[device] = (params, masks)
    return devices


def _by_hand(devices) -> dict[str, np.ndarray]:
    """Per position: sum of w * p over the devices holding it / sum of their w (0 where none does);
    biases: sum w * p / sum w."""
    out = {}
    for name in SPEC.parameter_shapes():
        num = sum(WEIGHTS[d] * p[name].numpy().astype(np.float64) for d, (p, _) in devices.items())
        if name in SPEC.masked_names():
            den = sum(WEIGHTS[d] * m[name].numpy().astype(np.float64) for d, (_, m) in devices.items())
            out[name] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        else:
            out[name] = num / sum(WEIGHTS.values())
    return out


def test_the_fold_gives_the_masked_weighted_mean_computed_by_hand():
    collector = _collector()
    assert can_fold(collector.aggregation)
    devices = _fill(collector)
    assert collector.fold is not None
    collector.fold.flush()
    result = collector.aggregation.accumulator.result()
    expected = _by_hand(devices)
    for name, value in expected.items():
        np.testing.assert_allclose(result.params[name].numpy(), value, rtol=1e-6, atol=1e-7)
        if name in SPEC.masked_names():
            held_by_any = np.any([m[name].numpy() for _, m in devices.values()], axis=0)
            assert np.array_equal(result.candidates[name].numpy(), held_by_any)
    assert result.num_clients == 4 and result.total_weight == sum(WEIGHTS.values())
    losses = collector.aggregation.losses
    assert losses == [(0.25 * (i + 1), WEIGHTS[d]) for i, d in enumerate(DEVICES)]


def test_the_fold_and_the_dense_path_end_the_round_with_the_same_model():
    folded, dense = _collector(), _collector(fold=False)
    _fill(folded)
    _fill(dense)
    assert folded.fold is not None and dense.fold is None
    assert any(v for v in folded.fold.compact_votes.values())  # dev-b went through the compact path
    folded.fold.flush()
    acc_f, acc_d = folded.aggregation.accumulator, dense.aggregation.accumulator
    for name in SPEC.parameter_shapes():
        np.testing.assert_allclose(acc_f.weighted_sum[name].numpy(), acc_d.weighted_sum[name].numpy(),
                                   rtol=1e-12, atol=1e-15)
    for name in SPEC.masked_names():
        assert torch.equal(acc_f.votes[name], acc_d.votes[name])  # type: ignore[union-attr]
        assert torch.equal(acc_f.mask_weight[name], acc_d.mask_weight[name])  # type: ignore[union-attr]
    state_f, metrics_f = folded.finish()
    state_d, metrics_d = dense.finish()
    assert state_f is not None and state_d is not None
    for name in state_f.masks:
        assert torch.equal(state_f.masks[name], state_d.masks[name])
    for name in state_f.params:
        torch.testing.assert_close(state_f.params[name], state_d.params[name], rtol=1e-6, atol=1e-7)
    assert metrics_f == metrics_d


def test_clipping_and_robust_rules_keep_the_dense_path():
    assert not can_fold(_collector(clip_update_norm=2.0).aggregation)
    assert not can_fold(_collector(aggregation="trimmed_mean").aggregation)


def test_a_device_added_by_a_retry_is_accepted():
    collector = _collector()
    collector.selected = DEVICES[:2]
    first, _, _ = _device_update(collector, "dev-a", 1)
    assert collector.offer(first, 100).kind == "accepted"
    late, _, _ = _device_update(collector, "dev-d", 4)
    assert collector.offer(late, 100).kind == "unselected"
    collector.selected = collector.selected + ("dev-d",)  # what Coordinator._retry_round does
    again = dataclasses.replace(late)
    assert collector.offer(again, 100).kind == "accepted"
    assert set(collector.accepted) == {"dev-a", "dev-d"}
