"""The agent's CPU scheduling policy (SCHED_BATCH by default), applied in a child process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from agent_harness import KEYED

from edge_agent.config import AgentConfigError, load_settings
from edge_agent.scheduling import apply_cpu_policy

PROBE = """
import os, sys, threading
from edge_agent.scheduling import apply_cpu_policy
print(apply_cpu_policy(sys.argv[1]))
seen = []
t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
t.start(); t.join()
print(os.sched_getscheduler(0) == os.SCHED_BATCH, seen[0] == os.SCHED_BATCH)
"""


def _probe(policy: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, policy], capture_output=True, text=True, check=True,
                         cwd=os.getcwd(), timeout=60).stdout
    return out.strip().splitlines()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux-only")
def test_batch_policy_applies_to_the_process_and_threads_started_later() -> None:
    described, inherited = _probe("batch")
    assert described == "batch (SCHED_BATCH)"
    assert inherited == "True True"


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux-only")
def test_normal_policy_leaves_the_default() -> None:
    described, inherited = _probe("normal")
    assert described.startswith("normal")
    assert inherited == "False False"


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown CPU policy 'idle'; choose batch or normal"):
        apply_cpu_policy("idle")


def test_cpu_policy_setting_defaults_to_batch_and_refuses_unknown_values() -> None:
    assert load_settings({**KEYED, "device_id": "d"}, environ={}).cpu_policy == "batch"
    assert load_settings({**KEYED, "device_id": "d"}, environ={"FEDDST_CPU_POLICY": "normal"}).cpu_policy == "normal"
    with pytest.raises(AgentConfigError, match="--cpu-policy: choose one of batch, normal"):
        load_settings({**KEYED, "device_id": "d", "cpu_policy": "idle"}, environ={})
