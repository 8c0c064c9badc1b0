"""Held-out evaluation of the global model: the data and partition of ``Simulation``, the figures of
:func:`feddst_core.evaluation.client_and_global_accuracy` (the function ``Simulation.evaluate`` uses).

``accuracy`` = mean over all clients (with a non-empty local test set) of the global model's
accuracy on that client's local test set ``partition.test[i]``; ``global_accuracy`` = accuracy
on the whole test set. The partition is the one ``feddst simulate`` (and ``feddst agent run
--partition I/N``) builds from the same dataset, flags and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cloud.run_config import EvalConfig
from datasources import load_dataset
from feddst_core.evaluation import client_and_global_accuracy
from feddst_core.models import ModelSpec
from feddst_core.partition import make_partition


class HeldOutEvaluator:
    def __init__(self, spec: ModelSpec, config: EvalConfig, seed: int, data_dir: Path | None):
        """``data_dir``: ``config.data_dir`` already resolved and checked against the data roots
        (:func:`cloud.run_planning.resolve_under_data_roots`); never read from ``config``."""
        data = load_dataset(config.dataset, data_dir)
        if data.input_shape != spec.input_shape:
            raise ValueError(f"model {spec.name} expects inputs {spec.input_shape}, "
                             f"eval data {config.dataset} has {data.input_shape}")
        partition = make_partition(config.partition, data.y_train, data.y_test, config.clients, seed,
                                   config.classes_per_client, config.samples_per_class, config.beta)
        self.spec = spec
        self.every = config.eval_every
        self.x_test = torch.from_numpy(data.x_test)
        self.y_test = torch.from_numpy(data.y_test)
        self.client_tests = [t for t in partition.test if len(t)]

    def evaluate(self, params: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """(mean client local-test accuracy, full test-set accuracy)."""
        return client_and_global_accuracy(self.spec, params, self.x_test, self.y_test, self.client_tests)
