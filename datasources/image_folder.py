"""An image folder with one sub-folder per class, read with Pillow, as a ``Dataset``.

Layout::

    root/
      0/ img001.png img002.png ...      # sub-folder name = class
      1/ ...

Labels: when every sub-folder name is a non-negative integer, that integer is the label (so a
device holding only classes 3 and 7 still labels them 3 and 7, consistent with every other
device); otherwise sub-folders are labelled 0..K-1 in sorted name order.

Pixels are scaled to [0, 1] and normalised with fixed published statistics (MNIST for one
channel, CIFAR-10 for three) so every device preprocesses identically without seeing the others'
data; a 28x28 grayscale folder exported from MNIST gives exactly the IDX loader's tensors. The
whole folder is the train split; the test split is empty (the agent only trains).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasources.dataset import Dataset, DataSourceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _class_labels(names: list[str]) -> dict[str, int]:
    if all(name.isdigit() for name in names):
        return {name: int(name) for name in names}
    return {name: i for i, name in enumerate(sorted(names))}


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 normalised with the fixed per-channel statistics."""
    x = images.astype(np.float32) / 255.0
    if x.shape[1] == 1:
        return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def read_image(file: Path, mode: str | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 (H, W) grayscale or (H, W, 3) RGB.

    ``mode``: "L" or "RGB"; default: "L" for grayscale files, else "RGB". ``size``: (height, width)
    to resize to (Pillow's default filter, bicubic); default: as stored.
    Raises :class:`DataSourceError` naming the file.
    """
    try:
        from PIL import Image, UnidentifiedImageError  # local import: Pillow is only needed here
    except ImportError as exc:
        raise DataSourceError(f"{file}: reading image files needs Pillow, which is not installed: pip install "
                              "pillow (or the [infer] extra); IDX, .npz and .csv inputs work without it") from exc

    try:
        with Image.open(file) as img:
            if mode is None:
                mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            converted = img.convert(mode)
            if size is not None and converted.size != (size[1], size[0]):
                converted = converted.resize((size[1], size[0]))
            return np.asarray(converted, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataSourceError(f"{file}: not a readable image ({exc})") from exc


def load_image_folder(root: str | Path, channels: int | None = None,
                      size: tuple[int, int] | None = None, num_classes: int | None = None) -> Dataset:
    """Read every image under ``root/<class>/``.

    ``channels``: 1 (grayscale) or 3 (RGB); default: 1 if the first image is grayscale, else 3.
    ``size``: (height, width) to resize to; default: every image must have the first image's size.
    ``num_classes``: default: the largest label + 1.
    Raises :class:`DataSourceError` naming the folder or file at fault.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataSourceError(f"{base}: no such directory; expected an image folder with one sub-folder "
                              "per class (e.g. {base}/0/*.png, {base}/1/*.png)")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataSourceError(f"{base}: no class sub-folders; put each class's images in its own "
                              f"sub-folder, e.g. {base}/0/, {base}/1/")
    labels = _class_labels([p.name for p in class_dirs])
    if channels not in (None, 1, 3):
        raise DataSourceError(f"channels must be 1 or 3, got {channels}")
    images: list[np.ndarray] = []
    targets: list[int] = []
    mode = None if channels is None else ("L" if channels == 1 else "RGB")
    expected: tuple[int, int] | None = size
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            array = read_image(file, mode, size)
            mode = "L" if array.ndim == 2 else "RGB"
            hw = (int(array.shape[0]), int(array.shape[1]))
            if expected is None:
                expected = hw
            elif hw != expected:
                raise DataSourceError(f"{file}: image is {hw[0]}x{hw[1]} but the others are "
                                      f"{expected[0]}x{expected[1]}; resize the images to one size")
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            targets.append(labels[class_dir.name])
    if not images:
        raise DataSourceError(f"{base}: the class sub-folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    x = normalise(np.stack(images))
    y = np.asarray(targets, dtype=np.int64)
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    if y.max() >= classes:
        raise DataSourceError(f"{base}: label {int(y.max())} does not fit num_classes={classes}")
    empty_x = np.zeros((0, *x.shape[1:]), dtype=np.float32)
    return Dataset("image-folder", x, y, empty_x, np.zeros(0, dtype=np.int64), num_classes=classes)
