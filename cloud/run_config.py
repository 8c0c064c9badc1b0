"""``RunConfig``: the validated body of ``POST /api/runs`` (pydantic; bad values give clear 422s).

Field names and defaults follow ``feddst simulate`` (the paper's setting), so a run config and a
``SimulationConfig`` with the same values train the same model. ``eval`` optionally names a
held-out dataset and the partition used to report ``accuracy`` (mean over all clients of the
global model's local-test accuracy, exactly as ``Simulation.evaluate``) and ``global_accuracy``.

Validation is strict (``STRICT``): integers must be JSON integers (not booleans, strings or
``2.0``), numbers must be finite (``NaN`` and ``Infinity`` are 422s), unknown fields are
rejected. What depends on the coordinator (data roots, a loadable dataset) is checked by
:func:`cloud.run_planning.plan_run` when the run is created.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from feddst_core.choices import (
    AggregationName,
    AlgorithmName,
    DatasetName,
    DistributionName,
    MaskInitName,
    PartitionName,
    UploadFormatName,
)
from feddst_core.models import MODELS
from feddst_core.strategies import StrategyConfig

Algorithm = AlgorithmName  # the names this module has always exported
Aggregation = AggregationName
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class EvalConfig(BaseModel):
    """Held-out evaluation: the dataset and partition flags of ``feddst simulate``."""

    model_config = STRICT

    dataset: DatasetName = "digits"
    data_dir: str | None = None
    partition: PartitionName = "pathological"
    clients: int = Field(400, ge=1, le=100_000, description="Number of clients of the partition (devices I/N "
                         "use N).")
    classes_per_client: int = Field(2, ge=1, le=1000)
    samples_per_class: int = Field(20, ge=1, le=1_000_000)
    beta: float = Field(0.1, ge=1e-3, le=1e6, description="Dirichlet concentration (dirichlet partition).")
    eval_every: int = Field(10, ge=1, description="Evaluate every N rounds and after the last one.")

    @model_validator(mode="after")
    def _data_dir_needed(self) -> EvalConfig:
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"eval dataset {self.dataset} needs data_dir")
        return self


class CapabilityFilter(BaseModel):
    """Only devices meeting every given bound are eligible for selection."""

    model_config = STRICT

    min_cores: int | None = Field(None, ge=1)
    min_memory_mb: int | None = Field(None, ge=1)
    arch: str | None = None


MAX_CLIENTS_PER_ROUND = 20_000
"""The coordinator keeps any number of QoS 1 messages in flight (``cloud.mqtt_link.MAX_INFLIGHT``) and a round
sends each selected device its own Task and Ack: with more than 65 535 unacknowledged at once, packet ids
(16 bits) would be reused. 20 000 devices per round leave room for both plus the model chunks."""


class RunConfig(BaseModel):
    """One federated run. Defaults are the paper's MNIST setting, except the model (digits_cnn)."""

    model_config = ConfigDict(**STRICT, protected_namespaces=())

    name: str = Field("", max_length=200, description="Free-text label.")
    algorithm: Algorithm = "feddst"
    model: str = Field("digits_cnn", description="Model name (digits_cnn, mnist_cnn, cifar10_cnn).")
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    distribution: DistributionName = "erk"
    mask_init: MaskInitName = "magnitude"
    readjust_ratio: float = Field(0.01, ge=0.0, le=1.0, description="alpha")
    readjust_every: int = Field(10, ge=1, description="R_adj")
    readjust_until: int | None = Field(None, ge=0, description="T_end; default rounds // 2")
    prox_mu: float = Field(0.0, ge=0.0)
    server_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="fedavgm only")
    min_votes: int = Field(1, ge=1)
    clients_per_round: int = Field(20, ge=1, le=MAX_CLIENTS_PER_ROUND,
                                   description="devices selected per round (at most 20 000: each gets its own "
                                               "QoS 1 Task and Ack, and MQTT packet ids are 16 bits)")
    rounds: int = Field(200, ge=1)
    local_epochs: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.001, ge=0.0)
    seed: int = Field(0, ge=0, lt=2**63)
    round_timeout_s: float = Field(60.0, gt=0.0, description="Deadline of a round after its task is sent.")
    quorum: int = Field(1, ge=1, description="Replies needed to close a round at its deadline.")
    max_round_retries: int = Field(2, ge=0, description="Retries of a round that missed its quorum.")
    min_devices: int | None = Field(None, ge=1, description="Eligible devices a round waits for (default "
                                    "clients_per_round). Before round 1 it may exceed clients_per_round; below "
                                    "it, rounds select min(clients_per_round, eligible) devices.")
    device_wait_s: float = Field(120.0, gt=0.0, description="How long a round waits for enough devices.")
    select: CapabilityFilter | None = None
    eval: EvalConfig | None = None
    aggregation: Aggregation = Field("mean", description="Server rule over each weight's holders: mean "
                                     "(sample-weighted, streaming), trimmed_mean or median (unweighted, robust "
                                     "to a minority of poisoned updates; keeps the round's updates in memory).")
    trim_fraction: float = Field(0.1, ge=0.0, lt=0.5,
                                 description="trimmed_mean / median: fraction of a round's K updates assumed "
                                 "hostile, f = floor(trim_fraction * K); trimmed_mean drops f values at each end of "
                                 "every weight's holders, and a weight needs 2f + 1 holders to survive.")
    clip_update_norm: float | None = Field(None, gt=0.0,
                                           description="Max ||w_client - w_global|| / ||w_global|| per layer over "
                                           "the positions the device holds; larger updates are scaled down. "
                                           "None: no clipping.")
    upload_format: UploadFormatName = Field(
        "float32", description="Value format devices upload in (protocol/values.py). The coordinator decodes any "
        "format; Task schema v2 carries none, so live devices take it from their upload_format setting "
        "(`feddst trial` passes it to its agents) and feddst simulate / trial plan apply it to every update.")
    max_sample_count: int | None = Field(None, ge=1, description="Cap on any device's aggregation weight (its "
                                         "declared sample count is also capped at the count it registered).")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of {', '.join(sorted(MODELS))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.quorum > self.clients_per_round:
            raise ValueError(f"quorum ({self.quorum}) exceeds clients_per_round ({self.clients_per_round})")
        if self.min_devices is not None and self.quorum > self.min_devices:
            raise ValueError(f"quorum ({self.quorum}) exceeds min_devices ({self.min_devices}): a round of "
                             f"min_devices devices could never reach its quorum; lower quorum or raise min_devices")
        return self

    @property
    def t_end(self) -> int:
        return self.readjust_until if self.readjust_until is not None else self.rounds // 2

    def strategy_config(self) -> StrategyConfig:
        return StrategyConfig(
            algorithm=self.algorithm, sparsity=self.sparsity, distribution=self.distribution,
            mask_init=self.mask_init, readjust_ratio=self.readjust_ratio, readjust_every=self.readjust_every,
            readjust_until=self.t_end, prox_mu=self.prox_mu, server_momentum=self.server_momentum,
            min_votes=self.min_votes, clients_per_round=self.clients_per_round, aggregation=self.aggregation,
            trim_fraction=self.trim_fraction, clip_update_norm=self.clip_update_norm)

    def report_config(self) -> dict:
        """The ``config`` object of report.json (readjust_until resolved, as the simulator does)."""
        data = self.model_dump(mode="json")
        data["readjust_until"] = self.t_end
        return data
