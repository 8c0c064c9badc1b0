"""Benchmark model: the paper's MNIST CNN with a wide fc1 (5120 -> 512), where FC weights dominate."""

from __future__ import annotations

from feddst_core.models import Conv, Flatten, Linear, MaxPool, ModelSpec, ReLU

FC_HEAVY_MNIST_CNN = ModelSpec(
    name="mnist_cnn_fc512",
    input_shape=(1, 28, 28),
    num_classes=10,
    layers=(
        Conv("conv1", 1, 10, 5), MaxPool(3, 1), ReLU(),
        Conv("conv2", 10, 20, 5), MaxPool(3, 1), ReLU(),
        Flatten(),
        Linear("fc1", 5120, 512), ReLU(),
        Linear("fc2", 512, 10),
    ),
)
