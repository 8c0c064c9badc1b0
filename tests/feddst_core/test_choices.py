"""Every name of a choice list is understood by each place that takes it, and an unknown one is refused
with the list: the one definition (feddst_core.choices) reaches the run API, the simulator, the learning
core and the agent's settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud.run_config import EvalConfig, RunConfig
from datasources import DataSourceError, load_dataset
from edge_agent.config import AgentConfigError, load_settings
from feddst_core.choices import AGGREGATIONS, ALGORITHMS, DATASETS, LOG_LEVELS, MQTT_PROTOCOLS, PARTITIONS
from feddst_core.partition import make_partition
from feddst_core.strategies import StrategyConfig
from simulator.config import SimulationConfig

KEY = {"coordinator_public_key": "00" * 32}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_is_a_strategy_a_run_and_a_simulation(algorithm: str) -> None:
    config = RunConfig(algorithm=algorithm)
    assert config.strategy_config().algorithm == algorithm
    StrategyConfig(algorithm=algorithm)
    SimulationConfig(dataset="digits", algorithm=algorithm)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_every_aggregation_is_accepted(aggregation: str) -> None:
    assert RunConfig(aggregation=aggregation).strategy_config().aggregation == aggregation
    SimulationConfig(dataset="digits", aggregation=aggregation)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_every_partition_splits(partition: str) -> None:
    data = load_dataset("digits")
    split = make_partition(partition, data.y_train, data.y_test, 4, 0, 2, 5, 0.5)
    assert len(split.train) == 4 and all(len(t) for t in split.train)
    EvalConfig(partition=partition)


def test_unknown_names_are_refused_with_the_list() -> None:
    with pytest.raises(ValueError, match=", ".join(ALGORITHMS)):
        SimulationConfig(dataset="digits", algorithm="fedsgd")
    with pytest.raises(ValidationError, match="fedsgd"):
        RunConfig(algorithm="fedsgd")  # type: ignore[arg-type]
    with pytest.raises(DataSourceError, match=", ".join(DATASETS)):
        load_dataset("imagenet")
    with pytest.raises(AgentConfigError, match=", ".join(LOG_LEVELS)):
        load_settings({**KEY, "device_id": "dev-1", "log_level": "verbose"}, environ={})
    with pytest.raises(AgentConfigError, match=", ".join(MQTT_PROTOCOLS)):
        load_settings({**KEY, "device_id": "dev-1", "mqtt_protocol": "4"}, environ={})


@pytest.mark.parametrize("level", LOG_LEVELS)
def test_every_log_level_and_mqtt_protocol_is_an_agent_setting(level: str) -> None:
    for protocol in MQTT_PROTOCOLS:
        settings = load_settings({**KEY, "device_id": "dev-1", "log_level": level, "mqtt_protocol": protocol},
                                 environ={})
        assert (settings.log_level, settings.mqtt_protocol) == (level, protocol)
