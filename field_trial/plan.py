"""``feddst trial plan``: the trial in the in-process simulator with a link model.

Per round, every selected online device costs (seconds)::

    LEGS * one_way_s + download_bytes * 8 / (downlink_kbps * 1000 * (1 - loss))
      + compute_s * compute_factor * contention + upload_bytes * 8 / (uplink_kbps * 1000 * (1 - loss))
      + first_task_s * contention     (only in the first round a device trains in)

where ``loss = loss_pct / 100``. ``LEGS`` = 4 one-way trips are on a round's critical path: the Task
reaches the device, its SUBSCRIBE to the round's model topics reaches the broker (the model is
delivered on selection only), the retained model reaches the device, its Update reaches the
coordinator (the round closes on receipt; the ack is off the path). ``one_way_s`` is the mean one-way
delay: ``latency_ms / 2`` plus, with ``shaper = "agent"`` (a uniform draw in ``[0, jitter_ms]``),
``jitter_ms / 2`` (netem's jitter is symmetric around ``latency_ms / 2``). ``compute_s`` is this
machine's measured time to train one client the way a trial agent does (``DEVICE_TORCH_THREADS``
torch threads; the median of three timed runs after a warm-up, scaled by the sample count) and
``first_task_s`` is what an agent pays once, at its first task: the idle agent does not import torch,
so its first round imports torch and the trainer modules (measured in a fresh interpreter with the
agents' thread count, the median of two; CPU-bound, so it shares the cores like compute).
``contention`` is ``max(1, selected / host_cores)`` when the trial's agents share ``host_cores``
cores (``feddst trial run`` on one machine), else 1. The round takes the slowest device's time,
capped at ``round_timeout_s``: devices slower than the deadline are dropped (their updates are not
aggregated, their upload still counts as sent).
Offline devices (availability) are not selectable.

Bytes are the simulator's: exact encoded message sizes (upload in the trial's ``upload_format``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from feddst_core.masks import density
from feddst_core.strategies import ClientReply
from field_trial.spec import DEVICE_TORCH_THREADS, LinkProfile, TrialSpec
from simulator.config import SimulationConfig
from simulator.engine import RoundRecord, Simulation


@dataclass
class PlannedRound(RoundRecord):
    """A simulated round with its predicted wall-clock ``predicted_s`` and who was dropped at the deadline."""

    predicted_s: float = 0.0
    elapsed_predicted_s: float = 0.0
    selected: int = 0
    dropped: int = 0


CRITICAL_PATH_LEGS = 4
"""One-way trips on a round's critical path: Task down, SUBSCRIBE up, model down, Update up."""


def one_way_delay_s(profile: LinkProfile, shaper: str = "agent") -> float:
    """Mean one-way delay of ``profile`` in seconds under ``shaper`` (``"agent"`` or ``"netem"``)."""
    jitter_mean_ms = profile.jitter_ms / 2 if shaper == "agent" else 0.0
    return (profile.latency_ms / 2 + jitter_mean_ms) / 1000.0


def device_seconds(profile: LinkProfile, down_bytes: int, up_bytes: int, compute_s: float,
                   contention: float = 1.0, shaper: str = "agent", first_task_s: float = 0.0) -> float:
    """Predicted seconds of one device's round on ``profile`` (see the module docstring); bytes are
    encoded message bytes, rates kbit/s (1000 bit/s); ``first_task_s``: the agent's one-time start-up
    cost, given only for the first round the device trains in."""
    keep = 1.0 - profile.loss_pct / 100.0
    return (CRITICAL_PATH_LEGS * one_way_delay_s(profile, shaper)
            + down_bytes * 8 / (profile.downlink_kbps * 1000 * keep)
            + compute_s * profile.compute_factor * contention + up_bytes * 8 / (profile.uplink_kbps * 1000 * keep)
            + first_task_s * contention)


FIRST_TASK_IMPORTS = "import torch, feddst_core.sparse.trainer, edge_agent.local_training"
"""What an idle agent imports at its first task (it registers and heartbeats without torch)."""


def measure_first_task_s(runs: int = 2) -> float:
    """Seconds a fresh interpreter takes for :data:`FIRST_TASK_IMPORTS` with the agents' thread count
    (median of ``runs``; the interpreter's own start-up is not counted: an agent is already running)."""
    code = f"import time; t = time.perf_counter(); {FIRST_TASK_IMPORTS}; print(time.perf_counter() - t)"
    env = {**os.environ, "OMP_NUM_THREADS": str(DEVICE_TORCH_THREADS)}
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  env=env, timeout=300).stdout.strip().splitlines()[-1]) for _ in range(runs)]
    return statistics.median(times)


