"""Resume after ``kill -9``: a real ``feddst cloud serve`` process killed at a random round and started again
on its state dir ends with the same final model, bit for bit, as the same run uninterrupted.

Devices are protocol-level fakes that train exactly like agents (``LocalTrainer``, seeded per round and
device), so their replies are deterministic; like agents they send their update again when a Task for a
round they answered is repeated (the restarted coordinator reopens the interrupted round).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from brokers import MosquittoBroker
from coordinator_process import CoordinatorProcess
from fake_devices import FakeDevice

from cloud.checkpoints import OPEN_ROUND_FILE
from datasources import load_dataset
from feddst_core.model_file import decode_model_file
from feddst_core.training import ClientData

DEVICES = 6
RUN = dict(model="digits_cnn", rounds=5, clients_per_round=4, min_devices=DEVICES,
           local_epochs=1, batch_size=8, lr=0.05, round_timeout_s=30.0, device_wait_s=60.0, seed=7)
ALGORITHMS = {  # FedAvgM: the server momentum must survive; FedDST: masks that change at readjustment rounds
    "fedavgm": dict(algorithm="fedavgm", server_momentum=0.9),
    "feddst": dict(algorithm="feddst", sparsity=0.8, readjust_ratio=0.2, readjust_every=2, readjust_until=4),
}


@pytest.fixture
def fleet(tmp_path):
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    digits = load_dataset("digits")
    devices = []
    for i in range(DEVICES):
        rows = slice(24 * i, 24 * (i + 1))
        data = ClientData(torch.from_numpy(digits.x_train[rows]), torch.from_numpy(digits.y_train[rows]))
        # delay_s: each round lasts >= 0.5 s, so the kill (within ~0.2 s of the round count being seen) lands
        # before the run ends; rounds of tens of ms let the last ones finish first (no resume to test)
        devices.append(FakeDevice(f"dev-{i}", broker.port, index=i, data=data, sample_count=len(data),
                                  resend_on_repeated_task=True, delay_s=0.5).start())
    try:
        yield broker
    finally:
        for device in devices:
            device.stop()
        broker.stop()


def _final_model(coordinator: CoordinatorProcess, run_id: str) -> dict[str, torch.Tensor]:
    response = coordinator.api("GET", f"/api/runs/{run_id}/model")
    assert response.status_code == 200, response.text
    model = decode_model_file(response.content, run_id)
    return {**model.params, **{f"{n}.mask": m for n, m in model.masks.items()}}


def reopens_a_round(run_dir: Path) -> bool:
    """The oracle for ``rounds_reopened``, read from what a killed coordinator left in its checkpoint dir: an
    open-round record of a round beyond the newest checkpoint. A record *of* the newest checkpoint's round is a
    stale one: ``CheckpointStore.save`` makes the checkpoint visible (rename, then a directory fsync) before it
    removes the record, so a kill in between leaves both, and the resume rightly ignores the record."""
    record = run_dir / OPEN_ROUND_FILE
    if not record.exists():
        return False
    checkpointed = [int(p.stem.split("-")[1]) for p in run_dir.glob("round-*.ckpt")]
    return json.loads(record.read_bytes())["server_round"] > max(checkpointed, default=0)


def test_the_oracle_ignores_an_open_round_record_its_checkpoint_superseded(tmp_path) -> None:
    (tmp_path / "round-00002.ckpt").write_bytes(b"")
    (tmp_path / "round-00003.ckpt").write_bytes(b"")
    assert not reopens_a_round(tmp_path)
    (tmp_path / OPEN_ROUND_FILE).write_text(json.dumps({"server_round": 3}))  # killed between save's two steps
    assert not reopens_a_round(tmp_path)
    (tmp_path / OPEN_ROUND_FILE).write_text(json.dumps({"server_round": 4}))  # killed with round 4 open
    assert reopens_a_round(tmp_path)


def _run_to_the_end(coordinator: CoordinatorProcess, run_id: str) -> dict:
    return coordinator.wait_run(run_id, lambda r: r["status"] not in ("created", "running"), 240, "the run's end")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_run_killed_at_a_random_round_and_restarted_ends_with_the_same_model(fleet, tmp_path, algorithm):
    torch.set_num_threads(1)
    config = {**RUN, **ALGORITHMS[algorithm]}
    reference = CoordinatorProcess(tmp_path / "uninterrupted", fleet.url).start()
    try:
        run_id = reference.api("POST", "/api/runs", json=config).json()["id"]
        assert reference.api("POST", f"/api/runs/{run_id}/start").status_code == 200
        done = _run_to_the_end(reference, run_id)
        assert done["status"] == "completed", done.get("error")
        expected = _final_model(reference, run_id)
    finally:
        reference.stop()

    kill_after = random.Random().randint(1, RUN["rounds"] - 1)  # noqa: S311 - a random round, printed on failure
    crashed = CoordinatorProcess(tmp_path / "crashed", fleet.url).start()
    try:
        run_id = crashed.api("POST", "/api/runs", json=config).json()["id"]
        assert crashed.api("POST", f"/api/runs/{run_id}/start").status_code == 200
        crashed.wait_run(run_id, lambda r: len(r["rounds"]) >= kill_after, 120, f"round {kill_after}")
        crashed.kill9()
        # the oracle: what the killed process left on disk; a round it had opened (Task sent) is reopened
        open_left = reopens_a_round(crashed.state / "checkpoints" / run_id)
        crashed.start()  # resume_runs is on by default: it continues by itself
        done = _run_to_the_end(crashed, run_id)
        assert done["status"] == "completed", (kill_after, done.get("error"), crashed.log_text())
        assert [r["round"] for r in done["rounds"]] == list(range(1, RUN["rounds"] + 1))
        assert done["counters"].get("resumes") == 1, done["counters"]
        assert done["counters"].get("rounds_reopened", 0) == int(open_left), (open_left, done["counters"])
        got = _final_model(crashed, run_id)
    finally:
        crashed.stop()
    assert got.keys() == expected.keys()
    differing = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not differing, f"killed after round {kill_after}: tensors differ: {differing}"
