"""Reading what ``feddst predict`` classifies: image files, image folders, IDX, npz and CSV files.

Every input becomes named samples in one of two kinds:

- *intensities* (N, C, H, W) in [0, 1], from 8-bit pixels / 255: image files (converted to the
  model's channels and resized to its input size), IDX files (uint8 images), uint8 npz arrays. The
  model's recorded normalisation is applied to them before inference;
- *model-ready* float32 values, used as they are: CSV feature rows (as the CSV data source takes
  them) and float npz arrays.

Uses the ``datasources`` readers (torch-free). Every failure is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasources.dataset import DataSourceError
from datasources.image_folder import IMAGE_SUFFIXES, read_image

NPZ_KEYS = ("x", "x_test", "images")  # array names tried in an .npz holding more than one array


class InputError(ValueError):
    """An input cannot be read or does not fit the model; the message says which and why."""


@dataclass(frozen=True)
class Samples:
    """Named samples of one input: ``values`` (N, C, H, W) float32, intensities or model-ready."""

    names: tuple[str, ...]
    values: np.ndarray
    intensities: bool  # True: in [0, 1], still to be normalised; False: model-ready


def _images(files: list[Path], shape: tuple[int, int, int]) -> Samples:
    c, h, w = shape
    if c not in (1, 3):
        raise InputError(f"image inputs need a 1- or 3-channel model, this one takes {c} channels")
    mode = "L" if c == 1 else "RGB"
    arrays = []
    for file in files:
        try:
            array = read_image(file, mode, (h, w))
        except DataSourceError as exc:
            raise InputError(str(exc)) from exc
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return Samples(tuple(str(f) for f in files), np.stack(arrays).astype(np.float32) / 255.0, True)


def _image_folder(folder: Path, shape: tuple[int, int, int]) -> Samples:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
    return _images(files, shape)


def _as_images(x: np.ndarray, source: str, shape: tuple[int, int, int]) -> np.ndarray:
    from datasources.loaders import to_nchw

    try:
        nchw = to_nchw(x, source)
    except DataSourceError as exc:
        raise InputError(str(exc)) from exc
    if nchw.shape[1:] != shape:
        raise InputError(f"{source}: samples are {tuple(nchw.shape[1:])} (C, H, W), the model takes {shape}")
    return nchw


def _idx(file: Path, shape: tuple[int, int, int]) -> Samples:
    from datasources.idx import read_idx

    try:
        images = read_idx(file)
    except DataSourceError as exc:
        raise InputError(str(exc)) from exc
    if images.ndim < 3:
        raise InputError(f"{file}: an IDX file of shape {images.shape} holds no images (a label file?)")
    x = _as_images(images, str(file), shape).astype(np.float32) / 255.0
    return Samples(tuple(f"{file}[{i}]" for i in range(len(x))), x, True)


def _npz(file: Path, shape: tuple[int, int, int]) -> Samples:
    try:
        with np.load(file, allow_pickle=False) as f:
            keys = list(f.files)
            key = keys[0] if len(keys) == 1 else next((k for k in NPZ_KEYS if k in keys), None)
            if key is None:
                raise InputError(f"{file}: holds {', '.join(keys) or 'no arrays'}; put the images in one array, "
                                 f"or name it one of {', '.join(NPZ_KEYS)}")
            array = f[key]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{file}: not a readable .npz file ({exc})") from exc
    x = _as_images(array, f"{file}:{key}", shape)
    names = tuple(f"{file}:{key}[{i}]" for i in range(len(x)))
    if x.dtype == np.uint8:
        return Samples(names, x.astype(np.float32) / 255.0, True)
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise InputError(f"{file}:{key}: expected uint8 pixels or finite float model inputs, got {x.dtype}")
    return Samples(names, x.astype(np.float32), False)


def _csv(file: Path, shape: tuple[int, int, int]) -> Samples:
    from datasources.csv_table import read_csv_features

    try:
        x = read_csv_features(file, shape)
    except DataSourceError as exc:
        raise InputError(str(exc)) from exc
    return Samples(tuple(f"{file}:{line}" for line in range(2, len(x) + 2)), x, False)


def read_samples(paths: Iterable[str | Path], shape: tuple[int, int, int]) -> list[Samples]:
    """The samples of every input path, for a model taking (C, H, W) ``shape``, in the order given.
    Raises :class:`InputError`."""
    out: list[Samples] = []
    for raw in paths:
        path = Path(raw)
        suffix = path.suffix.lower()
        if path.is_dir():
            out.append(_image_folder(path, shape))
        elif not path.is_file():
            raise InputError(f"{path}: no such file or folder")
        elif suffix in IMAGE_SUFFIXES:
            out.append(_images([path], shape))
        elif suffix == ".npz":
            out.append(_npz(path, shape))
        elif suffix == ".csv":
            out.append(_csv(path, shape))
        elif "idx" in path.name.lower() or suffix in (".gz", ".ubyte"):
            out.append(_idx(path, shape))
        else:
            raise InputError(f"{path}: unknown input type; give image files ({', '.join(IMAGE_SUFFIXES)}), an "
                             "image folder, an IDX file (name containing 'idx', optionally .gz), .npz or .csv")
    return out
