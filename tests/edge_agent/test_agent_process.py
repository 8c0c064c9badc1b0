"""``feddst agent run`` as a real process: last will on SIGKILL, clean offline on SIGTERM, a
password-protected broker with per-device ACLs, and clear errors for bad input."""

from __future__ import annotations

import os
import signal
import subprocess

import paho.mqtt.client as mqtt
import pytest
from agent_harness import (
    COORDINATOR_PUBLIC_KEY,
    DEVICE_KEY,
    FakeCoordinator,
    agent_command,
    agent_settings,
    global_model,
    make_task,
    send_round,
    start_agent_process,
    wait_until,
)
from brokers import MosquittoBroker
from typer.testing import CliRunner

from edge_agent.agent import EXIT_REFUSED
from feddst_cli.main import app
from protocol import Register, Status, Update, encode_message, topics


def stop_process(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out


def test_sigkill_leaves_a_retained_offline_will_and_sigterm_goes_offline_cleanly(mosquitto, coordinator,
                                                                                   key_file) -> None:
    proc = start_agent_process("--broker", mosquitto.url, "--device-id", "dev-003", "--partition", "3/8",
                               "--key-file", str(key_file), "--heartbeat-s", "0.5")
    try:
        coordinator.expect(Register, timeout=60)
        proc.send_signal(signal.SIGKILL)
        will = coordinator.expect(Status, lambda r: r.message.state == "offline", timeout=15)
        assert will.topic == topics.status("dev-003") and will.decoded.envelope.authenticated
    finally:
        stop_process(proc)
    late = FakeCoordinator(mosquitto.port, device_keys={"dev-003": DEVICE_KEY})  # sees the retained status
    try:
        assert late.expect(Status, timeout=5).message.state == "offline"
    finally:
        late.close()

    proc = start_agent_process("--broker", mosquitto.url, "--device-id", "dev-003", "--partition", "3/8",
                               "--key-file", str(key_file), "--heartbeat-s", "0.5")
    try:
        coordinator.expect(Register, timeout=60)
        coordinator.expect(Status, lambda r: r.message.state == "online")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        last = coordinator.expect(Status, lambda r: r.message.state == "offline", timeout=10)
        assert last.message.detail == "stopped"  # its own goodbye, not the will
    finally:
        output = stop_process(proc)
    assert "going offline" in output


def test_password_protected_broker_with_device_acls(tmp_path, start_agent) -> None:
    users = {"dev-003": "pw-003", "dev-005": "pw-005", "coordinator": "pw-c"}
    acl = [*topics.device_acl("dev-003"), "", *topics.device_acl("dev-005"), "", *topics.coordinator_acl()]
    # As root, mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dir.
    stay = ["user root"] if os.geteuid() == 0 else []
    broker = MosquittoBroker(tmp_path / "auth", passwords=users, acl_lines=acl, extra_config=stay).start()
    try:
        coordinator = FakeCoordinator(broker.port, password="pw-c", device_keys={"dev-003": DEVICE_KEY,
                                                                                 "dev-005": DEVICE_KEY})
        try:
            start_agent(agent_settings(broker.url, password="pw-003"))
            assert coordinator.expect(Register).message.device_id == "dev-003"

            # dev-005 (valid credentials) cannot speak for dev-003: the broker drops the publish.
            intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-005", protocol=mqtt.MQTTv5)
            intruder.username_pw_set("dev-005", "pw-005")
            intruder.connect("127.0.0.1", broker.port)
            intruder.loop_start()
            try:
                forged = encode_message(Status("dev-003", "offline", "forged"), DEVICE_KEY)
                intruder.publish(topics.status("dev-003"), forged, qos=1).wait_for_publish(5)
                own = encode_message(Status("dev-005", "online", "own"), DEVICE_KEY)
                intruder.publish(topics.status("dev-005"), own, qos=1).wait_for_publish(5)
                # QoS 1 from one client arrives in order: a forged status that got through came before "own"
                seen = coordinator.received_until(Status, lambda r: r.message.device_id == "dev-005")
                assert seen[-1].message.detail == "own"
                forged_seen = [r for r in seen + coordinator.collect(0.5)
                               if isinstance(r.message, Status) and r.message.detail == "forged"]
                assert not forged_seen
            finally:
                intruder.disconnect()
                intruder.loop_stop()
        finally:
            coordinator.close()

        refused = start_agent(agent_settings(broker.url, device_id="dev-005", password="wrong"))
        assert refused.wait_exit(20) == EXIT_REFUSED
    finally:
        broker.stop()


@pytest.mark.parametrize(("args", "message"), [
    (["--device-id", "dev-1", "--partition", "9/8"], "client index 9 is out of range"),
    (["--device-id", "dev-1", "--partition", "three"], "is not I/N"),
    (["--device-id", "dev-1", "--broker", "http://host:1883"], "expected mqtt://HOST:PORT"),
    (["--device-id", "dev-1", "--broker", "mqtt://host:99999"], "--broker"),
    (["--device-id", "bad/id"], "not a valid device id"),
    (["--broker", "mqtt://127.0.0.1:1883"], "--device-id is required"),
    (["--device-id", "dev-1", "--dataset", "csv"], "needs --data-dir"),
    (["--device-id", "dev-1", "--key-file", "/nonexistent/key.hex"], "cannot read"),
    (["--device-id", "dev-1", "--threads", "0"], "--threads"),
    (["--device-id", "dev-1", "--config", "/nonexistent.toml"], "does not exist"),
])
def test_bad_settings_give_clear_errors(args, message) -> None:
    result = CliRunner().invoke(app, ["agent", "run", *args, "--coordinator-public-key", COORDINATOR_PUBLIC_KEY])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_data_is_a_clear_error_from_the_command(tmp_path) -> None:
    result = subprocess.run(agent_command("--device-id", "dev-1", "--dataset", "mnist", "--data-dir",
                                          str(tmp_path / "nowhere")), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot load --dataset mnist" in result.stderr and "nowhere" in result.stderr


def test_help_explains_the_settings() -> None:
    result = CliRunner().invoke(app, ["agent", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--broker", "--device-id", "--password", "--key-file", "--dataset", "--data-dir",
                 "--label-column", "--partition", "--partition-kind", "--threads", "--heartbeat-s",
                 "--max-packet", "FEDDST_"):
        assert flag in result.output


def test_a_publish_refused_by_the_acl_is_reported(tmp_path, start_agent) -> None:
    """An ACL that forgot the device's update topic: the agent logs and counts the broker's refusal."""
    acl = [line for line in topics.device_acl("dev-003") if "/update/" not in line]
    stay = ["user root"] if os.geteuid() == 0 else []
    broker = MosquittoBroker(tmp_path / "acl", passwords={"dev-003": "pw", "coordinator": "pw-c"},
                             acl_lines=[*acl, "", *topics.coordinator_acl()], extra_config=stay).start()
    try:
        coordinator = FakeCoordinator(broker.port, password="pw-c", device_keys={"dev-003": DEVICE_KEY})
        try:
            agent = start_agent(agent_settings(broker.url, password="pw", ack_timeout_s=0.3))
            coordinator.expect(Register)
            params, masks = global_model()
            send_round(coordinator, make_task(1), params, masks)
            assert wait_until(lambda: agent.agent.stats["publishes_refused"] >= 1, timeout=15)
            assert not [r for r in coordinator.collect(0.3) if isinstance(r.message, Update)]
        finally:
            coordinator.close()
    finally:
        broker.stop()


def _flat(output: str) -> str:
    """CLI output with rich's box borders and line wrapping removed."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(("content", "problem"), [
    (None, "does not exist"),
    ("{oops", "not valid JSON"),
    ('{"linear": [{"max_density": 0.3}]}', "linear[0] must be an object with exactly 'max_density' and 'min_weights'"),
])
def test_bad_kernel_thresholds_stop_the_agent_with_exit_2(tmp_path, content, problem) -> None:
    path = tmp_path / "kernel_thresholds.json"
    if content is not None:
        path.write_text(content)
    for args, env in ((["--kernel-thresholds", str(path)], {}), ([], {"FEDDST_KERNEL_THRESHOLDS": str(path)})):
        result = CliRunner().invoke(app, ["agent", "run", "--device-id", "dev-1", *args, "--coordinator-public-key",
                                          COORDINATOR_PUBLIC_KEY], env=env)
        assert result.exit_code == 2, result.output
        assert f"error: --kernel-thresholds: {path}" in result.output and problem in result.output


def test_help_explains_kernel_thresholds() -> None:
    result = CliRunner().invoke(app, ["agent", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _flat(result.output)
    for part in ("--kernel-thresholds", "FEDDST_KERNEL_THRESHOLDS", "--kernels auto",
                 "python bench/sparse_kernels.py --calibrate --write-thresholds FILE"):
        assert part in text, part


def test_the_command_refuses_to_start_without_the_coordinator_public_key() -> None:
    result = CliRunner().invoke(app, ["agent", "run", "--device-id", "dev-1"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    text = _flat(result.output)
    assert "error: --coordinator-public-key: no coordinator public key" in text
    assert "feddst cloud keys public" in text and "--insecure-unsigned-coordinator" in text
    removed = CliRunner().invoke(app, ["agent", "run", "--device-id", "dev-1", "--coordinator-key-file", "/k.hex"])
    assert removed.exit_code == 2 and "--coordinator-key-file: is no longer supported" in _flat(removed.output)
    shown = _flat(CliRunner().invoke(app, ["agent", "run", "--help"], env={"COLUMNS": "200"}).output)
    for part in ("--coordinator-public-key", "--insecure-unsigned-coordinator", "--insecure-accept-unsigned",
                 "FEDDST_COORDINATOR_PUBLIC_KEY"):
        assert part in shown, part
