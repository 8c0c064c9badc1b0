"""IDX files (the MNIST format): a magic number, big-endian dimension sizes, then raw data.

Magic = 0x00 0x00 <type> <ndim>; type 0x08 = unsigned byte (the only type MNIST uses, and the
only one read here). Files may be gzipped (``.gz``) or raw.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from datasources.dataset import DataSourceError

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Decode the bytes of one IDX file; every inconsistency is a ``DataSourceError``."""
    if len(data) < 4:
        raise DataSourceError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataSourceError(f"{source}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataSourceError(f"{source}: truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataSourceError(f"{source}: header promises {expected} bytes of data for shape {dims}, "
                              f"file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataSourceError(f"{path}: cannot read ({exc})") from exc
    return parse_idx(data, str(path))


def find_idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataSourceError(
        f"{directory}: missing {stem}(.gz). An MNIST-format directory holds the four standard files: "
        + ", ".join(f"{s}.gz" for s in MNIST_FILES.values()) + " (gzipped or not)")


def load_idx_directory(directory: Path) -> dict[str, np.ndarray]:
    """The four standard arrays of an MNIST-format directory (uint8 images, uint8 labels)."""
    if not directory.is_dir():
        raise DataSourceError(f"data directory {directory} does not exist; expected a directory holding "
                              + ", ".join(f"{s}.gz" for s in MNIST_FILES.values()))
    arrays = {key: read_idx(find_idx_file(directory, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataSourceError(f"{directory}: {split} images {x.shape} and labels {y.shape} do not match")
    return arrays
