"""The image-folder loader: one sub-folder per class, Pillow, fixed normalisation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasources import DataSourceError
from datasources.image_folder import MNIST_MEAN, MNIST_STD, load_image_folder


def write_image(path, pixels: np.ndarray, mode: str = "L") -> None:  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)


def test_grayscale_folder_with_numeric_classes(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = {3: [rng.integers(0, 256, (8, 8)) for _ in range(2)], 7: [rng.integers(0, 256, (8, 8))]}
    for label, arrays in images.items():
        for i, pixels in enumerate(arrays):
            write_image(tmp_path / str(label) / f"img{i}.png", pixels)
    (tmp_path / "3" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.x_train.shape == (3, 1, 8, 8) and data.x_train.dtype == np.float32
    assert data.y_train.tolist() == [3, 3, 7]  # the folder name is the label
    assert data.num_classes == 8 and len(data.x_test) == 0
    expected = (images[3][0] / 255.0 - MNIST_MEAN) / MNIST_STD
    assert np.allclose(data.x_train[0, 0], expected, atol=1e-6)


def test_rgb_folder_with_named_classes_and_resize(tmp_path) -> None:
    rng = np.random.default_rng(1)
    write_image(tmp_path / "cat" / "a.png", rng.integers(0, 256, (10, 12, 3)), mode="RGB")
    write_image(tmp_path / "dog" / "b.jpg", rng.integers(0, 256, (20, 24, 3)), mode="RGB")
    data = load_image_folder(tmp_path, size=(32, 32))
    assert data.x_train.shape == (2, 3, 32, 32)
    assert data.y_train.tolist() == [0, 1] and data.num_classes == 2


def test_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(DataSourceError, match="no such directory"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DataSourceError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "0").mkdir()
    with pytest.raises(DataSourceError, match="hold no images"):
        load_image_folder(tmp_path)
    write_image(tmp_path / "0" / "a.png", np.zeros((8, 8)))
    write_image(tmp_path / "1" / "b.png", np.zeros((9, 8)))
    with pytest.raises(DataSourceError, match=r"b.png: image is 9x8 but the others are 8x8"):
        load_image_folder(tmp_path)
    (tmp_path / "1" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataSourceError, match="b.png: not a readable image"):
        load_image_folder(tmp_path)
