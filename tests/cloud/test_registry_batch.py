"""DeviceRegistry.deferred_flush: the device-state changes of a batch of inbound messages (status changes,
Registers) are written in one transaction when the block ends, not one fsync'd commit per change (what the
coordinator's main loop does for each batch it handles)."""

from __future__ import annotations

from cloud.device_registry import DeviceRegistry
from cloud.store import CoordinatorStore
from protocol import Capabilities


class CountingStore(CoordinatorStore):
    """The real SQLite store, counting its device-row transactions (and the rows they wrote)."""

    saves = 0
    rows_written: list[str]

    def save_device_values(self, values):  # noqa: ANN001, ANN201
        self.saves += bool(values)
        self.rows_written = getattr(self, "rows_written", []) + [v[0] for v in values]
        return super().save_device_values(values)


def test_a_batch_of_state_changes_is_written_once_when_its_block_ends(tmp_path):
    store = CountingStore(tmp_path)
    registry = DeviceRegistry(store, heartbeat_s=5.0)
    with registry.deferred_flush():
        registry.register("a", Capabilities("x86_64", 2, 512, {}), 40, 100)
        for i, device in enumerate(["a", "b", "c", "d"]):
            registry.status(device, "busy", 1000.0 + i, 50)
        registry.status("a", "online", 1010.0, 50)
        assert store.saves == 0
        assert CoordinatorStore(tmp_path).load_devices() == []  # nothing written inside the block
    assert store.saves == 1
    stored = {row.id: row for row in CoordinatorStore(tmp_path).load_devices()}  # a restarted coordinator
    assert {d: stored[d].state for d in stored} == {"a": "online", "b": "busy", "c": "busy", "d": "busy"}
    assert stored["a"].capabilities["arch"] == "x86_64" and stored["a"].sample_count == 40
    store.close()


def test_outside_a_block_a_state_change_is_written_at_once(tmp_path):
    store = CountingStore(tmp_path)
    registry = DeviceRegistry(store, heartbeat_s=5.0)
    registry.status("a", "busy", 1000.0, 50)
    registry.status("a", "busy", 1001.0, 50)  # no change: not written
    assert store.saves == 1
    assert [row.state for row in CoordinatorStore(tmp_path).load_devices()] == ["busy"]
    store.close()


def test_a_batchs_write_takes_its_state_changes_only_and_the_periodic_flush_the_rest(tmp_path):
    store = CountingStore(tmp_path)
    registry = DeviceRegistry(store, heartbeat_s=5.0)
    with registry.deferred_flush():
        for device in ("a", "b", "c"):
            registry.status(device, "online", 1000.0, 50)  # new devices: a state change each
    assert store.rows_written == ["a", "b", "c"]
    with registry.deferred_flush():
        registry.status("a", "online", 1005.0, 60)  # a heartbeat: last seen and bytes only
        registry.seen("c", bytes_up=7000)  # an update's bytes
        registry.status("b", "busy", 1005.0, 60)  # a state change: written with the batch
    assert store.rows_written == ["a", "b", "c", "b"]
    stored = {row.id: row for row in CoordinatorStore(tmp_path).load_devices()}
    assert (stored["b"].state, stored["b"].last_seen, stored["b"].bytes_up) == ("busy", 1005.0, 110)
    assert (stored["a"].last_seen, stored["a"].bytes_up, stored["c"].bytes_up) == (1000.0, 50, 50)  # not yet
    registry.flush()  # what the main loop does every ~2 s, at a round's close and at shutdown
    assert store.rows_written[4:] == ["a", "c"]  # b was written already and did not change since
    stored = {row.id: row for row in CoordinatorStore(tmp_path).load_devices()}
    assert (stored["a"].last_seen, stored["a"].bytes_up, stored["c"].bytes_up) == (1005.0, 110, 7050)
    store.close()


def test_a_device_registering_again_is_written_with_its_new_capabilities(tmp_path):
    store = CountingStore(tmp_path)
    registry = DeviceRegistry(store, heartbeat_s=5.0)
    registry.register("a", Capabilities("x86_64", 2, 512, {}), 40, 100)
    registry.status("a", "busy", 1000.0, 50)
    registry.register("a", Capabilities("aarch64", 4, 1024, {}), 80, 100)
    stored = CoordinatorStore(tmp_path).load_devices()
    assert [(r.capabilities["arch"], r.capabilities["cores"], r.sample_count, r.bytes_up) for r in stored] == [
        ("aarch64", 4, 80, 250)]
    assert DeviceRegistry(CoordinatorStore(tmp_path), 5.0).capabilities("a")["memory_mb"] == 1024
    store.close()
