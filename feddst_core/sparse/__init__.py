"""CPU sparse kernels for local training: devices compute less, not just send less.

* ``kernels``: ``CsrPattern`` and the CSR autograd layers ``sparse_linear`` / ``sparse_conv2d`` (native
  kernels from ``feddst_core.native`` when built, torch.sparse / im2col otherwise);
* ``policy``: per-layer ``auto`` | ``sparse`` | ``dense`` selection with a measured threshold table;
* ``trainer``: ``SparseLocalTrainer`` (LocalTrainer's contract, one client) and ``make_local_trainer``;
* ``FC_HEAVY_MNIST_CNN`` (from ``feddst_core.models``): the FC-heavy benchmark model.

Importing this package (or ``policy``) does not import torch: the idle edge agent reads its threshold
table without it. The torch-based names (``kernels``, ``trainer``, ``FC_HEAVY_MNIST_CNN``) are imported
on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from feddst_core.sparse.policy import (
    DEFAULT_THRESHOLDS,
    KERNEL_CHOICES,
    TORCH_ONLY_THRESHOLDS,
    CalibrationPoint,
    SparseThreshold,
    choose_layer_kernels,
    default_thresholds,
    describe_thresholds,
    parse_thresholds_json,
    thresholds_from_calibration,
    thresholds_from_dict,
    thresholds_to_dict,
    validate_kernels,
)

if TYPE_CHECKING:
    from feddst_core.models import FC_HEAVY_MNIST_CNN
    from feddst_core.sparse.kernels import CsrPattern, sparse_conv2d, sparse_conv2d_pool, sparse_linear
    from feddst_core.sparse.trainer import SparseLocalTrainer, forward_mixed, make_local_trainer

LAZY_NAMES = {"FC_HEAVY_MNIST_CNN": "feddst_core.models", "CsrPattern": "feddst_core.sparse.kernels",
              "sparse_conv2d": "feddst_core.sparse.kernels",
              "sparse_conv2d_pool": "feddst_core.sparse.kernels", "sparse_linear": "feddst_core.sparse.kernels",
              "SparseLocalTrainer": "feddst_core.sparse.trainer", "forward_mixed": "feddst_core.sparse.trainer",
              "make_local_trainer": "feddst_core.sparse.trainer"}
"""Names that import torch, and the module each comes from."""

__all__ = [
    "DEFAULT_THRESHOLDS", "FC_HEAVY_MNIST_CNN", "KERNEL_CHOICES", "TORCH_ONLY_THRESHOLDS", "CsrPattern",
    "SparseLocalTrainer", "SparseThreshold", "choose_layer_kernels", "default_thresholds", "forward_mixed",
    "sparse_conv2d_pool",
    "make_local_trainer", "sparse_conv2d", "sparse_linear", "validate_kernels", "CalibrationPoint",
    "thresholds_from_calibration", "thresholds_from_dict", "thresholds_to_dict", "parse_thresholds_json",
    "describe_thresholds",
]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - PEP 562: the torch-based names, imported on first use
    module = LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
