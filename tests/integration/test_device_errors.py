"""Device error reports end to end: real agent processes on a real mosquitto, one given data that
does not fit the run's model (28x28 images for digits_cnn's 8x8 inputs). The agent reports
``bad_data``; the coordinator records it per device and per round, counts it in /metrics, closes a
round without waiting for its deadline, and fails a run whose every selected device failed with
an error saying why. Round deadlines are set far beyond the test's waits, so a coordinator that
waited them out would fail the test (no wall-clock assertion)."""

from __future__ import annotations

import signal

from broken_data import mismatched_inputs_npz
from coordinator_harness import bearer, make_coordinator, wait_until
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cloud.app import create_app

DEADLINE_S = 900.0  # far beyond any wait below
RUN = {"model": "digits_cnn", "rounds": 1, "local_epochs": 1, "batch_size": 8, "round_timeout_s": DEADLINE_S,
       "max_round_retries": 2, "eval": {"dataset": "digits", "clients": 2, "samples_per_class": 10}}


def device_errors_total(client) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == "feddst_device_errors_total":
                out[s.labels["code"]] = s.value
    return out


def test_device_errors_are_recorded_counted_and_fail_a_run_fast(mosquitto, agents, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    broken = mismatched_inputs_npz(tmp_path / "broken.npz")
    try:
        good = agents(mosquitto.url, "dev-000", "0/2", "--samples-per-class", "10")
        agents(mosquitto.url, "dev-001", "1/2", *broken)
        wait_until(lambda: len(coordinator.registry.online_ids()) == 2, 90, "agents online")
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            # one good, one broken device, quorum 1: the round closes as soon as both replied
            run = client.post("/api/runs", json={**RUN, "clients_per_round": 2, "quorum": 1}).json()
            client.post(f"/api/runs/{run['id']}/start")
            final = coordinator.wait_for_run(run["id"], 180)
            assert final.status == "completed", final.error
            (record,) = client.get(f"/api/runs/{run['id']}").json()["rounds"]
            assert record["accepted"] == ["dev-000"]
            assert set(record["errors"]) == {"dev-001"} and record["errors"]["dev-001"]["code"] == "bad_data"
            assert "takes inputs" in record["errors"]["dev-001"]["detail"]
            devices = {d["id"]: d for d in client.get("/api/devices").json()}
            assert devices["dev-000"]["last_error"] is None
            last = devices["dev-001"]
            assert (last["last_error_code"], last["last_error_run_id"], last["last_error_round"]) == (
                "bad_data", run["id"], 1) and last["last_error_at"] > 0
            assert "takes inputs" in last["last_error"]
            assert device_errors_total(client) == {"bad_data": 1.0}

            # the good device leaves; only the broken one is left: the run fails at once, saying why
            good.send_signal(signal.SIGTERM)
            good.wait(30)
            wait_until(lambda: coordinator.registry.online_ids() == ["dev-001"], 30, "dev-000 offline")
            only_broken = client.post("/api/runs", json={**RUN, "clients_per_round": 1}).json()
            client.post(f"/api/runs/{only_broken['id']}/start")
            final = coordinator.wait_for_run(only_broken["id"], 180)
            assert final.status == "failed"
            assert "round 1: every selected device reported an error" in final.error
            assert "dev-001 bad_data: model digits_cnn takes inputs" in final.error
            assert device_errors_total(client) == {"bad_data": 2.0}
            assert client.get(f"/api/runs/{only_broken['id']}").json()["counters"]["device_errors"] == 1
    finally:
        coordinator.close()
