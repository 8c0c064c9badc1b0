"""``datasources.preprocessing``: the normalisation a model file records is the one the loaders apply."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from datasources.loaders import load_digits_builtin
from datasources.preprocessing import InputNormalisation, dataset_class_labels, dataset_normalisation


def test_digits_normalisation_reproduces_the_loader_exactly():
    norm = dataset_normalisation("digits", 1)
    assert norm is not None
    raw = (load_digits().images.astype(np.float32) / 16.0)[:, None]
    data = load_digits_builtin()
    normalised = norm.apply(raw)
    # every loader sample is one of the raw images, normalised: compare on the first train/test samples
    for sample in (data.x_train[0], data.x_test[0], data.x_test[-1]):
        matches = np.flatnonzero((normalised == sample).all(axis=(1, 2, 3)))
        assert len(matches) >= 1


def test_mnist_and_image_folder_statistics():
    from datasources.image_folder import normalise

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    mnist = dataset_normalisation("mnist", 1)
    assert mnist is not None
    np.testing.assert_allclose(mnist.apply(pixels / 255.0), (pixels / 255.0 - 0.1307) / 0.3081, atol=1e-6)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    folder = dataset_normalisation("image-folder", 3)
    assert folder is not None
    np.testing.assert_allclose(folder.apply(rgb / 255.0), normalise(rgb), atol=1e-6)
    assert dataset_normalisation("csv", 1) is None and dataset_normalisation("npz", 3) is None


def test_class_labels():
    assert dataset_class_labels("mnist", 10) == tuple("0123456789")
    assert dataset_class_labels("cifar10", 10)[0] == "airplane"
    assert dataset_class_labels("image-folder", 10) is None


@pytest.mark.parametrize("mean, std", [((), ()), ((0.5,), (0.0,)), ((0.5,), (0.2, 0.3)), ((float("nan"),), (1.0,))])
def test_bad_statistics_are_refused(mean, std):
    with pytest.raises(ValueError, match="normalisation"):
        InputNormalisation(mean, std, "test")
