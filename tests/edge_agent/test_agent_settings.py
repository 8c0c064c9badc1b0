"""Agent settings (flags > env > file > defaults, clear errors) and the local data share."""

from __future__ import annotations

import json
import logging
import platform
import threading

import numpy as np
import pytest
from agent_harness import COORDINATOR_PUBLIC_KEY, KEYED, global_model, make_task

from edge_agent.agent import EdgeAgent
from edge_agent.config import (
    AgentConfigError,
    AgentSettings,
    kernel_thresholds_warnings,
    load_settings,
    parse_broker_url,
    parse_partition,
    read_kernel_thresholds,
    read_key_file,
)
from edge_agent.data import LocalDataError, load_local_data
from feddst_core import native
from feddst_core.sparse import CalibrationPoint, SparseThreshold, thresholds_from_calibration, thresholds_to_dict
from feddst_core.wire_format import model_broadcast
from simulator.config import SimulationConfig
from simulator.engine import Simulation


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\ndevice-id = "dev-file"\nbroker-url = "mqtt://file-host:1000"\nthreads = 3\n'
                      'heartbeat_s = 7.5\npartition = "1/4"\n'
                      f'coordinator_public_key = "{COORDINATOR_PUBLIC_KEY}"\n')
    env = {"FEDDST_BROKER_URL": "mqtt://env-host:2000", "FEDDST_THREADS": "2", "FEDDST_PASSWORD": "secret"}
    settings = load_settings({"threads": 4, "broker_url": None}, environ=env, config_file=config)
    assert settings.threads == 4  # flag beats env and file
    assert settings.broker_url == "mqtt://env-host:2000"  # env beats file
    assert settings.heartbeat_s == 7.5 and settings.device_id == "dev-file"  # file beats defaults
    assert settings.password == "secret" and settings.redacted()["password"] == "***"
    assert settings.max_packet == 128 * 1024 and settings.dataset == "digits"  # defaults
    assert settings.partition_spec is not None and settings.client_index == 1
    assert settings.mqtt_username == "dev-file"


