"""Trial spec files (TOML): what ``feddst trial run`` and ``feddst trial plan`` read.

Contract keys (docs/field_trials.md; extend, don't rename)::

    [trial]   name, broker ("embedded" | "mqtt://HOST:PORT"), algorithms, rounds, clients_per_round,
              upload_budget_mb (0 = none), shaper ("agent" | "netem"), seed, upload_format,
              round_timeout_s, target_accuracy (extensions: deadline of a round; 0 = FedAvg's final - 1 point)
    [data]    dataset, data_dir, partition, classes_per_client, samples_per_class, beta
    [train]   any RunConfig training field (local_epochs, batch_size, lr, sparsity, ...)
    [profiles.NAME]  uplink_kbps, downlink_kbps, latency_ms, jitter_ms, loss_pct, compute_factor, availability
    [[devices]]      count, profile (a preset or a [profiles] name)

``availability``: ``"always"``, ``"duty:ON/PERIOD"`` (online the first ON rounds of every PERIOD) or
``"churn:P"`` (offline with probability P in each round). Units: kbit/s are 1000 bit/s; MB are 10**6 bytes.

Every error is a :class:`TrialSpecError` whose message names the file and the key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cloud.run_config import RunConfig

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
DEVICE_TORCH_THREADS = 1
"""Torch threads each trial agent trains with (``feddst agent run --threads``); the planner calibrates
compute the same way."""
AlgorithmName = Literal["feddst", "fedavg", "fedavgm", "fedprox", "randommask"]
DEFAULT_ALGORITHMS: tuple[AlgorithmName, ...] = ("feddst", "fedavg")
TRAIN_KEYS_SET_ELSEWHERE = {"name", "algorithm", "rounds", "clients_per_round", "seed", "eval", "upload_format",
                            "round_timeout_s", "min_devices", "quorum", "device_wait_s", "select"}
AVAILABILITY = re.compile(r"^(always|duty:(\d+)/(\d+)|churn:(0(\.\d+)?|1(\.0+)?))$")


class TrialSpecError(ValueError):
    """The spec file is missing, unparsable or invalid; the message names the file and the key."""


class LinkProfile(BaseModel):
    """One class of device link. Rates in kbit/s (1000 bit/s), times in ms, loss in percent."""

    model_config = STRICT

    uplink_kbps: float = Field(gt=0, le=10_000_000)
    downlink_kbps: float = Field(gt=0, le=10_000_000)
    latency_ms: float = Field(0.0, ge=0, le=60_000, description="round-trip time")
    jitter_ms: float = Field(0.0, ge=0, le=60_000)
    loss_pct: float = Field(0.0, ge=0, lt=50, description="packet loss; 50 % or more never completes a round")
    compute_factor: float = Field(1.0, ge=1.0, le=1000.0, description="training time x this (slow devices)")
    availability: str = "always"

    @field_validator("availability")
    @classmethod
    def _availability(cls, value: str) -> str:
        match = AVAILABILITY.match(value)
        if not match:
            raise ValueError(f"{value!r} is not 'always', 'duty:ON/PERIOD' or 'churn:P' (0 <= P <= 1)")
        if match.group(2) is not None and not 1 <= int(match.group(2)) <= int(match.group(3)):
            raise ValueError(f"{value!r}: a duty cycle needs 1 <= ON <= PERIOD")
        return value

    def online(self, server_round: int, draw: float) -> bool:
        """Is a device of this profile online in ``server_round`` (1-based)? ``draw`` is uniform in [0, 1)."""
        match = AVAILABILITY.match(self.availability)
        assert match is not None
        if match.group(2) is not None:
            return (server_round - 1) % int(match.group(3)) < int(match.group(2))
        if match.group(4) is not None:
            return draw >= float(match.group(4))
        return True


PRESETS: dict[str, LinkProfile] = {
    "wifi-lab": LinkProfile(uplink_kbps=50_000, downlink_kbps=100_000, latency_ms=5, jitter_ms=1),
    "lte-good": LinkProfile(uplink_kbps=10_000, downlink_kbps=30_000, latency_ms=40, jitter_ms=10, loss_pct=0.1),
    "lte-rural": LinkProfile(uplink_kbps=1_000, downlink_kbps=5_000, latency_ms=100, jitter_ms=30, loss_pct=1.0),
    "nb-iot": LinkProfile(uplink_kbps=60, downlink_kbps=30, latency_ms=1_500, jitter_ms=500, loss_pct=1.0),
    "satellite": LinkProfile(uplink_kbps=2_000, downlink_kbps=20_000, latency_ms=650, jitter_ms=50, loss_pct=0.5),
}
"""Built-in link profiles users can name in ``[[devices]]`` or copy into ``[profiles]``."""


class TrialSection(BaseModel):
    model_config = STRICT

    name: str = Field("trial", min_length=1, max_length=200)
    broker: str = "embedded"
    algorithms: list[AlgorithmName] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS), min_length=1)
    rounds: int = Field(20, ge=1, le=100_000)
    clients_per_round: int = Field(10, ge=1)
    upload_budget_mb: float = Field(0.0, ge=0)
    shaper: Literal["agent", "netem"] = "agent"
    seed: int = Field(0, ge=0, lt=2**63)
    upload_format: Literal["float32", "float16", "bfloat16", "int8"] = "float32"
    round_timeout_s: float = Field(120.0, gt=0)
    target_accuracy: float = Field(0.0, ge=0, le=1)

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        if value != "embedded" and not re.match(r"^mqtts?://[^/:\s]+:\d{1,5}$", value):
            raise ValueError(f"{value!r} is neither 'embedded' nor mqtt://HOST:PORT")
        return value

    @field_validator("algorithms")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} names an algorithm twice")
        return value


class DataSection(BaseModel):
    model_config = STRICT

    dataset: Literal["digits", "mnist", "cifar10", "npz"] = "digits"
    data_dir: str | None = None
    partition: Literal["pathological", "dirichlet", "iid"] = "pathological"
    classes_per_client: int = Field(2, ge=1)
    samples_per_class: int = Field(20, ge=1)
    beta: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _needs_dir(self) -> DataSection:
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"dataset {self.dataset} needs data_dir")
        return self


class DeviceGroup(BaseModel):
    model_config = STRICT

    count: int = Field(ge=1, le=100_000)
    profile: str


class TrialSpec(BaseModel):
    """A validated trial spec; ``devices`` expand to :meth:`device_profiles` in file order."""

    model_config = STRICT

    trial: TrialSection = Field(default_factory=TrialSection)
    data: DataSection = Field(default_factory=DataSection)
    train: dict[str, bool | int | float | str] = Field(default_factory=dict)
    profiles: dict[str, LinkProfile] = Field(default_factory=dict)
    devices: list[DeviceGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TrialSpec:
        for i, group in enumerate(self.devices):
            if group.profile not in self.profiles and group.profile not in PRESETS:
                raise ValueError(f"devices[{i}].profile: unknown profile {group.profile!r}; define "
                                 f"[profiles.{group.profile}] or use a preset: {', '.join(PRESETS)}")
        total = sum(g.count for g in self.devices)
        if self.trial.clients_per_round > total:
            raise ValueError(f"trial.clients_per_round: {self.trial.clients_per_round} exceeds the "
                             f"{total} devices of [[devices]]")
        for key in self.train:
            if key in TRAIN_KEYS_SET_ELSEWHERE:
                raise ValueError(f"train.{key}: set by [trial] (or the runner), not in [train]")
            if key not in RunConfig.model_fields:
                raise ValueError(f"train.{key}: not a RunConfig training field; known: "
                                 + ", ".join(sorted(set(RunConfig.model_fields) - TRAIN_KEYS_SET_ELSEWHERE)))
        for algorithm in self.trial.algorithms:  # every run config must validate before anything starts
            try:
                self.run_config(algorithm)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ValueError(f"train.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc
        return self

    def profile(self, name: str) -> LinkProfile:
        return self.profiles.get(name) or PRESETS[name]

    def device_profiles(self) -> list[tuple[str, str]]:
        """(device id, profile name) of every device, in spec order; ids are ``<profile>-<nnn>``."""
        out: list[tuple[str, str]] = []
        for group in self.devices:
            start = sum(1 for _, p in out if p == group.profile)
            out += [(f"{group.profile}-{start + i:03d}", group.profile) for i in range(group.count)]
        return out

    @property
    def device_count(self) -> int:
        return sum(g.count for g in self.devices)

    @property
    def model(self) -> str:
        return str(self.train.get("model") or {"digits": "digits_cnn", "mnist": "mnist_cnn",
                                                 "cifar10": "cifar10_cnn"}.get(self.data.dataset, "mnist_cnn"))

    def run_config(self, algorithm: str, eval_every: int = 1) -> RunConfig:
        """The live run of one algorithm (same seed, devices and data for every algorithm)."""
        from cloud.run_config import EvalConfig

        t, d = self.trial, self.data
        eval_config = EvalConfig(dataset=d.dataset, data_dir=d.data_dir, partition=d.partition,
                                 clients=self.device_count, classes_per_client=d.classes_per_client,
                                 samples_per_class=d.samples_per_class, beta=d.beta, eval_every=eval_every)
        return RunConfig.model_validate({
            **self.train, "model": self.model, "name": f"{t.name} {algorithm}", "algorithm": algorithm,
            "rounds": t.rounds, "clients_per_round": t.clients_per_round, "seed": t.seed,
            "round_timeout_s": t.round_timeout_s, "upload_format": t.upload_format, "quorum": 1,
            "min_devices": self.device_count,
            "device_wait_s": 300.0, "eval": eval_config.model_dump()}, strict=False)


def load_spec(path: str | Path) -> TrialSpec:
    """Read and validate a spec file; :class:`TrialSpecError` names the file and the offending key."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrialSpecError(f"{p}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TrialSpecError(f"{p}: cannot read it ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrialSpecError(f"{p}: not valid TOML: {exc}") from exc
    return parse_spec(raw, str(p))


def parse_spec(raw: dict, source: str = "<spec>") -> TrialSpec:
    try:
        return TrialSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{key}: {message}" if key else message)
        raise TrialSpecError(f"{source}: " + "; ".join(problems)) from exc
