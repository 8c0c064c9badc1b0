"""The sparse trainer's batches are row-major (``models.row_major``), whatever strides the caller's data has.

``Tensor.contiguous()`` ignores the stride of a size-1 dimension, ``F.conv2d`` does not: a one-channel batch
with strides (H*W, 1, W, 1) counts as channels-last, its dense conv ran channels-last and the max-pool after it
fell back from the native NCHW kernel to torch's (the live agent's MNIST data, issue 15). Oracle: which max-pool
implementation runs, and the training result of row-major data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pool_calls import PoolCalls

from feddst_core import native
from feddst_core.models import row_major, row_major_strides
from feddst_core.sparse import SparseLocalTrainer
from feddst_core.training import ClientData, TrainConfig
from simulator.config import SimulationConfig
from simulator.engine import Simulation


def test_row_major_copies_only_tensors_with_other_strides() -> None:
    assert row_major_strides((5, 1, 8, 8)) == (64, 64, 8, 1)
    assert row_major_strides((0, 3)) == (3, 1)
    x = torch.arange(5 * 64, dtype=torch.float32).reshape(5, 1, 8, 8)
    assert row_major(x) is x
    odd = x.as_strided(x.shape, (64, 1, 8, 1))  # the same memory, channel stride 1
    assert odd.is_contiguous() and odd.is_contiguous(memory_format=torch.channels_last)
    fixed = row_major(odd)
    assert fixed.stride() == (64, 64, 8, 1) and torch.equal(fixed, x)
    last = x.expand(5, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert row_major(last).stride() == (192, 64, 8, 1) and torch.equal(row_major(last), last)


@pytest.mark.skipif(not native.available(), reason="the native kernels are not built")
def test_sparse_trainer_pools_natively_on_channels_last_ambiguous_data(monkeypatch) -> None:
    """The trainer itself makes its batches row-major: a one-channel batch whose size-1 channel stride is 1
    (numpy's relaxed strides) still takes the native max-pool, with the same numbers as row-major data."""
    sim = Simulation(SimulationConfig(dataset="digits", clients=4, clients_per_round=1, rounds=1, algorithm="feddst",
                                      sparsity=0.8, seed=0, client_batching=False, eval_every=10 ** 6))
    row_major = sim.client_data(0)
    odd = torch.from_numpy(np.lib.stride_tricks.as_strided(
        row_major.x.numpy().copy(), row_major.x.shape, (256, 4, 32, 4)))  # (n, 1, 8, 8), channel stride 4 bytes
    assert odd.is_contiguous() and odd.stride()[1] == 1
    trainer = SparseLocalTrainer(sim.spec, TrainConfig(local_epochs=2), kernels="sparse",
                                 layer_kernels={"conv1": "dense"})  # dense conv -> the separate max-pool
    pools = PoolCalls(monkeypatch)
    expected = trainer.train(sim.state.params, sim.state.masks, [row_major], [7])[0]
    reference = pools.take()
    got = trainer.train(sim.state.params, sim.state.masks, [ClientData(odd, row_major.y)], [7])[0]
    assert reference and set(reference) == {"native"}
    assert pools.take() == reference
    for name, tensor in expected.params.items():
        torch.testing.assert_close(got.params[name], tensor, atol=1e-6, rtol=0)
