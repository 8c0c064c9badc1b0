"""The API the dashboard reads: rounds since N, one device with its history, pagination, run summaries with
progress, and the new round-record fields; every bad query parameter is a 422 naming it."""

from __future__ import annotations

import pytest
from coordinator_harness import bearer, make_coordinator, wait_until
from fake_devices import FakeDevice
from fastapi.testclient import TestClient

from cloud.app import create_app

RUN = {"name": "api", "rounds": 3, "clients_per_round": 2, "local_epochs": 0, "round_timeout_s": 10,
       "eval": {"dataset": "digits", "clients": 2, "samples_per_class": 10, "eval_every": 2}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A coordinator on mosquitto that ran RUN to completion with 3 online devices (dev-2 never selected)."""
    from brokers import MosquittoBroker

    tmp = tmp_path_factory.mktemp("dashboard-api")
    broker = MosquittoBroker(tmp / "mosquitto").start()
    coordinator = make_coordinator(broker.url, tmp / "state")
    devices = [FakeDevice(f"dev-{i}", broker.port, index=i).start() for i in range(2)]
    try:
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            wait_until(lambda: len(coordinator.registry.online_ids()) == 2)
            run_id = client.post("/api/runs", json=RUN).json()["id"]
            client.post("/api/runs", json={**RUN, "name": "second"})
            client.post(f"/api/runs/{run_id}/start")
            wait_until(lambda: client.get(f"/api/runs/{run_id}").json()["status"] == "completed", 60)
            devices.append(FakeDevice("dev-2", broker.port, index=2).start())
            wait_until(lambda: len(coordinator.registry.online_ids()) == 3)
            yield client, coordinator, run_id
    finally:
        for device in devices:
            device.stop()
        coordinator.close()
        broker.stop()


def test_rounds_since_is_a_cursor_over_the_stored_rounds(finished):
    client, coordinator, run_id = finished
    everything = client.get(f"/api/runs/{run_id}/rounds").json()
    assert [r["round"] for r in everything] == [1, 2, 3]
    assert everything == client.get(f"/api/runs/{run_id}").json()["rounds"]
    assert [r["round"] for r in client.get(f"/api/runs/{run_id}/rounds", params={"since": 1}).json()] == [2, 3]
    assert [r["round"] for r in client.get(f"/api/runs/{run_id}/rounds", params={"since": 1, "limit": 1}).json()] \
        == [2]
    assert client.get(f"/api/runs/{run_id}/rounds", params={"since": 3}).json() == []


def test_round_records_say_who_contributed_and_the_density_per_layer(finished):
    client, coordinator, run_id = finished
    params, masks = coordinator.store.load_model(run_id)
    for r in client.get(f"/api/runs/{run_id}/rounds").json():
        assert r["late"] == [] and sorted(r["upload_by_device"]) == r["accepted"] == ["dev-0", "dev-1"]
        assert all(n > 0 for n in r["upload_by_device"].values())
        assert r["started_at"] <= r["closed_at"]
    last = client.get(f"/api/runs/{run_id}/rounds", params={"since": 2}).json()[0]
    expected = {name: m.float().mean().item() for name, m in masks.items()}  # from the saved global model
    assert last["layer_density"] == pytest.approx(expected)
    kept = sum(m.sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert last["density"] == pytest.approx(kept)


def test_run_summaries_carry_progress_and_paginate(finished):
    client, coordinator, run_id = finished
    listing = client.get("/api/runs")
    assert listing.headers["x-total-count"] == "2"
    first, second = listing.json()
    rounds = client.get(f"/api/runs/{run_id}/rounds").json()
    assert first["id"] == run_id and first["algorithm"] == "feddst" and first["rounds_total"] == 3
    assert first["rounds_done"] == 3 and first["upload_bytes"] == rounds[-1]["upload_bytes"] > 0
    assert first["download_bytes"] == rounds[-1]["download_bytes"] > 0
    assert first["latest_accuracy"] == rounds[-1]["accuracy"] is not None  # evaluated at round 3 (the last)
    assert second["name"] == "second" and second["upload_bytes"] == 0 and second["latest_accuracy"] is None
    page = client.get("/api/runs", params={"limit": 1, "offset": 1})
    assert [r["id"] for r in page.json()] == [second["id"]] and page.headers["x-total-count"] == "2"
    assert client.get("/api/runs", params={"offset": 5}).json() == []


def test_devices_paginate_and_one_device_has_its_history(finished):
    client, coordinator, run_id = finished
    everyone = client.get("/api/devices")
    assert [d["id"] for d in everyone.json()] == ["dev-0", "dev-1", "dev-2"] and everyone.headers[
        "x-total-count"] == "3"
    assert [d["id"] for d in client.get("/api/devices", params={"limit": 2, "offset": 1}).json()] == ["dev-1", "dev-2"]
    device = client.get("/api/devices/dev-1").json()
    assert device["status"] == "online" and device["rounds_done"] == 3 and device["last_error"] is None
    assert [(h["run_id"], h["round"], h["accepted"]) for h in device["history"]] == [
        (run_id, 3, True), (run_id, 2, True), (run_id, 1, True)]
    stored = coordinator.store.rounds(run_id)
    assert [h["upload_bytes"] for h in device["history"]] == [r["upload_by_device"]["dev-1"] for r in stored[::-1]]
    assert client.get("/api/devices/dev-1", params={"history": 1}).json()["history"][0]["round"] == 3
    assert client.get("/api/devices/dev-2").json()["history"] == []  # online, never selected


@pytest.mark.parametrize("path, params, name", [
    ("/api/runs", {"limit": 0}, "limit"), ("/api/runs", {"limit": "ten"}, "limit"),
    ("/api/runs", {"offset": -1}, "offset"), ("/api/devices", {"limit": 10_001}, "limit"),
    ("/api/runs/{run}/rounds", {"since": -1}, "since"), ("/api/runs/{run}/rounds", {"limit": 0}, "limit"),
    ("/api/devices/dev-0", {"history": -1}, "history"), ("/api/runs", {"limt": 5}, "limt"),
    ("/api/devices", {"page": 2}, "page"),
])
def test_bad_query_parameters_are_422_naming_the_parameter(finished, path, params, name):
    client, coordinator, run_id = finished
    response = client.get(path.format(run=run_id), params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", name]


def test_unknown_ids_are_404_and_a_token_is_needed(finished):
    client, coordinator, run_id = finished
    assert client.get("/api/devices/dev-9").json() == {"detail": "no device 'dev-9'"}
    assert client.get("/api/runs/run-nope/rounds").status_code == 404
    for path in ("/api/devices/dev-0", f"/api/runs/{run_id}/rounds", "/api/devices"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 401
