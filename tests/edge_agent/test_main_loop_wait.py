"""The agent's main loop waits for events until its next heartbeat or upload (re)send is due, at most
``TICK_MAX_S`` (``EdgeAgent._wait_s``): no fixed fast poll that wakes the training thread's GIL for nothing."""

from __future__ import annotations

import time

import pytest
from agent_harness import agent_settings

from edge_agent.agent import TICK_MAX_S, EdgeAgent, PendingUpload
from edge_agent.data import load_local_data


@pytest.fixture
def agent() -> EdgeAgent:
    settings = agent_settings("mqtt://127.0.0.1:1", heartbeat_s=5.0)  # never connected: link state set below
    made = EdgeAgent(settings, load_local_data(settings))
    made.link._connected = True  # as after a CONNACK
    return made


def _upload(next_send: float, in_doubt: bool = True) -> PendingUpload:
    return PendingUpload("feddst/v1/x", None, deadline=time.monotonic() + 60, next_send=next_send,  # type: ignore[arg-type]
                         in_doubt=in_doubt)


def test_waits_until_the_next_heartbeat(agent: EdgeAgent) -> None:
    agent._next_heartbeat = time.monotonic() + 0.3
    assert 0.2 < agent._wait_s() <= 0.3
    agent._next_heartbeat = time.monotonic() - 1.0  # overdue: no wait at all
    assert agent._wait_s() == 0.0


def test_waits_at_most_tick_max_s(agent: EdgeAgent) -> None:
    agent._next_heartbeat = time.monotonic() + 60
    assert agent._wait_s() == TICK_MAX_S


def test_an_upload_due_sooner_than_the_heartbeat_shortens_the_wait(agent: EdgeAgent) -> None:
    agent._next_heartbeat = time.monotonic() + 60
    agent.state.uploads[("run-1", 1)] = _upload(time.monotonic() + 0.4)
    assert 0.3 < agent._wait_s() <= 0.4
    agent.state.uploads[("run-1", 2)] = _upload(time.monotonic() - 5, in_doubt=False)  # sent, waiting for its Ack
    assert 0.3 < agent._wait_s() <= 0.4


def test_offline_nothing_is_due(agent: EdgeAgent) -> None:
    agent.link._connected = False
    agent._next_heartbeat = time.monotonic() - 1.0
    agent.state.uploads[("run-1", 1)] = _upload(time.monotonic() - 1.0)
    assert agent._wait_s() == TICK_MAX_S  # neither a heartbeat nor a resend goes out without the link
