"""Helpers of the inference tests: the torch oracle and an IDX writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def torch_probabilities(params, pixels: np.ndarray) -> np.ndarray:
    """The oracle: torch's forward on MNIST-normalised pixels (the published mean/std, written out here)."""
    from feddst_core.models import MNIST_CNN, forward_single

    x = torch.from_numpy(((pixels.astype(np.float32) / 255.0 - 0.1307) / 0.3081)[:, None])
    with torch.no_grad():
        return torch.softmax(forward_single(MNIST_CNN, params, x), 1).numpy()


def write_idx(path: Path, images: np.ndarray) -> Path:
    """An IDX3 unsigned-byte file: magic 0x00000803, big-endian dimensions, raw pixels."""
    header = bytes([0, 0, 8, images.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path.write_bytes(header + images.tobytes())
    return path
