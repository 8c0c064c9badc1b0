"""Check a run config against what this coordinator can run, and build what a run starts from.

``plan_run`` is called twice: when a run is created (``POST /api/runs``: a config it rejects is a
422 naming the field, and nothing is stored) and again when the run starts (data roots or files
may have changed meanwhile; a rejection then fails the run with the same message). It

* resolves ``eval.data_dir`` (symlinks and ``..`` resolved first) and requires it to lie under one
  of the ``data_roots`` setting; the error does not depend on whether the path exists, so it
  reveals nothing about the coordinator's file system;
* loads the evaluation dataset and builds its partition (so an unreadable dataset, a model /
  data shape mismatch or an unsatisfiable partition is reported at creation);
* builds the strategy and the seeded initial model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloud.errors import RunConfigRejectedError
from cloud.evaluation import HeldOutEvaluator
from cloud.run_config import RunConfig
from feddst_core.models import ModelSpec, get_model_spec
from feddst_core.strategies import FedStrategy, ServerState

DATA_ROOTS_SETTING = "data_roots (env FEDDST_CLOUD_DATA_ROOTS, a JSON list of directories)"


@dataclass
class RunPlan:
    spec: ModelSpec
    strategy: FedStrategy
    initial_state: ServerState
    evaluator: HeldOutEvaluator | None


def resolve_under_data_roots(data_dir: str, data_roots: Sequence[Path]) -> Path:
    """``data_dir`` with symlinks and ``..`` resolved, if that lies under a data root; else a
    :class:`RunConfigRejectedError` on ``eval.data_dir`` that names the setting. Relative paths are
    relative to the coordinator's working directory. Existence is not checked here."""
    resolved = Path(os.path.realpath(data_dir))
    for root in data_roots:
        if resolved.is_relative_to(os.path.realpath(root)):
            return resolved
    configured = ", ".join(str(r) for r in data_roots) if data_roots else "none configured"
    raise RunConfigRejectedError(("eval", "data_dir"), f"must lie under one of the coordinator's data roots "
                                 f"(setting {DATA_ROOTS_SETTING}; {configured}); only the built-in digits "
                                 f"dataset needs no data_dir")


def plan_run(config: RunConfig, data_roots: Sequence[Path]) -> RunPlan:
    """Everything a run starts from, or a :class:`RunConfigRejectedError` saying which field is why."""
    spec = get_model_spec(config.model)
    evaluator = None
    if config.eval is not None:
        data_dir = (resolve_under_data_roots(config.eval.data_dir, data_roots)
                    if config.eval.data_dir is not None else None)
        try:
            evaluator = HeldOutEvaluator(spec, config.eval, config.seed, data_dir)
        except ValueError as exc:  # DataSourceError, PartitionError, shape mismatch
            raise RunConfigRejectedError(("eval",), str(exc)) from exc
    try:
        strategy = FedStrategy(spec, config.strategy_config())
        state = strategy.initialize(config.seed)
    except (ValueError, ArithmeticError) as exc:
        raise RunConfigRejectedError((), f"cannot build the {config.algorithm} strategy: {exc}") from exc
    return RunPlan(spec, strategy, state, evaluator)
