"""Local data that loads on a device but cannot train the run's model (``digits_cnn``: 8x8 images, 10
classes), as ``feddst agent run`` flags: the agent comes online and reports ``bad_data`` for each task."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mismatched_inputs_npz(path: Path) -> tuple[str, ...]:
    """28x28 images (mnist-sized, not digits' 8x8): ``model digits_cnn takes inputs (1, 8, 8) but ...``."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(10), 6)
    np.savez(path, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    return ("--dataset", "npz", "--data-dir", str(path), "--classes-per-client", "2", "--samples-per-class", "3")


def labels_out_of_range_npz(path: Path) -> tuple[str, ...]:
    """8x8 images whose labels go up to 19 (a corrupt label column): ``model digits_cnn has 10 classes
    but the local labels go up to 19``."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 16, (80, 8, 8), dtype=np.uint8)
    y = np.arange(80) % 20
    np.savez(path, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    return ("--dataset", "npz", "--data-dir", str(path), "--classes-per-client", "20", "--samples-per-class", "3")
