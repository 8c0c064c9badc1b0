"""The in-memory dataset every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataSourceError(ValueError):
    """Data that is missing, unreadable or inconsistent; the message says what was expected."""


@dataclass(frozen=True)
class Dataset:
    """Normalised float32 images (N, C, H, W) and int64 labels, split into train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 4:
                raise DataSourceError(f"{self.name}: x_{split} must be (N, C, H, W), got shape {x.shape}")
            if len(x) != len(y):
                raise DataSourceError(f"{self.name}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataSourceError(f"{self.name}: y_{split} labels must be in [0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataSourceError(f"{self.name}: train and test images differ in shape")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


def channel_statistics(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std + 1e-8) of (N, C, H, W) images, each shaped (1, C, 1, 1)."""
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return mean, std


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel zero mean / unit variance using train statistics; float32 out."""
    mean, std = channel_statistics(x_train)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)
