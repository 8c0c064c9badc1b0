"""``RunExecution``: the in-memory state of the coordinator's active run, and its checkpoint form.

The main loop owns it. :func:`checkpoint_of` captures what must survive a coordinator crash after a
round closed (``cloud/checkpoints.py`` writes it durably); :func:`execution_from_checkpoint` rebuilds
the execution a restarted coordinator continues from, with the selection RNG exactly where it was.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cloud.checkpoints import RunCheckpoint, rng_from_state
from cloud.evaluation import HeldOutEvaluator
from cloud.round_collector import RoundCollector
from cloud.run_config import RunConfig
from feddst_core.strategies import FedStrategy, ServerState


@dataclass
class RunExecution:
    """The in-memory state of the active run."""

    run_id: str
    config: RunConfig
    strategy: FedStrategy
    state: ServerState
    rng: np.random.Generator
    evaluator: HeldOutEvaluator | None
    server_round: int = 0  # last completed round
    phase: str = "waiting"  # waiting (for devices) | collecting | aggregating | evaluating
    phase_since: float = field(default_factory=time.time)
    progress: tuple[int, int] = (0, 0)  # waiting: (eligible, needed); collecting: (replied, selected)
    collector: RoundCollector | None = None
    deadline: float = 0.0
    retries: int = 0
    round_started: float = 0.0
    broadcast: bytes = b""
    broadcast_s: float = 0.0  # open round: signing + encoding the ModelBroadcast, handing it and the Tasks to paho
    tasks_s: float = 0.0  # open round (last send, a retry's included): signing the Tasks and handing them to paho
    published_at: float = 0.0  # open round: Unix time its model and Tasks were handed to paho
    update_received_at: dict[str, float] = field(default_factory=dict)  # device -> Unix time its update arrived
    model_chunk_topics: int = 0  # retained chunk topics of the open round's model (cleared when it closes)
    task_bytes: dict[str, bytes] = field(default_factory=dict)  # open round: device -> its signed Task, as sent
    # (published again on the device's inbox when it registers again, or after a lost broker session)
    task_nonce: int = 0  # of the open round: the updates answering its Task must echo it
    readjust_fraction: float = 0.0  # alpha_t of the open round
    prox_mu: float = 0.0
    upload_bytes: int = 0
    download_bytes: int = 0
    counters: Counter = field(default_factory=Counter)
    accepted_by_round: dict[int, frozenset[str]] = field(default_factory=dict)  # closed rounds
    wire_marks: dict[str, tuple[int, int]] = field(default_factory=dict)  # device -> (sent, received) last counted
    wire_upload_bytes: int = 0  # device-side MQTT bytes sent / received during the run, as reported so far
    wire_download_bytes: int = 0



def checkpoint_of(ex: RunExecution) -> RunCheckpoint:
    """The run as of its last closed round (``ex.server_round``), RNG state before the next draw."""
    return RunCheckpoint(ex.run_id, ex.server_round, ex.state, dict(ex.rng.bit_generator.state),
                         dict(ex.counters), dict(ex.accepted_by_round), ex.upload_bytes, ex.download_bytes,
                         ex.wire_upload_bytes, ex.wire_download_bytes, dict(ex.wire_marks))


def execution_from_checkpoint(checkpoint: RunCheckpoint, config: RunConfig, strategy: FedStrategy,
                              evaluator: HeldOutEvaluator | None) -> RunExecution:
    """The execution continuing after ``checkpoint.server_round`` (phase ``waiting``)."""
    ex = RunExecution(checkpoint.run_id, config, strategy, checkpoint.state, rng_from_state(checkpoint.rng_state),
                      evaluator, server_round=checkpoint.server_round)
    ex.counters = Counter(checkpoint.counters)
    ex.accepted_by_round = dict(checkpoint.accepted_by_round)
    ex.upload_bytes, ex.download_bytes = checkpoint.upload_bytes, checkpoint.download_bytes
    ex.wire_upload_bytes, ex.wire_download_bytes = checkpoint.wire_upload_bytes, checkpoint.wire_download_bytes
    ex.wire_marks = dict(checkpoint.wire_marks)
    return ex
