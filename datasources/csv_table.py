"""A CSV table (a header row, numeric feature columns and one label column) as a ``Dataset``.

The features are taken as model-ready values (no normalisation), in column order, and shaped
(N, C, H, W): with ``shape`` given, to that shape; else a square count F = S*S becomes
(1, S, S) (64 -> 8x8 digits, 784 -> 28x28 MNIST), and any other count (1, 1, F). Labels are
integers (``3`` or ``3.0``); non-numeric labels are numbered 0..K-1 in sorted order. The whole
table is the train split; the test split is empty (the agent only trains).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from datasources.dataset import Dataset, DataSourceError


def _feature_shape(count: int, shape: tuple[int, int, int] | None, path: Path) -> tuple[int, int, int]:
    if shape is not None:
        if math.prod(shape) != count:
            raise DataSourceError(f"{path}: {count} feature columns do not fit shape {shape}")
        return shape
    side = math.isqrt(count)
    return (1, side, side) if side * side == count else (1, 1, count)


def _labels(raw: list[str], path: Path, label_column: str) -> tuple[np.ndarray, int]:
    try:
        values = [float(v) for v in raw]
    except ValueError:
        names = sorted(set(raw))
        index = {name: i for i, name in enumerate(names)}
        return np.asarray([index[v] for v in raw], dtype=np.int64), len(names)
    if any(not v.is_integer() or v < 0 for v in values):
        raise DataSourceError(f"{path}: column {label_column!r} must hold non-negative integer class labels")
    y = np.asarray(values, dtype=np.int64)
    return y, int(y.max()) + 1


def _read_table(p: Path, label_column: str) -> tuple[list[str], list[list[str]]]:
    """The header (stripped) and the non-blank rows of a CSV file."""
    if not p.is_file():
        raise DataSourceError(f"{p}: no such file; expected a CSV with a header row, feature columns and a "
                              f"{label_column!r} column")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataSourceError(f"{p}: not a readable CSV file ({exc})") from exc
    if not header:
        raise DataSourceError(f"{p}: empty file; expected a header row naming the columns")
    if not rows:
        raise DataSourceError(f"{p}: no data rows after the header")
    return [h.strip() for h in header], rows


def _features(p: Path, header: list[str], rows: list[list[str]], label_at: int | None) -> np.ndarray:
    """(rows, features) float32 of every column but ``label_at``; finite numbers only."""
    feature_count = len(header) - (label_at is not None)
    if feature_count < 1:
        raise DataSourceError(f"{p}: no feature columns besides the label")
    features = np.empty((len(rows), feature_count), dtype=np.float32)
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataSourceError(f"{p}:{line}: {len(row)} fields but the header has {len(header)}")
        cells = row if label_at is None else row[:label_at] + row[label_at + 1:]
        try:
            features[line - 2] = [float(c) for c in cells]
        except ValueError as exc:
            raise DataSourceError(f"{p}:{line}: a feature is not a number ({exc})") from exc
    if not np.isfinite(features).all():
        raise DataSourceError(f"{p}: features must be finite numbers (found NaN or inf)")
    return features


def load_csv_table(path: str | Path, label_column: str = "label", shape: tuple[int, int, int] | None = None,
                   num_classes: int | None = None) -> Dataset:
    """Read ``path``; every column but ``label_column`` is a feature. Raises :class:`DataSourceError`."""
    p = Path(path)
    header, rows = _read_table(p, label_column)
    if label_column not in header:
        raise DataSourceError(f"{p}: no label column {label_column!r}; the columns are "
                              f"{', '.join(header[:10])}{'...' if len(header) > 10 else ''} "
                              "(choose one with --label-column)")
    if header.count(label_column) > 1:
        raise DataSourceError(f"{p}: the label column {label_column!r} appears twice")
    label_at = header.index(label_column)
    features = _features(p, header, rows, label_at)
    raw_labels = [row[label_at].strip() for row in rows]
    y, found_classes = _labels(raw_labels, p, label_column)
    classes = found_classes if num_classes is None else num_classes
    if int(y.max()) >= classes:
        raise DataSourceError(f"{p}: label {int(y.max())} does not fit num_classes={classes}")
    c, h, w = _feature_shape(features.shape[1], shape, p)
    x = features.reshape(len(rows), c, h, w)
    empty_x = np.zeros((0, c, h, w), dtype=np.float32)
    return Dataset("csv", x, y, empty_x, np.zeros(0, dtype=np.int64), num_classes=classes)


def read_csv_features(path: str | Path, shape: tuple[int, int, int], label_column: str = "label") -> np.ndarray:
    """The feature rows of a CSV (header row; a ``label_column``, if present, is ignored) as float32
    (N, *shape), taken as model-ready values. Raises :class:`DataSourceError`."""
    p = Path(path)
    header, rows = _read_table(p, label_column)
    if header.count(label_column) > 1:
        raise DataSourceError(f"{p}: the label column {label_column!r} appears twice")
    features = _features(p, header, rows, header.index(label_column) if label_column in header else None)
    return features.reshape(len(rows), *_feature_shape(features.shape[1], shape, p))
