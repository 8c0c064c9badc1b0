"""The agent's round takes the simulator's kernels: the same pooling path for the same model, masks and client.

An MNIST share as the agent loads it (``load_local_data``: numpy fancy indexing of the loaders' ``[:, None]``
view) once had strides (3136, 4, 112, 4): "contiguous" to numpy and torch, but also channels-last for one
channel, so the agent's dense conv1 ran channels-last and its max-pool fell back to torch's, while the
simulator's torch-indexed batches took the native NCHW max-pool (issue 15, live overhead). Oracle: which
max-pool implementation each path calls (torch's ``F.max_pool2d`` or ``native.max_pool2d_forward``)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from agent_harness import KEYED
from pool_calls import PoolCalls

from edge_agent.config import AgentSettings
from edge_agent.data import load_local_data
from edge_agent.local_training import train_on_task
from feddst_core import native
from feddst_core.wire_format import model_broadcast
from protocol import Task
from simulator.config import SimulationConfig
from simulator.engine import Simulation

CLIENTS = 10
FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def write_mnist_dir(directory: Path, n_train: int = 600, n_test: int = 20) -> Path:
    """A small MNIST-format IDX directory (random pixels, labels cycling 0..9)."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": np.arange(n_test) % 10}
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        array = arrays[key]
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (directory / f"{stem}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return directory


def test_local_mnist_share_is_row_major(tmp_path) -> None:
    data_dir = write_mnist_dir(tmp_path / "mnist")
    local = load_local_data(AgentSettings(**KEYED, device_id="d", dataset="mnist", data_dir=str(data_dir),
                                          partition=f"0/{CLIENTS}"))
    n, c, h, w = local.x.shape
    assert local.x.strides == (c * h * w * 4, h * w * 4, w * 4, 4)
    x = local.client_data().x
    assert x.stride() == (c * h * w, h * w, w, 1)


@pytest.mark.skipif(not native.available(), reason="the native kernels are not built")
def test_agent_round_pools_like_the_simulator(tmp_path, monkeypatch) -> None:
    data_dir = write_mnist_dir(tmp_path / "mnist")
    sim = Simulation(SimulationConfig(dataset="mnist", data_dir=str(data_dir), clients=CLIENTS, clients_per_round=1,
                                      rounds=1, local_epochs=2, algorithm="feddst", sparsity=0.8, seed=0,
                                      client_batching=False, kernels="auto", eval_every=10 ** 6))
    pools = PoolCalls(monkeypatch)
    sim.train_clients([0], 0.0, 0.0, 1)
    simulated = pools.take()

    local = load_local_data(AgentSettings(**KEYED, device_id="d", dataset="mnist", data_dir=str(data_dir),
                                          partition=f"0/{CLIENTS}", seed=0))
    np.testing.assert_array_equal(local.x, sim.client_data(0).x.numpy())  # the same client
    cfg = sim.config
    task = Task(run_id="r", server_round=1, selected=("d",), model_round=1, local_epochs=cfg.local_epochs,
                batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                prox_mu=0.0, readjust=False, alpha=0.0, deadline_unix=0.0, seed=cfg.seed, model_name="mnist_cnn")
    train_on_task(task, model_broadcast("r", 1, sim.state.params, sim.state.masks), local, "d", 0, kernels="auto")
    agent = pools.take()

    assert simulated and "torch" not in simulated  # the NCHW path: the native max-pool every step
    assert agent == simulated
