"""Agent settings (flags > env > file > defaults, clear errors) and the local data share."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config import (
    AgentConfigError,
    AgentSettings,
    load_settings,
    parse_broker_url,
    parse_partition,
    read_key_file,
)
from edge_agent.data import LocalDataError, load_local_data
from simulator.config import SimulationConfig
from simulator.engine import Simulation


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\ndevice-id = "dev-file"\nbroker = "mqtt://file-host:1000"\nthreads = 3\n'
                      'heartbeat_s = 7.5\npartition = "1/4"\n')
    env = {"FEDDST_BROKER": "mqtt://env-host:2000", "FEDDST_THREADS": "2", "FEDDST_PASSWORD": "secret"}
    settings = load_settings({"threads": 4, "broker": None}, environ=env, config_file=config)
    assert settings.threads == 4  # flag beats env and file
    assert settings.broker == "mqtt://env-host:2000"  # env beats file
    assert settings.heartbeat_s == 7.5 and settings.device_id == "dev-file"  # file beats defaults
    assert settings.password == "secret" and settings.redacted()["password"] == "***"
    assert settings.max_packet == 128 * 1024 and settings.dataset == "digits"  # defaults
    assert settings.partition_spec is not None and settings.client_index == 1
    assert settings.mqtt_username == "dev-file"


def test_config_file_from_env_and_yaml(tmp_path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("device_id: dev-7\ndataset: csv\ndata_dir: /data/table.csv\nlabel_column: y\n")
    settings = load_settings({}, environ={"FEDDST_CONFIG": str(config)})
    assert (settings.device_id, settings.dataset, settings.label_column) == ("dev-7", "csv", "y")


@pytest.mark.parametrize(("text", "message"), [
    ('device_id = "d"\ncolour = "blue"\n', "unknown setting 'colour'"),
    ('device_id = "d"\nthreads = "many"\n', "--threads (from"),
    ('device_id = "d"\nthreads = 1.5\n', "not an integer"),
    ("device_id = [", "cannot parse"),
])
def test_bad_config_files(tmp_path, text, message) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    with pytest.raises(AgentConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_settings({}, environ={}, config_file=config)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(AgentConfigError, match=r"\$FEDDST_HEARTBEAT_S"):
        load_settings({"device_id": "d"}, environ={"FEDDST_HEARTBEAT_S": "soon"})


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://broker.local") == parse_broker_url("mqtt://broker.local:1883")
    secure = parse_broker_url("mqtts://broker.example.com")
    assert secure.tls and secure.port == 8883
    for bad in ("broker:1883", "http://x:1", "mqtt://:1883", "mqtt://u:p@h:1", "mqtt://h:1/path", "mqtt://h:x"):
        with pytest.raises(AgentConfigError, match="--broker"):
            parse_broker_url(bad)
    with pytest.raises(AgentConfigError, match="--ca-file"):
        AgentSettings(device_id="d", ca_file="/etc/ssl/ca.pem")


def test_partition_specs() -> None:
    assert parse_partition("3/8").index == 3 and parse_partition(" 0 / 1 ").count == 1
    for bad, message in (("8/8", "out of range"), ("9/8", "use 0..7"), ("1/0", "N must be"), ("-1/8", "not I/N"),
                         ("3", "not I/N")):
        with pytest.raises(AgentConfigError, match=message):
            parse_partition(bad)


def test_key_files(tmp_path) -> None:
    good = tmp_path / "good.hex"
    good.write_text("00112233445566778899aabbccddeeff\n0011\n")
    assert read_key_file(good) == bytes.fromhex("00112233445566778899aabbccddeeff0011")
    short = tmp_path / "short.hex"
    short.write_text("0011")
    with pytest.raises(AgentConfigError, match="at least 16 bytes"):
        read_key_file(short)
    text = tmp_path / "text.hex"
    text.write_text("not hex at all")
    with pytest.raises(AgentConfigError, match="not hex"):
        read_key_file(text)


def test_partition_share_is_the_simulators_client(tmp_path) -> None:
    for kind, extra in (("pathological", {}), ("dirichlet", {"beta": 0.5}), ("iid", {})):
        sim = Simulation(SimulationConfig(dataset="digits", clients=8, clients_per_round=2, partition=kind,
                                          seed=5, **extra))
        for index in (0, 5):
            settings = AgentSettings(device_id="d", partition=f"{index}/8", partition_kind=kind, seed=5, **extra)
            local = load_local_data(settings)
            expected = sim.client_data(index)
            assert np.array_equal(local.x, expected.x.numpy()) and np.array_equal(local.y, expected.y.numpy())


def test_impossible_partition_and_missing_data_are_clear() -> None:
    with pytest.raises(LocalDataError, match="--partition 3/400 .*cannot be satisfied"):
        load_local_data(AgentSettings(device_id="d", partition="3/400", samples_per_class=50))
    with pytest.raises(LocalDataError, match="cannot load --dataset npz"):
        load_local_data(AgentSettings(device_id="d", dataset="npz", data_dir="/nonexistent/data.npz"))


def test_kernels_setting_defaults_to_auto_and_refuses_unknown_values() -> None:
    assert load_settings({"device_id": "d"}, environ={}).kernels == "auto"
    assert load_settings({"device_id": "d"}, environ={"FEDDST_KERNELS": "dense"}).kernels == "dense"
    with pytest.raises(AgentConfigError, match="--kernels: choose one of auto, sparse, dense"):
        load_settings({"device_id": "d"}, environ={"FEDDST_KERNELS": "fast"})