def test_config_file_from_env_and_yaml(tmp_path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("device_id: dev-7\ndataset: csv\ndata_dir: /data/table.csv\nlabel_column: y\n"
                      "insecure_unsigned_coordinator: true\n")
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
        load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_HEARTBEAT_S": "soon"})


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://broker.local") == parse_broker_url("mqtt://broker.local:1883")
    secure = parse_broker_url("mqtts://broker.example.com")
    assert secure.tls and secure.port == 8883
    for bad in ("broker:1883", "http://x:1", "mqtt://:1883", "mqtt://u:p@h:1", "mqtt://h:1/path", "mqtt://h:x"):
        with pytest.raises(AgentConfigError, match="--broker-url"):
            parse_broker_url(bad)
    with pytest.raises(AgentConfigError, match="--ca-file"):
        AgentSettings(**KEYED, device_id="d", ca_file="/etc/ssl/ca.pem")


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
            settings = AgentSettings(**KEYED, device_id="d", partition=f"{index}/8", partition_kind=kind, seed=5,
                                     **extra)
            local = load_local_data(settings)
            expected = sim.client_data(index)
            assert np.array_equal(local.x, expected.x.numpy()) and np.array_equal(local.y, expected.y.numpy())


def test_impossible_partition_and_missing_data_are_clear() -> None:
    with pytest.raises(LocalDataError, match="--partition 3/400 .*cannot be satisfied"):
        load_local_data(AgentSettings(**KEYED, device_id="d", partition="3/400", samples_per_class=50))
    with pytest.raises(LocalDataError, match="cannot load --dataset npz"):
        load_local_data(AgentSettings(**KEYED, device_id="d", dataset="npz", data_dir="/nonexistent/data.npz"))


def test_kernels_setting_defaults_to_auto_and_refuses_unknown_values() -> None:
    assert load_settings({**KEYED, "device_id": "d"}, environ={}).kernels == "auto"
    assert load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_KERNELS": "dense"}).kernels == "dense"
    with pytest.raises(AgentConfigError, match="--kernels: choose one of auto, sparse, dense"):
        load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_KERNELS": "fast"})


# --- --kernel-thresholds: this device's auto-policy table ------------------------------------------

DEVICE_TABLE = {"linear": (SparseThreshold(0.3, 100_000),), "conv": (SparseThreshold(0.2, 1000),)}


def _write_table(path, table=DEVICE_TABLE, **extra) -> str:  # type: ignore[no-untyped-def]
    path.write_text(json.dumps(thresholds_to_dict(table) | extra))
    return str(path)


def test_kernel_thresholds_from_flag_env_or_config_file(tmp_path) -> None:
    path = _write_table(tmp_path / "kernel_thresholds.json", measured_on={"machine": "aarch64"})
    assert load_settings({**KEYED, "device_id": "d"}, environ={}).kernel_threshold_table is None  # default: built in
    from_flag = load_settings({**KEYED, "device_id": "d", "kernel_thresholds": path}, environ={})
    assert from_flag.kernel_thresholds == path and from_flag.kernel_threshold_table == DEVICE_TABLE
    assert from_flag.kernel_thresholds_file is not None
    assert from_flag.kernel_thresholds_file.measured_on == {"machine": "aarch64"}
    from_env = load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_KERNEL_THRESHOLDS": path})
    assert from_env.kernel_threshold_table == DEVICE_TABLE
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndevice_id = "d"\nkernel-thresholds = "{path}"\n')
    assert load_settings(KEYED, environ={}, config_file=config).kernel_threshold_table == DEVICE_TABLE
    # Read once, when the settings are made: a later change to the file does not change a running agent.
    _write_table(tmp_path / "kernel_thresholds.json", {"linear": (), "conv": ()})
    assert from_flag.kernel_threshold_table == DEVICE_TABLE
    assert "kernel_threshold_table" not in from_flag.redacted()  # the settings dict stays flat


@pytest.mark.parametrize(("content", "problem"), [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"version": 7}', "version 7 is not supported"),
    ('{"linear": {"max_density": 0.3}}', "'linear' must be a list of tiers"),
    ('{"conv": [{"max_density": 0.3, "min_weights": 0, "extra": 1}]}', "conv[0] must be an object with exactly"),
    ('{"linear": [{"max_density": 1.5, "min_weights": 0}]}', "linear[0].max_density must be a number in [0, 1]"),
    ('{"linear": [{"max_density": 0.3, "min_weights": -5}]}', "linear[0].min_weights must be an integer >= 0"),
    (b"\xff\xfe\x00bad", "cannot read"),
])
def test_bad_kernel_thresholds_files_name_the_file_and_the_problem(tmp_path, content, problem) -> None:
    path = tmp_path / "thresholds.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    for make in (lambda: load_settings({**KEYED, "device_id": "d", "kernel_thresholds": str(path)}, environ={}),
                 lambda: load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_KERNEL_THRESHOLDS": str(path)}),
                 lambda: read_kernel_thresholds(path)):
        with pytest.raises(AgentConfigError) as err:
            make()
        message = str(err.value)
        assert message.startswith("--kernel-thresholds: ") and str(path) in message and problem in message
        assert "bench/sparse_kernels.py --calibrate --write-thresholds" in message  # how to make a good one


def test_kernel_thresholds_directory_is_refused(tmp_path) -> None:
    with pytest.raises(AgentConfigError, match=f"--kernel-thresholds: {tmp_path} is not a file"):
        AgentSettings(**KEYED, device_id="d", kernel_thresholds=str(tmp_path))


def test_the_file_the_bench_writes_is_what_the_agent_reads(tmp_path) -> None:
    from bench.sparse_kernels import write_thresholds

    rows = [{"kind": kind, "weights": n, "density": d, "time_ratio": r}
            for kind, n, ratios in (("linear", 256_000, (0.5, 0.6, 0.7, 0.8, 0.95)),
                                    ("linear", 5120, (1.6,) * 5), ("conv", 5000, (0.3, 0.4, 0.5, 0.7, 1.0)))
            for d, r in zip((0.05, 0.1, 0.2, 0.3, 0.5), ratios, strict=True)]
    path = tmp_path / "etc" / "kernel_thresholds.json"
    lines: list[str] = []
    write_thresholds(rows, path, lines.append)
    assert f"--kernel-thresholds {path}" in lines[-1]
    info = read_kernel_thresholds(path)
    assert info.table == thresholds_from_calibration(
        [CalibrationPoint(r["kind"], r["weights"], r["density"], r["time_ratio"]) for r in rows])
    assert info.table == {"linear": (SparseThreshold(0.3, 256_000),), "conv": (SparseThreshold(0.3, 5000),)}
    assert info.measured_on["machine"] == platform.machine()
    assert kernel_thresholds_warnings(info, native.available(), platform.machine()) == []  # made here, for here


