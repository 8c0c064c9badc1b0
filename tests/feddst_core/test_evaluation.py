import math

import numpy as np
import torch

from feddst_core.evaluation import client_and_global_accuracy
from feddst_core.models import DIGITS_CNN, forward_single, init_params


def labelled_by_construction(right: np.ndarray):  # type: ignore[no-untyped-def]
    """A test set whose sample i the model gets right exactly where ``right[i]`` (labels from the model's
    own one-sample-at-a-time predictions, shifted by one class where it must be wrong)."""
    params = init_params(DIGITS_CNN, torch.Generator().manual_seed(3))
    x = torch.randn(len(right), *DIGITS_CNN.input_shape, generator=torch.Generator().manual_seed(4))
    predicted = [int(forward_single(DIGITS_CNN, params, x[i:i + 1]).argmax()) for i in range(len(x))]
    y = torch.tensor([p if ok else (p + 1) % DIGITS_CNN.num_classes for p, ok in zip(predicted, right, strict=True)])
    return params, x, y


def test_mean_of_client_accuracies_and_the_whole_test_set() -> None:
    right = np.array([True, True, False, True, False, False, True, True, True, False])
    params, x, y = labelled_by_construction(right)
    clients = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([3, 4, 5, 6, 7, 8, 9])]
    mean_client, whole = client_and_global_accuracy(DIGITS_CNN, params, x, y, clients)
    assert math.isclose(mean_client, (2 / 3 + 4 / 7) / 2)  # the empty client does not count
    assert math.isclose(whole, 6 / 10)


def test_no_client_test_set_gives_nan_not_a_warning() -> None:
    params, x, y = labelled_by_construction(np.array([True, False]))
    mean_client, whole = client_and_global_accuracy(DIGITS_CNN, params, x, y, [np.array([], dtype=np.int64)])
    assert math.isnan(mean_client) and whole == 0.5