def simulation_config(spec: TrialSpec, algorithm: str, eval_every: int = 1) -> SimulationConfig:
    t, d = spec.trial, spec.data
    train: dict[str, Any] = {k: v for k, v in spec.train.items() if k in SimulationConfig.__dataclass_fields__}
    return SimulationConfig(**{**train, "dataset": d.dataset, "data_dir": d.data_dir, "partition": d.partition,
                               "clients": spec.device_count, "classes_per_client": d.classes_per_client,
                               "samples_per_class": d.samples_per_class, "beta": d.beta,
                               "clients_per_round": t.clients_per_round, "rounds": t.rounds, "algorithm": algorithm,
                               "seed": t.seed, "eval_every": eval_every, "upload_format": t.upload_format,
                               "client_batching": False, "model": spec.model})


class PlannedTrial:
    """One algorithm of a spec in the simulator, with the link model applied round by round."""

    def __init__(self, spec: TrialSpec, algorithm: str, host_cores: int | None = None, eval_every: int = 1):
        self.spec = spec
        self.sim = Simulation(simulation_config(spec, algorithm, eval_every))
        self.profiles = [spec.profile(name) for _, name in spec.device_profiles()]
        self.host_cores = host_cores
        self.availability_rng = np.random.default_rng(spec.trial.seed + 1)
        self.compute_per_sample_s = self._calibrate()
        self.first_task_s = measure_first_task_s()

    def _calibrate(self) -> float:
        """Seconds per training sample of one client trained alone on this machine with the trial
        agents' ``DEVICE_TORCH_THREADS`` threads (one untimed warm-up, then the median of three)."""
        sim = self.sim
        threads = torch.get_num_threads()
        torch.set_num_threads(DEVICE_TORCH_THREADS)
        try:
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                sim.train_clients([0], 0.0, 0.0, 1)
                times.append(time.perf_counter() - t0)
        finally:
            torch.set_num_threads(threads)
        return statistics.median(times[1:]) / max(1, len(sim.partition.train[0]))

    def rounds(self) -> Iterator[PlannedRound]:
        sim, cfg = self.sim, self.sim.config
        upload = download = 0
        elapsed = 0.0
        timeout = self.spec.trial.round_timeout_s
        trained_before: set[int] = set()  # devices past their first task
        for server_round in range(1, cfg.rounds + 1):
            draws = self.availability_rng.random(len(self.profiles))
            online = [c for c, p in enumerate(self.profiles) if p.online(server_round, float(draws[c]))]
            if len(online) < cfg.clients_per_round:
                online = list(range(len(self.profiles)))  # a live round would wait for devices; keep going
            plan = sim.strategy.configure_round(server_round, sim.state, online, sim.rng)
            down = sim.meter.model_broadcast_bytes(sim.state, server_round)
            download += len(plan.clients) * down
            trained = sim.train_clients(plan.clients, plan.readjust_fraction, plan.prox_mu, server_round)
            contention = 1.0 if not self.host_cores else max(1.0, len(plan.clients) / self.host_cores)
            replies, times = [], []
            for client, outcome in trained:
                sent, received = sim.meter.received_update(outcome, sim.state.masks, server_round, client)
                upload += sent
                compute = self.compute_per_sample_s * len(sim.partition.train[client])  # all local epochs
                first = 0.0 if client in trained_before else self.first_task_s
                trained_before.add(client)
                seconds = device_seconds(self.profiles[client], down, sent, compute, contention,
                                         self.spec.trial.shaper, first)
                times.append(seconds)
                if seconds <= timeout:
                    replies.append(ClientReply(client, received, outcome.masks, outcome.num_samples,
                                               outcome.train_loss))
            round_s = min(max(times), timeout)
            if replies:
                new_state, metrics = sim.strategy.aggregate_round(server_round, sim.state, replies)
                assert new_state is not None
                sim.state = new_state
            else:
                metrics = {"train_loss": float("nan")}
            sim.server_round = server_round
            elapsed += round_s
            record = PlannedRound(round=server_round, upload_bytes=upload, download_bytes=download,
                                  density=density(sim.state.masks), train_loss=float(metrics["train_loss"]),
                                  seconds=round_s, predicted_s=round_s, elapsed_predicted_s=elapsed,
                                  selected=len(plan.clients), dropped=len(trained) - len(replies))
            if server_round % cfg.eval_every == 0 or server_round == cfg.rounds:
                record.accuracy, record.global_accuracy = sim.evaluate()
            yield record
