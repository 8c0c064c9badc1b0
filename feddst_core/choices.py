"""The names a user picks from, each defined once (pure typing: no torch, no numpy, cheap to import).

Every choice list is a ``Literal`` type, which pydantic (``RunConfig``, the coordinator settings),
typer (the ``feddst`` flags) and mypy all read, and the tuple of its values (``get_args``) for the
checks of plain dataclasses (``SimulationConfig``, ``AgentSettings``) and their error messages.
The values are contracts (CLI flags, ``report.json``, ``POST /api/runs``): extend, never rename.
"""

from __future__ import annotations

from typing import Literal, get_args

AlgorithmName = Literal["feddst", "fedavg", "fedavgm", "fedprox", "randommask"]
"""Training algorithms (``feddst_core.strategies``)."""
ALGORITHMS: tuple[str, ...] = get_args(AlgorithmName)

AggregationName = Literal["mean", "trimmed_mean", "median"]
"""How the server combines the updates (``feddst_core.robust_aggregation``)."""
AGGREGATIONS: tuple[str, ...] = get_args(AggregationName)

PartitionName = Literal["pathological", "dirichlet", "iid"]
"""How a dataset is split across clients (``feddst_core.partition``)."""
PARTITIONS: tuple[str, ...] = get_args(PartitionName)

DatasetName = Literal["digits", "mnist", "cifar10", "npz"]
"""Labelled datasets with a train and a test split (``datasources.load_dataset``): the simulator's and a
run's held-out evaluation data."""
DATASETS: tuple[str, ...] = get_args(DatasetName)

DataSourceName = Literal[DatasetName, "image-folder", "csv"]
"""What a device can train on: the datasets above, a folder of images per class, a CSV table."""
DATA_SOURCES: tuple[str, ...] = get_args(DataSourceName)

MqttVersion = Literal["5", "3.1.1"]
"""MQTT protocol versions the coordinator and the agent speak."""
MQTT_VERSIONS: tuple[str, ...] = get_args(MqttVersion)

MqttProtocolChoice = Literal["auto", MqttVersion]
"""The agent's ``--mqtt-protocol``: a version, or ``auto`` (5, falling back to 3.1.1 if refused)."""
MQTT_PROTOCOLS: tuple[str, ...] = get_args(MqttProtocolChoice)

LogLevel = Literal["debug", "info", "warning", "error"]
"""Log levels of the agent (``--log-level``)."""
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

DistributionName = Literal["uniform", "er", "erk"]
"""How the sparsity budget is spread over the layers (``feddst_core.masks.layer_budgets``)."""
DISTRIBUTIONS: tuple[str, ...] = get_args(DistributionName)

MaskInitName = Literal["magnitude", "random"]
"""How the first masks are drawn (``feddst_core.strategies``)."""
MASK_INITS: tuple[str, ...] = get_args(MaskInitName)

KernelName = Literal["auto", "sparse", "dense"]
"""Local training kernels (``feddst_core.sparse.policy``): measured per layer, compressed sparse, masked dense."""
KERNEL_CHOICES: tuple[str, ...] = get_args(KernelName)

UploadFormatName = Literal["float32", "float16", "bfloat16", "int8"]
"""How update values are encoded on the wire (protocol.values.VALUE_FORMATS: float32 lossless)."""
UPLOAD_FORMATS: tuple[str, ...] = get_args(UploadFormatName)

CpuPolicyName = Literal["batch", "normal"]
"""Linux scheduling policy of the agent's threads (``edge_agent.scheduling``)."""
CPU_POLICIES: tuple[str, ...] = get_args(CpuPolicyName)
