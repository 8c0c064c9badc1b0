"""The dashboard and /metrics against live runs of real agent processes on a real mosquitto, one agent
given data that loads but cannot train the run's model (labels up to 19 for digits_cnn's 10 classes).

* In real headless Chromium: the broken device's DeviceError appears in the run view (server-sent
  ``device_error`` event) and in the devices table (last error with its code, round, text and time,
  read back from the DOM); a run whose only selected device fails ends ``failed`` at once with the
  device's error code in its error, shown on the page.
* ``/metrics``, scraped over HTTP from the live server during the run and after it and parsed with
  ``prometheus_client.parser``, agrees with ``/api``: rounds done, bytes up (the sum of every round's
  accepted updates), bytes down, accepted updates, device errors by code, devices online.

Round deadlines are far beyond every wait, so a coordinator that waited them out fails the test."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest
from broken_data import labels_out_of_range_npz
from coordinator_harness import bearer, make_coordinator, wait_until
from headless_chromium import chromium_missing, signed_in_dashboard
from live_server import LiveServer
from prometheus_client.parser import text_string_to_metric_families

from cloud.run_config import RunConfig

DEADLINE_S = 900.0  # far beyond any wait below
RUN: dict[str, Any] = {"model": "digits_cnn", "local_epochs": 1, "batch_size": 8, "round_timeout_s": DEADLINE_S,
                       "max_round_retries": 2,
                       "eval": {"dataset": "digits", "clients": 2, "samples_per_class": 10, "eval_every": 1}}
BROKEN_DETAIL = "model digits_cnn has 10 classes but the local labels go up to 19"


@pytest.fixture
def fleet(mosquitto, agents, tmp_path):
    """A coordinator behind a real uvicorn, with the agents ``dev-good`` and ``dev-broken`` online."""
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        good = agents(mosquitto.url, "dev-good", "0/2", "--samples-per-class", "10")
        agents(mosquitto.url, "dev-broken", "0/1", *labels_out_of_range_npz(tmp_path / "labels.npz"))
        wait_until(lambda: len(coordinator.registry.online_ids()) == 2, 90, "both agents online")
        with LiveServer(coordinator) as server:
            yield server, coordinator, good
    finally:
        coordinator.close()


def iso_utc_ms(unix: float) -> str:
    """What JavaScript's ``new Date(unix * 1000).toISOString()`` gives (milliseconds, truncated)."""
    ms = int(unix * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
def test_the_page_shows_a_broken_devices_error_and_a_run_it_alone_failed(fleet, tmp_path):
    server, coordinator, good = fleet
    token = bearer(coordinator, "operator")["Authorization"].removeprefix("Bearer ")
    with signed_in_dashboard(server.url, token, tmp_path / "profile") as session:
        page = session.page
        both = coordinator.create_run(RunConfig(**RUN, name="both", rounds=1, clients_per_round=2, quorum=1))
        page.goto(f"{server.url}/#/runs/{both.id}")
        page.locator("#run-view button.start").click()
        page.locator("#run-view .badge-completed").wait_for(timeout=120_000)
        reported = page.locator("#run-view .device-errors li")
        assert reported.count() == 1
        assert "device dev-broken round 1: bad_data " + BROKEN_DETAIL in reported.inner_text()

        page.get_by_role("link", name="Devices").click()
        page.wait_for_selector("#devices-table tr[data-device='dev-broken']")
        (device,) = [d for d in httpx.get(f"{server.url}/api/devices", headers={"Authorization": f"Bearer {token}"})
                     .json() if d["id"] == "dev-broken"]
        cell = page.locator("#devices-table tr[data-device='dev-broken'] td").last
        assert cell.inner_text().startswith(f"bad_data, round 1: {BROKEN_DETAIL} (")
        assert cell.locator("time").get_attribute("datetime") == iso_utc_ms(device["last_error_at"])
        assert cell.locator("time").inner_text().endswith(" s ago")
        assert page.locator("#devices-table tr[data-device='dev-good'] td").last.inner_text() == "–"
        page.screenshot(path=str(tmp_path / "devices-with-error.png"))

        good.send_signal(signal.SIGTERM)  # only the broken device is left: its failure is the whole round
        good.wait(30)
        wait_until(lambda: coordinator.registry.online_ids() == ["dev-broken"], 30, "dev-good offline")
        alone = coordinator.create_run(RunConfig(**RUN, name="alone", rounds=1, clients_per_round=1))
        page.goto(f"{server.url}/#/runs/{alone.id}")
        page.locator("#run-view button.start").click()
        page.locator("#run-view .badge-failed").wait_for(timeout=120_000)
        shown = page.locator("#run-view .run-head .error").inner_text()
        assert shown == coordinator.store.get_run(alone.id).error
        assert "round 1: every selected device reported an error" in shown
        assert f"dev-broken bad_data: {BROKEN_DETAIL}" in shown
        assert "device dev-broken round 1: bad_data" in page.locator("#run-view .device-errors").inner_text()
        page.screenshot(path=str(tmp_path / "run-failed.png"))
    assert session.outside == [] and session.problems == []


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as Prometheus reads it: (sample name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def metric(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


COUNTED = ("feddst_rounds_completed_total", "feddst_upload_payload_bytes_total", "feddst_round_duration_seconds_count")


def stable_snapshot(client: httpx.Client, run_id: str) -> tuple[dict, list[dict]] | None:
    """(metrics, rounds) read as API, metrics, API, metrics; None unless both reads of each agree
    (no round closed in between), so the two describe the same moment."""
    before = client.get(f"/api/runs/{run_id}/rounds").json()
    parsed = scrape(client)
    after = client.get(f"/api/runs/{run_id}/rounds").json()
    again = scrape(client)
    if len(before) != len(after) or any(parsed[(k, ())] != again[(k, ())] for k in COUNTED):
        return None
    return parsed, after


def assert_agrees(parsed: dict, rounds: list[dict], client: httpx.Client) -> None:
    """Metrics that must equal what /api says about the same run."""
    assert metric(parsed, "feddst_rounds_completed_total") == len(rounds)
    assert metric(parsed, "feddst_round_duration_seconds_count") == len(rounds)
    assert metric(parsed, "feddst_round_duration_seconds_sum") == pytest.approx(sum(r["seconds"] for r in rounds))
    paid_up = sum(n for r in rounds for n in r["upload_by_device"].values())
    assert metric(parsed, "feddst_upload_payload_bytes_total") == paid_up == rounds[-1]["upload_bytes"] > 0
    assert metric(parsed, "feddst_updates_total", verdict="accepted") == sum(len(r["accepted"]) for r in rounds)
    assert metric(parsed, "feddst_download_payload_bytes_total") >= rounds[-1]["download_bytes"] > 0
    online = [d["id"] for d in client.get("/api/devices").json() if d["status"] == "online"]
    assert metric(parsed, "feddst_devices_online") == len(online) == 2
    assert metric(parsed, "feddst_broker_connected") == float(client.get("/healthz").json()["broker_connected"]) == 1
    for direction in ("received", "sent"):  # socket bytes carry MQTT framing on top of every payload
        assert metric(parsed, "feddst_mqtt_wire_bytes_total", direction=direction) > metric(
            parsed, "feddst_mqtt_payload_bytes_total", direction=direction) > 0
    assert metric(parsed, "feddst_mqtt_dropped_packets_total") == 0


def test_metrics_scraped_during_and_after_a_live_run_agree_with_the_api(fleet):
    server, coordinator, _ = fleet
    with httpx.Client(base_url=server.url, headers=bearer(coordinator, "operator"), timeout=30) as client:
        run = client.post("/api/runs", json={**RUN, "rounds": 6, "clients_per_round": 2, "quorum": 1}).json()
        assert client.post(f"/api/runs/{run['id']}/start").status_code == 200
        during = None
        end = time.monotonic() + 180
        while during is None and time.monotonic() < end:
            snapshot = stable_snapshot(client, run["id"])
            running = client.get(f"/api/runs/{run['id']}").json()["status"] == "running"
            if snapshot and 1 <= len(snapshot[1]) < 6 and running:
                during = snapshot
            time.sleep(0.05)
        assert during is not None, "no scrape between the first and the last round"
        assert_agrees(*during, client)
        assert metric(during[0], "feddst_active_runs") == 1

        final = coordinator.wait_for_run(run["id"], 180)
        assert final.status == "completed", final.error
        detail = client.get(f"/api/runs/{run['id']}").json()
        parsed = scrape(client)
        assert_agrees(parsed, detail["rounds"], client)
        assert len(detail["rounds"]) == 6 and metric(parsed, "feddst_active_runs") == 0
        assert metric(parsed, "feddst_download_payload_bytes_total") == detail["total_download_bytes"]
        errors = [e["code"] for r in detail["rounds"] for e in r["errors"].values()]
        assert errors == ["bad_data"] * 6  # dev-broken, every round
        assert metric(parsed, "feddst_device_errors_total", code="bad_data") == detail["counters"]["device_errors"] == 6
        assert metric(parsed, "feddst_updates_total", verdict="accepted") == detail["counters"]["accepted"] == 6
