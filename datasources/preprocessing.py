"""What each data source does to raw pixels before a model sees them, as data (for model files).

Every source turns an image into intensities ``v`` in [0, 1] (8-bit pixels / 255; digits' 0..16 / 16)
and then normalises each channel ``c``: ``x = (v - mean[c]) / std[c]``. :func:`dataset_normalisation`
gives those statistics per data source, so a model file can carry them and a device that only runs
the model preprocesses exactly as training did:

- ``mnist``: the published MNIST statistics (``loaders.load_mnist``);
- ``digits``: the built-in split's train statistics (``loaders.load_digits_builtin``);
- ``cifar10``: the published CIFAR-10 train-set statistics (``loaders.load_cifar10`` standardises
  with the train split's own statistics, which these are);
- ``image-folder``: MNIST's for one channel, CIFAR-10's for three (``image_folder.normalise``);
- ``csv`` and ``npz``: none known (CSV features are taken as model-ready; npz data is standardised
  with its own train statistics, which a model file does not see).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasources.image_folder import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
# The data source each built-in model is trained on by default (``feddst simulate --dataset``).
MODEL_DATASETS = {"digits_cnn": "digits", "mnist_cnn": "mnist", "mnist_cnn_fc512": "mnist", "cifar10_cnn": "cifar10"}


@dataclass(frozen=True)
class InputNormalisation:
    """``x = (v - mean[c]) / std[c]`` per channel ``c``, ``v`` the intensity scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where the statistics come from, for people reading the model file

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"normalisation needs one mean and one std per channel, got {self.mean} / {self.std}")
        if any(not np.isfinite(s) or s <= 0 for s in self.std) or not all(np.isfinite(self.mean)):
            raise ValueError(f"normalisation statistics must be finite with std > 0, got {self.mean} / {self.std}")

    def apply(self, v: np.ndarray) -> np.ndarray:
        """(N, C, H, W) intensities in [0, 1] -> float32 model input (float32 arithmetic, as the loaders)."""
        if v.ndim != 4 or v.shape[1] != len(self.mean):
            raise ValueError(f"expected (N, {len(self.mean)}, H, W) inputs, got shape {v.shape}")
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((v.astype(np.float32) - mean) / std).astype(np.float32)


def dataset_normalisation(dataset: str, channels: int) -> InputNormalisation | None:
    """The normalisation data source ``dataset`` applies to ``channels``-channel images; None when unknown."""
    if dataset == "mnist" or (dataset == "image-folder" and channels == 1):
        return InputNormalisation((MNIST_MEAN,), (MNIST_STD,), "MNIST published statistics")
    if dataset == "cifar10" or (dataset == "image-folder" and channels == 3):
        return InputNormalisation(tuple(CIFAR10_MEAN), tuple(CIFAR10_STD), "CIFAR-10 published statistics")
    if dataset == "digits":
        from datasources.loaders import digits_statistics

        mean, std = digits_statistics()
        return InputNormalisation((mean,), (std,), "built-in digits train split")
    return None


def dataset_class_labels(dataset: str, num_classes: int) -> tuple[str, ...] | None:
    """Names of the classes 0..num_classes-1 when the data source fixes them; None otherwise."""
    if dataset in ("digits", "mnist") and num_classes == 10:
        return DIGIT_CLASSES
    if dataset == "cifar10" and num_classes == 10:
        return CIFAR10_CLASSES
    return None