def test_kernel_thresholds_from_another_device_are_flagged(tmp_path) -> None:
    note = {"machine": "x86_64", "native_kernels": "loaded _feddst_kernels.so"}
    info = read_kernel_thresholds(_write_table(tmp_path / "t.json", measured_on=note))
    assert kernel_thresholds_warnings(info, True, "x86_64") == []
    [other_cpu] = kernel_thresholds_warnings(info, True, "aarch64")
    assert "measured on x86_64, this device is aarch64" in other_cpu and str(tmp_path / "t.json") in other_cpu
    [no_native] = kernel_thresholds_warnings(info, False, "x86_64")
    assert "measured with the native kernels" in no_native and "runs without them" in no_native
    torch_only = read_kernel_thresholds(_write_table(tmp_path / "u.json", measured_on={"native_kernels": "not built"}))
    [fallback] = kernel_thresholds_warnings(torch_only, True, "x86_64")
    assert "measured without the native kernels (not built)" in fallback
    two = read_kernel_thresholds(_write_table(tmp_path / "v.json", measured_on={"threads": 2}))
    assert kernel_thresholds_warnings(two, True, "x86_64", threads=2) == []
    [threads] = kernel_thresholds_warnings(two, True, "x86_64", threads=1)
    assert "measured with 2 thread(s), this agent trains with 1" in threads and "--threads 1" in threads
    assert kernel_thresholds_warnings(read_kernel_thresholds(_write_table(tmp_path / "v.json")), False, "z") == []


@pytest.mark.parametrize("kernels", ["auto", "dense"])
def test_start_up_logs_the_table_in_use(tmp_path, caplog, kernels) -> None:
    path = _write_table(tmp_path / "kernel_thresholds.json", measured_on={"machine": platform.machine(),
                                                                         "date": "2026-01-02"})
    settings = AgentSettings(**KEYED, device_id="d", broker_url="mqtt://127.0.0.1:1", kernels=kernels,
                             kernel_thresholds=path)
    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.INFO, logger="feddst.agent"):
        EdgeAgent(settings, load_local_data(settings)).run(stop)
    if kernels == "auto":
        assert (f"kernel thresholds: {path} (measured on {platform.machine()}, 2026-01-02): linear: sparse at "
                "density <= 0.3 if >= 100000 weights; conv: sparse at density <= 0.2 if >= 1000 weights"
                in caplog.text)
    else:
        assert f"--kernel-thresholds {path} is unused: it only applies to --kernels auto, not dense" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="feddst.agent"):
        builtin = AgentSettings(**KEYED, device_id="d", broker_url="mqtt://127.0.0.1:1")
        EdgeAgent(builtin, load_local_data(builtin)).run(stop)
    assert "kernel thresholds: built in (" in caplog.text


def test_the_table_reaches_the_trainer(tmp_path, monkeypatch) -> None:
    import edge_agent.local_training as local_training

    seen: list[object] = []
    real = local_training.make_local_trainer

    def spy(spec, config, kernels="dense", thresholds=None):  # type: ignore[no-untyped-def]
        seen.append((kernels, thresholds))
        return real(spec, config, kernels, thresholds)

    monkeypatch.setattr(local_training, "make_local_trainer", spy)
    path = _write_table(tmp_path / "kernel_thresholds.json")
    settings = AgentSettings(**KEYED, device_id="dev-003", broker_url="mqtt://127.0.0.1:1", partition="3/8",
                             kernel_thresholds=path)
    agent = EdgeAgent(settings, load_local_data(settings))
    params, masks = global_model()
    task = make_task()
    agent._train(task, model_broadcast(task.run_id, task.model_round, params, masks))
    done = agent.events.get_nowait()
    assert done.error is None and done.update is not None and done.update.sample_count == 40
    assert seen == [("auto", DEVICE_TABLE)]


