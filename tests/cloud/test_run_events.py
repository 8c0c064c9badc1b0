"""``RunEventLog`` and ``GET /api/runs/{id}/events`` (SSE) over a real uvicorn, a real mosquitto and fake devices:
round and status events as the run goes, ``Last-Event-ID`` resume, keep-alive comments, clear errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from coordinator_harness import bearer, make_coordinator, wait_until
from fake_devices import FakeDevice
from live_server import LiveServer

from cloud.run_config import RunConfig
from cloud.run_events import RunEventLog


def test_event_ids_increase_and_the_ring_keeps_the_last_events_per_run():
    log = RunEventLog(capacity=3, max_runs=2)
    events = [log.publish("a", "round", {"round": r}) for r in range(1, 6)]
    other = log.publish("b", "status", {"status": "running"})
    assert [e.id for e in events] == sorted({e.id for e in events}) and other.id > events[-1].id
    assert [e.data["round"] for e in log.after("a", None)] == [3, 4, 5]  # the ring dropped rounds 1-2
    assert [e.data["round"] for e in log.after("a", events[3].id)] == [5]
    assert log.after("a", events[-1].id) == [] and log.after("nobody", None) == []
    log.publish("c", "status", {"status": "running"})  # a third run evicts the least recently published
    assert log.after("a", None) == [] and log.after("b", None) == [other]
    block = other.to_sse()
    assert block.startswith(f"id: {other.id}\nevent: status\ndata: ") and block.endswith("\n\n")
    assert json.loads(block.split("data: ")[1]) == {"status": "running", "published_at": other.published_at}


def test_an_unknown_event_kind_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="unknown event kind 'rounds'.*device_error"):
        RunEventLog().publish("a", "rounds", {})


def read_events(lines: Iterator[str], count: int, comments: list[str] | None = None) -> list[dict]:
    """Parse ``count`` events from the lines of an open ``text/event-stream`` response (comments go to
    ``comments``; with ``count`` 0, return at the first comment)."""
    events: list[dict] = []
    current: dict = {}
    for line in lines:
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
                if count == 0:
                    return events
            continue
        if not line:
            if "data" in current:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
            continue
        field, _, value = line.partition(": ")
        current[field] = json.loads(value) if field == "data" else value
    return events


@pytest.fixture
def served(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state", sse_keepalive_s=0.3)
    devices = [FakeDevice(f"dev-{i}", mosquitto.port, index=i, delay_s=0.2).start() for i in range(2)]
    try:
        with LiveServer(coordinator) as server:
            yield server, coordinator
    finally:
        for device in devices:
            device.stop()
        coordinator.close()


def test_events_stream_rounds_and_status_and_resume_after_last_event_id(served):
    server, coordinator = served
    headers = bearer(coordinator, "viewer")
    wait_until(lambda: len(coordinator.registry.online_ids()) == 2)
    run = coordinator.create_run(RunConfig(rounds=3, clients_per_round=2, local_epochs=0, round_timeout_s=10))
    url = f"{server.url}/api/runs/{run.id}/events"
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            coordinator.start_run(run.id)
            events = read_events(response.iter_lines(), 5)  # running, rounds 1..3, completed
        assert [(e["event"], e["data"].get("round", e["data"].get("status"))) for e in events] == [
            ("status", "running"), ("round", 1), ("round", 2), ("round", 3), ("status", "completed")]
        ids = [int(e["id"]) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == 5
        stored = coordinator.store.rounds(run.id)
        assert [e["data"] for e in events[1:4]] == [{**r, "published_at": e["data"]["published_at"]}
                                                   for r, e in zip(stored, events[1:4], strict=True)]
        # Resume after round 2: only round 3 and the final status come again, then keep-alive comments.
        comments: list[str] = []
        with client.stream("GET", url, headers={**headers, "Last-Event-ID": str(ids[2])}) as response:
            lines = response.iter_lines()
            resumed = read_events(lines, 2)
            assert [e["id"] for e in resumed] == [str(i) for i in ids[3:]]
            read_events(lines, 0, comments)
        assert comments == [": keep-alive"]


def test_events_errors_are_clear(served):
    server, coordinator = served
    run = coordinator.create_run(RunConfig(rounds=1, clients_per_round=1))
    url = f"{server.url}/api/runs/{run.id}/events"
    assert httpx.get(url).status_code == 401
    assert httpx.get(f"{server.url}/api/runs/run-nope/events", headers=bearer(coordinator, "viewer")).json() == {
        "detail": "no run 'run-nope'"}
    bad = httpx.get(url, headers={**bearer(coordinator, "viewer"), "Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def test_a_client_that_disconnects_ends_its_stream(served):
    server, coordinator = served
    run = coordinator.create_run(RunConfig(rounds=1, clients_per_round=1))
    before = threading.active_count()
    for _ in range(3):
        with httpx.stream("GET", f"{server.url}/api/runs/{run.id}/events", headers=bearer(coordinator, "viewer"),
                          timeout=10) as response:
            assert next(response.iter_lines()) == "retry: 2000"
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # the server is not stuck on old streams
    assert threading.active_count() <= before + 1
