"""What an operator meets, against a coordinator on a real mosquitto with fake devices: /metrics
(parsed with prometheus_client's own parser, values checked against the run's records and the
devices' own byte counts), the run's phase, min_devices below clients_per_round, DELETE of a run,
/docs and /redoc without any external URL, the per-round log line."""

from __future__ import annotations

import logging
import re
from html.parser import HTMLParser

import pytest
from coordinator_harness import bearer, make_coordinator, wait_until
from fake_devices import FakeDevice
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cloud.app import create_app

RUN = {"model": "digits_cnn", "local_epochs": 0, "batch_size": 8, "round_timeout_s": 20, "device_wait_s": 30,
       "eval": {"dataset": "digits", "clients": 3, "samples_per_class": 10, "eval_every": 1}}


@pytest.fixture
def world(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    started: list[FakeDevice] = []

    def device(device_id: str, **kwargs) -> FakeDevice:
        started.append(FakeDevice(device_id, mosquitto.port, index=len(started), **kwargs).start())
        return started[-1]

    try:
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            yield client, coordinator, device
    finally:
        for d in started:
            d.stop()
        coordinator.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, as Prometheus would read the exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def _run_to_end(client, coordinator, body: dict) -> dict:
    run = client.post("/api/runs", json=body).json()
    assert client.post(f"/api/runs/{run['id']}/start").status_code == 200
    final = coordinator.wait_for_run(run["id"], 90)
    assert final.status == "completed", final.error
    return client.get(f"/api/runs/{run['id']}").json()


def test_metrics_match_a_real_run_and_each_round_logs_one_line(world, caplog):
    client, coordinator, device = world
    fleet = [device(f"dev-{i:03d}") for i in range(3)]
    wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
    with caplog.at_level(logging.INFO, logger="cloud.coordinator"):
        detail = _run_to_end(client, coordinator, {**RUN, "rounds": 2, "clients_per_round": 3})
    rounds = detail["rounds"]
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    parsed = samples(response.text)

    assert value(parsed, "feddst_rounds_completed_total") == 2
    assert value(parsed, "feddst_round_duration_seconds_count") == 2
    assert value(parsed, "feddst_round_duration_seconds_sum") == pytest.approx(sum(r["seconds"] for r in rounds))
    assert value(parsed, "feddst_aggregation_seconds_count") == 2
    sent_by_devices = sum(n for d in fleet for (run_id, _), n in d.sent_sizes.items() if run_id == detail["id"])
    assert value(parsed, "feddst_upload_payload_bytes_total") == rounds[-1]["upload_bytes"] == sent_by_devices
    assert value(parsed, "feddst_download_payload_bytes_total") == rounds[-1]["download_bytes"] > 0
    assert value(parsed, "feddst_updates_total", verdict="accepted") == detail["counters"]["accepted"] == 6
    # the link sees every payload, chunk headers included, so at least the protocol bytes; a broadcast
    # is published once to the run's model topic (download_bytes counts it once per selected device)
    assert value(parsed, "feddst_mqtt_payload_bytes_total", direction="received") >= sent_by_devices
    assert value(parsed, "feddst_mqtt_payload_bytes_total", direction="sent") >= rounds[-1]["download_bytes"] / 3
    assert value(parsed, "feddst_devices_online") == 3
    assert value(parsed, "feddst_broker_connected") == 1
    assert value(parsed, "feddst_active_runs") == 0
    assert value(parsed, "feddst_inbound_queue_depth") >= 0

    lines = [r.getMessage() for r in caplog.records if r.name == "cloud.coordinator" and " round " in r.getMessage()]
    assert len(lines) == 2, lines
    assert re.search(r"round 2/2: accuracy \d+\.\d\d%, up [\d.]+ MB, down [\d.]+ MB \(cumulative\), 3/3 devices, "
                     r"[\d.]+ s", lines[1]), lines[1]


def test_metrics_can_require_a_viewer_token(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state", metrics_require_token=True)
    try:
        with TestClient(create_app(coordinator=coordinator)) as client:
            refused = client.get("/metrics")
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert client.get("/metrics", headers={"Authorization": "Bearer nonsense"}).status_code == 401
            ok = client.get("/metrics", headers=bearer(coordinator, "viewer"))
            assert ok.status_code == 200 and "feddst_rounds_completed_total 0.0" in ok.text
    finally:
        coordinator.close()


def test_phase_shows_what_a_run_waits_for_and_a_running_run_cannot_be_deleted(world):
    client, coordinator, device = world
    device("dev-000")
    device("dev-001")
    device("dev-002", silent=True)
    wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
    waiting = client.post("/api/runs", json={**RUN, "rounds": 1, "clients_per_round": 4}).json()
    client.post(f"/api/runs/{waiting['id']}/start")
    wait_until(lambda: (client.get(f"/api/runs/{waiting['id']}").json()["phase"] or {}).get("name")
               == "waiting_for_devices", what="waiting phase")
    phase = client.get(f"/api/runs/{waiting['id']}").json()["phase"]
    assert (phase["round"], phase["done"], phase["total"], phase["progress"]) == (1, 3, 4, "3/4")
    listed = {r["id"]: r for r in client.get("/api/runs").json()}
    assert listed[waiting["id"]]["phase"]["progress"] == "3/4"
    conflict = client.delete(f"/api/runs/{waiting['id']}")
    assert conflict.status_code == 409 and "stop it" in conflict.json()["detail"]
    client.post(f"/api/runs/{waiting['id']}/stop")
    assert coordinator.wait_for_run(waiting["id"], 20).status == "stopped"
    assert client.get(f"/api/runs/{waiting['id']}").json()["phase"] is None

    collecting = client.post("/api/runs", json={**RUN, "rounds": 1, "clients_per_round": 3, "quorum": 2}).json()
    client.post(f"/api/runs/{collecting['id']}/start")
    wait_until(lambda: (client.get(f"/api/runs/{collecting['id']}").json()["phase"] or {}).get("progress")
               == "2/3", what="2 of 3 updates in")  # the silent device never replies
    assert client.get(f"/api/runs/{collecting['id']}").json()["phase"]["name"] == "collecting"
    client.post(f"/api/runs/{collecting['id']}/stop")


def test_min_devices_below_clients_per_round_lets_smaller_rounds_run(world):
    client, coordinator, device = world
    for i in range(3):
        device(f"dev-{i:03d}")
    wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
    detail = _run_to_end(client, coordinator, {**RUN, "rounds": 2, "clients_per_round": 5, "min_devices": 2})
    assert [len(r["selected"]) for r in detail["rounds"]] == [3, 3]  # min(5, 3 eligible)
    assert all(r["accepted"] == r["selected"] for r in detail["rounds"])


def test_delete_removes_a_finished_run_its_rounds_and_model_files(world):
    client, coordinator, device = world
    device("dev-000")
    wait_until(lambda: len(coordinator.registry.online_ids()) == 1, what="device online")
    detail = _run_to_end(client, coordinator, {**RUN, "rounds": 1, "clients_per_round": 1})
    kept = client.post("/api/runs", json={**RUN, "rounds": 1, "clients_per_round": 1}).json()
    models = coordinator.store.state_dir / "models" / detail["id"]
    assert models.is_dir() and any(models.iterdir())

    response = client.delete(f"/api/runs/{detail['id']}")
    assert response.status_code == 204 and response.content == b""
    assert client.get(f"/api/runs/{detail['id']}").status_code == 404
    assert coordinator.store.rounds(detail["id"]) == [] and not models.exists()
    assert [r["id"] for r in client.get("/api/runs").json()] == [kept["id"]]
    again = client.delete(f"/api/runs/{detail['id']}")
    assert again.status_code == 404 and detail["id"] in again.json()["detail"]
    viewer = client.delete(f"/api/runs/{kept['id']}", headers=bearer(coordinator, "viewer"))
    assert viewer.status_code == 403


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:  # noqa: ANN001
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_pages_reference_nothing_outside_the_coordinator(world, page):
    client, _, _ = world
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "external URL in " + page
    parser = _Refs()
    parser.feed(html)
    assert parser.refs, "no assets referenced"
    for ref in parser.refs:
        assert ref.startswith("/"), ref
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "/openapi.json" in html
