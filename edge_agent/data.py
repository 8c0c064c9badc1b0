"""The agent's local training data: a data source, optionally cut to one client's partition share.

``--partition I/N`` applies ``feddst_core.partition.make_partition`` to the loaded dataset's labels
with the same kind, seed and parameters as ``feddst simulate``, so client I's rows here are exactly
the rows the simulator trains client I on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from datasources import Dataset, DataSourceError, load_dataset
from edge_agent.config import AgentSettings
from feddst_core.memory_layout import row_major_strides
from feddst_core.partition import PartitionError, make_partition

if TYPE_CHECKING:  # torch is imported at the first round (client_data), not by the idle agent
    from feddst_core.training import ClientData


class LocalDataError(ValueError):
    """The local data cannot be loaded or partitioned; the message says what to fix."""


@dataclass(frozen=True)
class LocalData:
    """Training samples held by this device: x (n, C, H, W) float32, y (n,) int64."""

    source: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def client_data(self) -> ClientData:
        """The samples as torch tensors sharing this object's memory (imports torch)."""
        import torch

        from feddst_core.training import ClientData

        return ClientData(torch.from_numpy(self.x), torch.from_numpy(self.y))


def row_major_array(a: np.ndarray, dtype: type) -> np.ndarray:
    """``a`` as ``dtype`` with row-major (C order) strides in every dimension, size-1 ones included.

    ``np.ascontiguousarray`` keeps an array numpy already calls C-contiguous, and numpy ignores the stride of a
    size-1 axis: an MNIST share (n, 1, 28, 28) indexed out of the ``[:, None]`` view that the loaders return
    keeps strides (3136, 4, 112, 4). torch reads those as channels-last too, so the round's convolutions ran
    channels-last and skipped the native NCHW max-pool that the simulator's (torch-indexed) batches take
    (``feddst_core.models.row_major``)."""
    out: np.ndarray = np.asarray(a, dtype=dtype)
    if out.strides == row_major_strides(out.shape, out.itemsize):
        return out
    return np.array(out, dtype=dtype, order="C", copy=True)


def load_source(settings: AgentSettings) -> Dataset:
    """The whole dataset named by ``--dataset`` / ``--data-dir`` (raises ``DataSourceError``)."""
    if settings.dataset == "image-folder":
        from datasources.image_folder import load_image_folder

        return load_image_folder(settings.data_dir or "")
    if settings.dataset == "csv":
        from datasources.csv_table import load_csv_table

        return load_csv_table(settings.data_dir or "", label_column=settings.label_column)
    return load_dataset(settings.dataset, settings.data_dir)


def load_local_data(settings: AgentSettings, dataset: Dataset | None = None) -> LocalData:
    """Load the data source and keep this device's share. Raises :class:`LocalDataError`."""
    try:
        data = dataset if dataset is not None else load_source(settings)
    except DataSourceError as exc:
        raise LocalDataError(f"cannot load --dataset {settings.dataset}: {exc}") from exc
    spec = settings.partition_spec
    if spec is None:
        x, y = data.x_train, data.y_train
    else:
        try:
            partition = make_partition(settings.partition_kind, data.y_train, data.y_test, spec.count,
                                       settings.seed, settings.classes_per_client, settings.samples_per_class,
                                       settings.beta)
        except PartitionError as exc:
            raise LocalDataError(f"--partition {spec.index}/{spec.count} ({settings.partition_kind}): {exc}") from exc
        idx = partition.train[spec.index]
        x, y = data.x_train[idx], data.y_train[idx]
    if len(y) == 0:
        raise LocalDataError(f"--dataset {settings.dataset}: this device's share holds no training samples")
    return LocalData(data.name, row_major_array(x, np.float32), row_major_array(y, np.int64),
                     data.num_classes)
