"""The accuracy figures of ``report.json``, computed one way for the simulator and the coordinator.

``accuracy`` is the mean over clients (those with a non-empty local test set) of the global model's
accuracy on that client's local test set, the paper's metric; ``global_accuracy`` is the accuracy on
the whole test set. Both are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from feddst_core.models import ModelSpec, predict


def client_and_global_accuracy(spec: ModelSpec, params: Mapping[str, torch.Tensor], x_test: torch.Tensor,
                               y_test: torch.Tensor, client_tests: Sequence[np.ndarray]) -> tuple[float, float]:
    """(mean client local-test accuracy, full test-set accuracy) of ``params``.

    ``x_test`` (N, C, H, W) float32 and ``y_test`` (N,) int64 are the whole test set; ``client_tests``
    holds each client's local test set as indices into it (``Partition.test``); empty ones are skipped.
    With no non-empty client test set the first figure is NaN.
    """
    correct = (predict(spec, params, x_test) == y_test).numpy()
    per_client = [float(correct[t].mean()) for t in client_tests if len(t)]
    mean_client = float(np.mean(per_client)) if per_client else float("nan")
    return mean_client, float(correct.mean())