def test_a_fresh_agent_requires_the_coordinator_public_key_or_explicit_insecure_mode(tmp_path) -> None:
    with pytest.raises(AgentConfigError, match="--coordinator-public-key: no coordinator public key.*feddst cloud "
                       "keys public.*--insecure-unsigned-coordinator"):
        load_settings({"device_id": "d"}, environ={})
    insecure = load_settings({"device_id": "d"}, environ={"FEDDST_INSECURE_UNSIGNED_COORDINATOR": "true"})
    assert insecure.insecure_unsigned_coordinator and insecure.coordinator_public_key_bytes is None
    from_env = load_settings({"device_id": "d"}, environ={"FEDDST_COORDINATOR_PUBLIC_KEY": COORDINATOR_PUBLIC_KEY})
    assert from_env.coordinator_public_key_bytes == bytes.fromhex(COORDINATOR_PUBLIC_KEY)
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "d"\ncoordinator_public_key = "{COORDINATOR_PUBLIC_KEY}"\n')
    assert load_settings({}, environ={}, config_file=config).coordinator_public_key == COORDINATOR_PUBLIC_KEY


@pytest.mark.parametrize(("value", "problem"), [("abc", "got 3 characters"), ("g" * 64, "non-hex"),
                                                 (COORDINATOR_PUBLIC_KEY + "00", "got 66 characters")])
def test_bad_coordinator_public_keys_are_refused_clearly(value, problem) -> None:
    with pytest.raises(AgentConfigError, match=f"--coordinator-public-key: expected 64 hex characters.*{problem}"):
        load_settings({"device_id": "d", "coordinator_public_key": value}, environ={})


def test_the_shared_coordinator_key_file_is_refused_with_the_replacement(tmp_path) -> None:
    key = tmp_path / "coordinator.hex"
    key.write_text("00" * 32)
    for make in (lambda: load_settings({**KEYED, "device_id": "d", "coordinator_key_file": str(key)}, environ={}),
                 lambda: load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_COORDINATOR_KEY_FILE": str(key)})):
        with pytest.raises(AgentConfigError, match="--coordinator-key-file: is no longer supported.*shared by every "
                           "device.*--coordinator-public-key"):
            make()


def test_old_broker_setting_names_still_work_with_a_deprecation_warning(tmp_path) -> None:
    from protocol.endpoint import DeprecatedSettingWarning

    config = tmp_path / "agent.toml"
    config.write_text('device_id = "d"\nbroker = "mqtt://old-file:1"\n')
    with pytest.warns(DeprecatedSettingWarning, match="setting broker is deprecated, use broker_url"):
        assert load_settings(dict(KEYED), environ={}, config_file=config).broker_url == "mqtt://old-file:1"
    with pytest.warns(DeprecatedSettingWarning, match="FEDDST_BROKER is deprecated, use FEDDST_BROKER_URL"):
        assert load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_BROKER": "mqtt://old-env:2"}).broker_url == \
            "mqtt://old-env:2"
    with pytest.warns(DeprecatedSettingWarning, match="broker is deprecated"):
        assert load_settings({**KEYED, "device_id": "d", "broker": "mqtt://old-flag:3"}, environ={}).broker_url == \
            "mqtt://old-flag:3"
    both = {"FEDDST_BROKER": "mqtt://old:1", "FEDDST_BROKER_URL": "mqtt://new:2"}
    with pytest.warns(DeprecatedSettingWarning):
        # the new name wins
        assert load_settings({**KEYED, "device_id": "d"}, environ=both).broker_url == "mqtt://new:2"
    with pytest.warns(DeprecatedSettingWarning), pytest.raises(AgentConfigError, match="--broker-url: unsupported"):
        load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_BROKER": "http://h:1"})


def test_new_broker_setting_names_give_no_warning(tmp_path) -> None:
    import warnings

    config = tmp_path / "agent.toml"
    config.write_text('device_id = "d"\nbroker_url = "mqtt://new-file:1"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_settings(dict(KEYED), environ={}, config_file=config).broker_url == "mqtt://new-file:1"
        env = {"FEDDST_BROKER_URL": "mqtt://e:2", "FEDDST_DEVICE_ID": "d"}
        assert load_settings(dict(KEYED), environ=env).broker_url == "mqtt://e:2"
