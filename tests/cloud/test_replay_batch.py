"""ReplayGuard.batched: the durable replay state of a batch of admitted messages is written in one
transaction when the block ends (what the coordinator's main loop does before acting on them)."""

from __future__ import annotations

from cloud.replay_guard import ReplayGuard
from cloud.store import CoordinatorStore
from protocol import Capabilities, Register, Status, Update


def _update(device: str) -> Update:
    return Update(run_id="run-1", server_round=1, device_id=device, tensors={}, mask_changes={}, sample_count=1,
                  train_loss=0.0, compute_s=0.0)


def test_a_batch_is_written_when_its_block_ends(tmp_path):
    store = CoordinatorStore(tmp_path)
    guard = ReplayGuard(store)
    caps = Capabilities("x86_64", 1, 1, {})
    with guard.batched():
        assert guard.admit("a", 5, Register("a", caps, 1, will_seq=4))
        assert guard.admit("a", 6, _update("a"))
        assert guard.admit("b", 9, _update("b"))
        assert not guard.admit("b", 9, _update("b"))  # the batch's own replay is refused at once
        assert guard.admit("a", 7, Status("a", "online"))  # a heartbeat after a durable change
        assert ReplayGuard(store).last_seq("a") is None  # nothing written inside the block
    again = ReplayGuard(CoordinatorStore(tmp_path))  # a restarted coordinator
    assert again.last_seq("a") == 7 and again.last_seq("b") == 9  # the newest state of each device
    assert not again.admit("a", 6, _update("a")) and not again.admit("b", 9, _update("b"))
    store.close()


def test_outside_a_batch_durable_messages_are_written_at_once(tmp_path):
    store = CoordinatorStore(tmp_path)
    guard = ReplayGuard(store)
    assert guard.admit("a", 3, _update("a"))
    assert ReplayGuard(store).last_seq("a") == 3
    store.close()
