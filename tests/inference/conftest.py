"""An exported mnist_cnn (sparse ERK initial model) and the MNIST-style uint8 images it is tested on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for mnist_oracle

MNIST_DIR = Path("/work/shared/data/mnist")


@pytest.fixture(scope="session")
def mnist_model():
    """(onnx bytes, params) of mnist_cnn's seeded sparse initial model."""
    from feddst_core.models import get_model_spec
    from feddst_core.onnx_export import export_model
    from feddst_core.strategies import FedStrategy, StrategyConfig

    spec = get_model_spec("mnist_cnn")
    state = FedStrategy(spec, StrategyConfig(sparsity=0.8)).initialize(0)
    return export_model(spec, state.params, state.masks, run_id="run-1", server_round=3, accuracy=0.5), state.params


@pytest.fixture(scope="session")
def mnist_pixels() -> np.ndarray:
    """(N, 28, 28) uint8: MNIST test images when the shared copy exists, else seeded random pixels."""
    if MNIST_DIR.is_dir():
        from datasources.idx import load_idx_directory

        return load_idx_directory(MNIST_DIR)["x_test"][:24].copy()
    return np.random.default_rng(0).integers(0, 256, (24, 28, 28), dtype=np.uint8)
