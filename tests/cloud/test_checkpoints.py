"""Run checkpoints on disk: what is written is what is read back, the RNG continues exactly, old
checkpoints are pruned, a damaged newest file falls back to the previous one, no temporary files remain."""

from __future__ import annotations

import numpy as np
import torch

from cloud.checkpoints import KEEP_CHECKPOINTS, CheckpointStore, OpenRound, RunCheckpoint, rng_from_state
from feddst_core.models import get_model_spec
from feddst_core.strategies import FedStrategy, StrategyConfig


def _checkpoint(server_round: int, rng: np.random.Generator) -> RunCheckpoint:
    strategy = FedStrategy(get_model_spec("digits_cnn"), StrategyConfig(algorithm="feddst", sparsity=0.8))
    state = strategy.initialize(seed=server_round)
    state.momentum = {n: torch.full_like(t, 0.5 + server_round) for n, t in state.params.items()}
    state.mask_version = 3
    return RunCheckpoint("run-1", server_round, state, dict(rng.bit_generator.state), {"accepted": 4, "stale": 1},
                         {1: frozenset({"dev-0", "dev-2"})}, 1234, 5678, 91, 92, {"dev-0": (10, 20)})


def test_a_checkpoint_reads_back_exactly_and_the_rng_continues(tmp_path):
    rng = np.random.default_rng(7)
    rng.choice(10, size=3, replace=False)  # some draws already made
    store = CheckpointStore(tmp_path)
    saved = _checkpoint(2, rng)
    store.save(saved)
    loaded = store.latest("run-1")
    assert loaded is not None and loaded.server_round == 2
    for name in ("params", "masks", "momentum"):
        a, b = getattr(saved.state, name), getattr(loaded.state, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert loaded.state.mask_version == 3
    assert (loaded.counters, loaded.accepted_by_round, loaded.wire_marks) == (
        {"accepted": 4, "stale": 1}, {1: frozenset({"dev-0", "dev-2"})}, {"dev-0": (10, 20)})
    assert (loaded.upload_bytes, loaded.download_bytes, loaded.wire_upload_bytes, loaded.wire_download_bytes) == (
        1234, 5678, 91, 92)
    restored = rng_from_state(loaded.rng_state)
    assert restored.choice(100, size=5, replace=False).tolist() == rng.choice(100, size=5, replace=False).tolist()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_without_momentum_none_comes_back(tmp_path):
    store = CheckpointStore(tmp_path)
    checkpoint = _checkpoint(0, np.random.default_rng(0))
    checkpoint.state.momentum = None
    store.save(checkpoint)
    loaded = store.latest("run-1")
    assert loaded is not None and loaded.state.momentum is None


def test_old_checkpoints_are_pruned_and_a_damaged_newest_falls_back(tmp_path):
    store = CheckpointStore(tmp_path)
    rng = np.random.default_rng(0)
    for r in range(5):
        store.save(_checkpoint(r, rng))
    assert store.rounds("run-1") == list(range(5 - KEEP_CHECKPOINTS, 5))
    store.path("run-1", 4).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    loaded = store.latest("run-1")
    assert loaded is not None and loaded.server_round == 3


def test_the_open_round_record_is_superseded_by_its_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    rng = np.random.default_rng(0)
    store.save(_checkpoint(1, rng))
    opened = OpenRound(2, ("dev-0", "dev-3"), 2**63 + 5, 0.01, 0.0, 1, dict(rng.bit_generator.state), 2)
    store.save_open_round("run-1", opened)
    assert store.open_round("run-1") == opened
    store.save(_checkpoint(2, rng))
    assert store.open_round("run-1") is None
