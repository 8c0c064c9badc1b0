"""The REST API (FastAPI TestClient) around a coordinator on a real mosquitto, driven by fake devices."""

from __future__ import annotations

import pytest
from coordinator_harness import bearer, make_coordinator, wait_until
from fake_devices import FakeDevice
from fastapi.testclient import TestClient
from safetensors.torch import load

from cloud.app import create_app

RUN = {"model": "digits_cnn", "rounds": 2, "clients_per_round": 2, "local_epochs": 0, "round_timeout_s": 10,
       "eval": {"dataset": "digits", "clients": 2, "samples_per_class": 10}}


@pytest.fixture
def api(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    devices = [FakeDevice(f"dev-{i:03d}", mosquitto.port, index=i).start() for i in range(2)]
    try:
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            yield client, coordinator
    finally:
        for d in devices:
            d.stop()
        coordinator.close()


@pytest.mark.parametrize("body, field", [
    ({"sparsity": 1.5}, "sparsity"), ({"algorithm": "sgd"}, "algorithm"), ({"model": "resnet"}, "model"),
    ({"quorum": 5, "clients_per_round": 2}, "quorum"), ({"bogus": 1}, "bogus"), ({"rounds": 0}, "rounds"),
    ({"clients_per_round": 20_001}, "clients_per_round"),  # more per-device Tasks than packet ids can cover
])
def test_bad_run_configs_are_422_with_the_field_named(api, body, field):
    client, _ = api
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422
    assert field in response.text


def test_run_lifecycle_over_rest(api, tmp_path):
    client, coordinator = api
    assert client.get("/healthz").json()["broker_connected"] is True
    assert "/api/runs/{run_id}/model" in client.get("/openapi.json").json()["paths"]
    created = client.post("/api/runs", json=RUN)
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert client.get(f"/api/runs/{run_id}/model").status_code == 404
    wait_until(lambda: sum(d["status"] == "online" for d in client.get("/api/devices").json()) == 2)
    assert client.post(f"/api/runs/{run_id}/start").json()["status"] == "running"
    assert client.post(f"/api/runs/{run_id}/start").status_code == 409
    wait_until(lambda: client.get(f"/api/runs/{run_id}").json()["status"] == "completed", 30)
    detail = client.get(f"/api/runs/{run_id}").json()
    assert [r["round"] for r in detail["rounds"]] == [1, 2]
    assert {"round", "accuracy", "global_accuracy", "upload_bytes", "download_bytes", "density"} <= set(
        detail["rounds"][0])
    assert detail["final_accuracy"] is not None and detail["total_upload_bytes"] > 0
    tensors = load(client.get(f"/api/runs/{run_id}/model").content)
    assert "fc1.weight" in tensors and tensors["fc1.weight.mask"].dtype.is_floating_point is False
    _check_model_onnx(client, run_id, detail)
    devices = client.get("/api/devices").json()
    assert {d["id"] for d in devices} == {"dev-000", "dev-001"}
    assert all(d["rounds_done"] == 2 and d["bytes_up"] > 0 and d["bytes_down"] > 0 for d in devices)
    assert client.post(f"/api/runs/{run_id}/stop").status_code == 409
    assert client.get("/api/runs/nope").status_code == 404
    other = client.post("/api/runs", json=RUN).json()["id"]
    assert client.post(f"/api/runs/{other}/stop").json()["status"] == "stopped"


def test_restarted_coordinator_lists_past_runs(mosquitto, tmp_path):
    first = make_coordinator(mosquitto.url, tmp_path / "state")
    from cloud.run_config import RunConfig

    run = first.create_run(RunConfig(**RUN))
    first.close()
    second = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        with TestClient(create_app(coordinator=second), headers=bearer(second, "viewer")) as client:
            assert [r["id"] for r in client.get("/api/runs").json()] == [run.id]
    finally:
        second.close()


def _check_model_onnx(client, run_id: str, detail: dict) -> None:
    """GET /api/runs/{id}/model.onnx: the latest or a given round's model, with its card; 404s name the problem."""
    from inference import Predictor

    response = client.get(f"/api/runs/{run_id}/model.onnx")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    card = Predictor(response.content).card
    assert (card.model, card.run_id, card.server_round, card.dataset) == ("digits_cnn", run_id, 2, "digits")
    assert card.accuracy == detail["rounds"][-1]["accuracy"]
    assert Predictor(client.get(f"/api/runs/{run_id}/model.onnx?round=1").content).card.server_round == 1
    missing = client.get(f"/api/runs/{run_id}/model.onnx?round=7")
    assert missing.status_code == 404 and "no global model of round 7" in missing.json()["detail"]
    assert client.get("/api/runs/nope/model.onnx").status_code == 404
    assert client.get(f"/api/runs/{run_id}/model.onnx?round=-1").status_code == 422


def test_resume_endpoint_only_for_an_interrupted_run(api):
    client, coordinator = api
    run_id = client.post("/api/runs", json=RUN).json()["id"]
    refused = client.post(f"/api/runs/{run_id}/resume")
    assert refused.status_code == 409 and "only an interrupted run can be resumed" in refused.json()["detail"]
    assert client.post("/api/runs/run-nope/resume").status_code == 404
    coordinator.store.set_run_status(run_id, "interrupted", "coordinator restarted during the run")  # as after a crash
    resumed = client.post(f"/api/runs/{run_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    wait_until(lambda: client.get(f"/api/runs/{run_id}").json()["status"] == "completed", 60, "the resumed run")
    assert [r["round"] for r in client.get(f"/api/runs/{run_id}").json()["rounds"]] == [1, 2]
    assert client.post(f"/api/runs/{run_id}/resume").status_code == 409
