"""The fleet-scale bench's asyncio fake agents (``bench/fleet_fakes.py``) against the real coordinator.

20 fakes in 2 processes over a real bridged pair of private mosquittos (one fake process on the
coordinator's broker, one on the bridged second broker), one real round run by the real coordinator
(its own process, as in the bench). The oracle is the coordinator, which checks every update's
envelope (CRC, sender, seq above the last it accepted, the task's nonce) and decodes it before
accepting; the round completes only with every selected device's update accepted (quorum = all).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# appended, not prepended: bench/inference.py must not hide the inference package for the rest of the suite
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

from fleet_scale import agent_heartbeat_s, measure_scale  # noqa: E402

pytestmark = pytest.mark.slow


def test_every_fake_update_is_accepted_through_a_bridged_pair(tmp_path: Path) -> None:
    result = measure_scale(20, tmp_path, procs_count=2, bridge=True)
    assert result["status"] == "completed"
    assert result["accepted"] == 20
    b = result["breakdown"]
    assert (b["brokers"], b["fake_procs"], b["heartbeat_s"]) == (2, 2, agent_heartbeat_s())
    t = b["timeline_s"]  # the order the protocol forces
    assert t["model_at"] <= t["fakes_sent_at"] and t["first_update_at"] <= t["last_update_at"] <= t["closed_at"]
    # the second broker received the updates of the 10 fakes on it (and their heartbeats): its $SYS counted them
    assert b["broker_sys_1"].get("messages_received", 0) >= 10
