"""``load_dataset(name, data_dir)``: the one entry point the simulator and the agent use."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from datasources.cifar_batches import load_plain_pickle
from datasources.dataset import Dataset, DataSourceError, channel_statistics, standardize
from datasources.idx import load_idx_directory
from feddst_core.choices import DATASETS

# Published MNIST statistics (train set), so every device normalises identically.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _digits_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1] (N, 1, 8, 8), labels, and the seeded stratified test flags."""
    from sklearn.datasets import load_digits  # local import: scikit-learn is only needed here

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.extend(int(i) for i in idx[: round(len(idx) * test_fraction)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    return x, y, is_test


def load_digits_builtin(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, shipped inside the package: no download).

    A fixed, seeded, class-stratified split; pixels scaled from 0..16 to [0, 1], then standardised
    with the train split's mean and std (:func:`digits_statistics`).
    """
    x, y, is_test = _digits_split(test_fraction, seed)
    x_train, x_test = standardize(x[~is_test], x[is_test])
    return Dataset("digits", x_train, y[~is_test], x_test, y[is_test], num_classes=10)


def digits_statistics(test_fraction: float = 0.2, seed: int = 0) -> tuple[float, float]:
    """(mean, std) that :func:`load_digits_builtin` standardises the [0, 1]-scaled pixels with."""
    x, _, is_test = _digits_split(test_fraction, seed)
    mean, std = channel_statistics(x[~is_test])
    return float(mean.reshape(-1)[0]), float(std.reshape(-1)[0])


def load_mnist(data_dir: Path) -> Dataset:
    arrays = load_idx_directory(data_dir)

    def norm(images: np.ndarray) -> np.ndarray:
        return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]  # (N, 1, 28, 28)

    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return Dataset("mnist", norm(arrays["x_train"]), arrays["y_train"].astype(np.int64),
                   norm(arrays["x_test"]), arrays["y_test"].astype(np.int64), num_classes=num_classes)


def to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """Images (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3} -> (N, C, H, W) (same dtype)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4:
        return x
    raise DataSourceError(f"{source}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape}")


def load_npz(path: Path) -> Dataset:
    """An ``.npz`` with x_train, y_train, x_test, y_test; images (N, H, W), (N, C, H, W) or (N, H, W, C)."""
    required = ("x_train", "y_train", "x_test", "y_test")
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file; expected an .npz holding {', '.join(required)}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in required if k not in f.files]
            if missing:
                raise DataSourceError(f"{path}: missing arrays {missing}; expected {', '.join(required)}")
            arrays = {k: f[k] for k in required}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataSourceError):
            raise
        raise DataSourceError(f"{path}: not a readable .npz file ({exc})") from exc

    y_train, y_test = arrays["y_train"].astype(np.int64).reshape(-1), arrays["y_test"].astype(np.int64).reshape(-1)
    x_train = to_nchw(arrays["x_train"].astype(np.float32), str(path))
    x_test = to_nchw(arrays["x_test"].astype(np.float32), str(path))
    x_train, x_test = standardize(x_train, x_test)
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset("npz", x_train, y_train, x_test, y_test, num_classes=num_classes)


CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def load_cifar10(data_dir: Path) -> Dataset:
    """The CIFAR-10 "python version" directory (``data_batch_1..5``, ``test_batch``)."""
    if not data_dir.is_dir():
        raise DataSourceError(f"data directory {data_dir} does not exist; expected the CIFAR-10 python "
                              f"batches {', '.join(CIFAR_FILES)} (or use --dataset npz)")
    missing = [f for f in CIFAR_FILES if not (data_dir / f).is_file()]
    if missing:
        raise DataSourceError(f"{data_dir}: missing CIFAR-10 batches {missing}")
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for name in CIFAR_FILES:
        try:
            with open(data_dir / name, "rb") as fh:
                batch = load_plain_pickle(fh)  # plain data only: a pickle never runs code here
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            raise DataSourceError(f"{data_dir / name}: not a CIFAR-10 batch ({exc})") from exc
        split = "test" if name == "test_batch" else "train"
        xs[split].append(data.astype(np.float32) / 255.0)
        ys[split].append(labels)
    x_train, x_test = standardize(np.concatenate(xs["train"]), np.concatenate(xs["test"]))
    return Dataset("cifar10", x_train, np.concatenate(ys["train"]), x_test, np.concatenate(ys["test"]), 10)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load ``name`` (one of ``DATASETS``); mnist, cifar10 and npz need ``data_dir``."""
    if name not in DATASETS:
        raise DataSourceError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_builtin()
    if data_dir is None:
        raise DataSourceError(f"dataset {name!r} needs --data-dir (a directory, or an .npz file for npz)")
    path = Path(data_dir)
    if name == "mnist":
        return load_mnist(path)
    if name == "cifar10":
        return load_cifar10(path)
    return load_npz(path)
