"""The CSV loader: feature columns + a label column, shaped for the models, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from datasources import DataSourceError
from datasources.csv_table import load_csv_table


def write_csv(path, header: list[str], rows: list[list[object]]) -> None:  # type: ignore[no-untyped-def]
    path.write_text("\n".join(",".join(str(v) for v in row) for row in [header, *rows]) + "\n")


def test_square_feature_count_becomes_an_image(tmp_path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 64)).astype(np.float32)
    labels = [0, 3, 9, 3, 1]
    path = tmp_path / "digits.csv"
    write_csv(path, [f"p{i}" for i in range(64)] + ["label"],
              [[*map(repr, map(float, f)), lab] for f, lab in zip(features, labels, strict=True)])
    data = load_csv_table(path)
    assert data.x_train.shape == (5, 1, 8, 8) and data.x_train.dtype == np.float32
    assert np.array_equal(data.x_train.reshape(5, 64), features)
    assert data.y_train.tolist() == labels and data.num_classes == 10 and len(data.x_test) == 0


def test_label_column_anywhere_named_labels_and_explicit_shape(tmp_path) -> None:
    path = tmp_path / "t.csv"
    write_csv(path, ["species", "a", "b", "c"], [["setosa", 1, 2, 3], ["virginica", 4, 5, 6], ["setosa", 7, 8, 9]])
    data = load_csv_table(path, label_column="species")
    assert data.x_train.shape == (3, 1, 1, 3)
    assert data.y_train.tolist() == [0, 1, 0] and data.num_classes == 2
    assert load_csv_table(path, label_column="species", shape=(3, 1, 1)).x_train.shape == (3, 3, 1, 1)


@pytest.mark.parametrize(("content", "kwargs", "message"), [
    ("a,b,label\n1,2,0\n", {"label_column": "y"}, "no label column 'y'"),
    ("", {}, "empty file"),
    ("a,label\n", {}, "no data rows"),
    ("a,b,label\n1,2\n", {}, r"t.csv:2: 2 fields but the header has 3"),
    ("a,b,label\n1,x,0\n", {}, r"t.csv:2: a feature is not a number"),
    ("a,b,label\n1,2,0.5\n", {}, "non-negative integer class labels"),
    ("a,b,label\n1,nan,0\n", {}, "finite"),
    ("label\n1\n", {}, "no feature columns"),
    ("a,b,label\n1,2,0\n", {"shape": (1, 2, 2)}, "do not fit shape"),
])
def test_errors_name_the_problem(tmp_path, content, kwargs, message) -> None:
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DataSourceError, match=message):
        load_csv_table(path, **kwargs)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataSourceError, match="no such file"):
        load_csv_table(tmp_path / "nope.csv")
