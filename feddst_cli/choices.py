"""Choice enums shared by several ``feddst`` sub-commands (their values are CLI contracts)."""

from __future__ import annotations

from enum import StrEnum


class PartitionKind(StrEnum):
    """How a dataset is split across clients (``feddst_core.partition.PARTITIONS``)."""

    pathological = "pathological"
    dirichlet = "dirichlet"
    iid = "iid"


class CpuPolicy(StrEnum):
    """Linux scheduling policy of the agent's threads (``edge_agent.scheduling``)."""

    batch = "batch"
    normal = "normal"


class KernelChoice(StrEnum):
    """Local training kernels (``feddst_core.sparse.KERNEL_CHOICES``)."""

    auto = "auto"
    sparse = "sparse"
    dense = "dense"
