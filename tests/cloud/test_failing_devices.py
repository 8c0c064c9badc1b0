"""Runs whose selected devices all report errors, on a real mosquitto with protocol-level fake devices
that answer every task with a ``DeviceError``: the round is retried at once with spare devices, and
the run fails, saying why (each device's code and text), as soon as no spare or no retry is left.
Round deadlines are far beyond every wait, so a coordinator that waited one out fails the test."""

from __future__ import annotations

import pytest
from coordinator_harness import make_coordinator, wait_until
from fake_devices import FakeDevice

from cloud.run_config import EvalConfig, RunConfig

DEADLINE_S = 900.0
FAILURES = {"dev-a": ("bad_data", "labels go up to 19"), "dev-b": ("out_of_memory", "RuntimeError: out of memory"),
            "dev-c": ("model_unavailable", "unknown model")}


@pytest.fixture
def failing(mosquitto, tmp_path):
    """``start(*ids)``: fake devices that fail every task as FAILURES says, online on a coordinator."""
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    devices: list[FakeDevice] = []

    def start(*device_ids: str) -> None:
        for i, device_id in enumerate(device_ids):
            devices.append(FakeDevice(device_id, mosquitto.port, index=i, fails_with=FAILURES[device_id]).start())
        wait_until(lambda: len(coordinator.registry.online_ids()) == len(device_ids), what="devices online")

    try:
        yield coordinator, start
    finally:
        for device in devices:
            device.stop()
        coordinator.close()


def run_to_end(coordinator, **config) -> tuple[str, str | None, dict]:
    evaluation = EvalConfig(clients=3, samples_per_class=10)
    run = coordinator.create_run(RunConfig(model="digits_cnn", rounds=2, clients_per_round=1, local_epochs=0,
                                           round_timeout_s=DEADLINE_S, eval=evaluation, **config))
    coordinator.start_run(run.id)
    final = coordinator.wait_for_run(run.id, 60)
    assert final.status != "running", "the run waited (for a deadline?)"
    return final.status, final.error, coordinator.store.get_run(run.id).counters


def test_every_device_failing_fails_the_run_once_no_spare_is_left(failing):
    coordinator, start = failing
    start("dev-a", "dev-b")
    status, error, counters = run_to_end(coordinator, max_round_retries=5)
    assert status == "failed"
    assert error == ("round 1: every selected device reported an error, no other eligible device to retry with: "
                     "dev-a bad_data: labels go up to 19; dev-b out_of_memory: RuntimeError: out of memory")
    assert counters["round_retries"] == 1 and counters["device_errors"] == 2  # retried once, with the spare


def test_every_device_failing_fails_the_run_when_its_retries_are_used_up(failing):
    coordinator, start = failing
    start("dev-a", "dev-b", "dev-c")
    status, error, counters = run_to_end(coordinator, max_round_retries=1)
    assert status == "failed"
    assert error is not None and error.startswith("round 1: every selected device reported an error, "
                                                  "after 1 retry (max_round_retries): ")
    named = [d for d in FAILURES if f"{d} {FAILURES[d][0]}: {FAILURES[d][1]}" in error]
    assert len(named) == 2  # the first device and the one spare it was retried with; the third was left
    assert counters["round_retries"] == 1 and counters["device_errors"] == 2
