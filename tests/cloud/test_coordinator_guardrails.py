"""Poisoning guardrails through the real coordinator and broker: NaN, misshapen and oversized
updates get a negative Ack with their reason, are counted, never reach the model; the run completes."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from coordinator_harness import wait_until

from cloud.run_config import RunConfig
from feddst_core.models import get_model_spec
from feddst_core.strategies import FedStrategy
from protocol import SparseTensor, Update

SMALL = dict(model="digits_cnn", local_epochs=0, batch_size=8, device_wait_s=20.0)


def _rebuild(update: Update, **changes) -> Update:
    return dataclasses.replace(update, **changes)  # keeps every other field, the task nonce included


def with_nan(update: Update, model) -> Update:  # noqa: ANN001
    t = update.tensors["fc1.weight"]
    values = t.values.copy()
    values[::5] = np.nan
    return _rebuild(update, tensors={**update.tensors, "fc1.weight": SparseTensor(t.shape, values, t.mask)})


def misshapen(update: Update, model) -> Update:  # noqa: ANN001
    return _rebuild(update, tensors={**update.tensors, "fc2.bias": SparseTensor((11,), np.zeros(11, np.float32))})


def huge_weight(update: Update, model) -> Update:  # noqa: ANN001
    # claims 10**9 samples and moves the weights a lot: capped at its registered 10 samples
    tensors = {n: SparseTensor(t.shape, t.values + 1.0, t.mask) for n, t in update.tensors.items()}
    return _rebuild(update, tensors=tensors, sample_count=10**9)


def test_invalid_updates_are_nacked_counted_and_the_run_completes(coordinator, devices):
    devices("dev-000", index=0)
    nan_device = devices("dev-001", index=1, tamper=with_nan)
    shape_device = devices("dev-002", index=2, tamper=misshapen)
    devices("dev-003", index=3, tamper=huge_weight)
    wait_until(lambda: len(coordinator.registry.online_ids()) >= 4, what="4 devices online")
    run = coordinator.create_run(RunConfig(rounds=2, clients_per_round=4, quorum=2, round_timeout_s=2.0, **SMALL))
    coordinator.start_run(run.id)
    final = coordinator.wait_for_run(run.id, 60)
    assert final.status == "completed", final.error
    row, rounds = coordinator.get_run(run.id)
    for r in rounds:
        assert r["accepted"] == ["dev-000", "dev-003"]
        assert r["ignored"]["invalid"] == 2
        assert r["ignored"]["invalid_non_finite"] == 1 and r["ignored"]["invalid_tensor_shape"] == 1
    assert row.counters["invalid_non_finite"] == 2 and row.counters["invalid_tensor_shape"] == 2
    assert row.counters["accepted_sample_count_capped"] == 2
    wait_until(lambda: len(nan_device.acks) >= 2 and len(shape_device.acks) >= 2, what="negative acks")
    assert all(not a.ok and a.detail.startswith("non_finite: fc1.weight") for a in nan_device.acks)
    assert all(not a.ok and a.detail.startswith("tensor_shape: fc2.bias") for a in shape_device.acks)
    params, _ = coordinator.store.load_model(run.id)
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    # dev-000 returns the global model unchanged, dev-003 adds 1.0 with a weight capped at 10 (= dev-000's):
    # each round moves the biases by the plain average, +0.5 (uncapped, 10**9 samples would give ~+1.0)
    initial = _initial_params(run.config)
    for name in ("conv1.bias", "fc1.bias", "fc2.bias"):
        assert torch.allclose(params[name], initial[name] + 1.0, atol=1e-5), name


def _initial_params(config: dict) -> dict[str, torch.Tensor]:
    """The run's round-0 model (seeded), rebuilt independently of the coordinator."""
    rc = RunConfig.model_validate(config)
    return FedStrategy(get_model_spec(rc.model), rc.strategy_config()).initialize(rc.seed).params


def test_robust_aggregation_and_clipping_run_live(coordinator, devices):
    for i in range(3):
        devices(f"dev-{i:03d}", index=i)
    devices("dev-003", index=3, tamper=huge_weight)
    wait_until(lambda: len(coordinator.registry.online_ids()) >= 4, what="4 devices online")
    run = coordinator.create_run(RunConfig(rounds=2, clients_per_round=4, round_timeout_s=10.0,
                                           aggregation="median", clip_update_norm=0.5, **SMALL))
    coordinator.start_run(run.id)
    final = coordinator.wait_for_run(run.id, 60)
    assert final.status == "completed", final.error
    _, rounds = coordinator.get_run(run.id)
    assert [r["clipped"] for r in rounds] == [1, 1]
    params, _ = coordinator.store.load_model(run.id)
    initial = _initial_params(run.config)
    for name, p in params.items():  # three of four devices return the model unchanged: the median is it
        assert torch.equal(p, initial[name]), name
