"""The stage timestamps of each round record (``broadcast_s``, ``published_at``, ``update_received_at``,
``aggregation_s``; ``bench/live_overhead.py`` builds its breakdown from them), against what the test
knows: fake devices that hold their updates 0.4 s, and the record's own start and close times."""

from __future__ import annotations

from coordinator_harness import bearer, make_coordinator, wait_until
from fake_devices import FakeDevice
from fastapi.testclient import TestClient

from cloud.app import create_app
from cloud.run_config import RunConfig

HOLD_S = 0.4


def test_round_records_carry_ordered_stage_timestamps(mosquitto, tmp_path) -> None:
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    devices = [FakeDevice(f"dev-{i:03d}", mosquitto.port, index=i, delay_s=HOLD_S).start() for i in range(2)]
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) == 2, what="2 devices online")
        run = coordinator.create_run(RunConfig(model="digits_cnn", rounds=2, clients_per_round=2, local_epochs=0,
                                               round_timeout_s=20, eval={"dataset": "digits", "clients": 2,
                                                                         "samples_per_class": 10}))
        coordinator.start_run(run.id)
        assert coordinator.wait_for_run(run.id, 60).status == "completed"
        _, records = coordinator.get_run(run.id)
        for record in records:
            arrivals = record["update_received_at"]
            assert sorted(arrivals) == record["accepted"] == ["dev-000", "dev-001"]
            assert record["started_at"] <= record["published_at"] < min(arrivals.values())
            assert max(arrivals.values()) <= record["closed_at"]
            assert 0 < record["broadcast_s"] <= record["published_at"] - record["started_at"] + 1e-3
            assert min(arrivals.values()) - record["published_at"] >= HOLD_S  # each device held its update
            assert 0 < record["aggregation_s"] < record["seconds"]
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "viewer")) as client:
            (first, _) = client.get(f"/api/runs/{run.id}").json()["rounds"]
        assert first["update_received_at"] == records[0]["update_received_at"]
        assert first["broadcast_s"] == records[0]["broadcast_s"] and first["aggregation_s"] > 0
    finally:
        for device in devices:
            device.stop()
        coordinator.close()
