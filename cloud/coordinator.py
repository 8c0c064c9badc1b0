"""The coordinator service: one main-loop thread that owns the MQTT link's inbound queue and the run.

Lifecycle of a run (one run is active at a time; starting a second one is a ``RunStateError``):

1. ``start_run``: the main loop builds the strategy, the seeded initial model (saved as round 0),
   ``rng = np.random.default_rng(seed)`` and, if configured, the held-out evaluator.
2. Each round waits (up to ``device_wait_s``) for :func:`~cloud.run_phase.devices_needed`
   eligible devices, selects ``min(clients_per_round, eligible)`` with ``strategy.configure_round``,
   publishes one ``Task`` per selected device, then the ``ModelBroadcast`` (chunked, retained).
3. Updates are checked and judged by :class:`~cloud.round_collector.RoundCollector` (invalid ones
   rejected with their reason, weights capped at the registered sample count) and folded into the
   aggregation; each gets an ``Ack`` (``ok=false`` with the reason when rejected). The round
   closes when every selected device replied, or at the deadline if at least ``quorum`` replied. A
   ``DeviceError`` is recorded instead of an update; when every selected device replied, some with
   errors, too few to close, the round retries at once with spare devices or the run fails saying why.
4. A round that misses its quorum is *retried* (same round number, accepted replies kept): the
   devices that did not reply are replaced by other eligible online devices when there are any,
   the model and an extended ``Task`` are re-published and the deadline restarts. After
   ``max_round_retries`` retries the run fails.
5. After each round: evaluate (if configured), save the model (safetensors), record the round, then
   checkpoint the run (:mod:`cloud.checkpoints`: model, masks, server momentum, RNG state, counters).
   ``stop_run`` publishes ``Abort`` on the control topic and returns once the run has stopped.
6. Resume: a coordinator started on a state dir whose last run was left running (``kill -9``) or
   interrupted by a shutdown resumes it (``resume_runs``), or ``resume_run`` does by hand: from the
   latest checkpoint, reopening the round that was open (same selection and task nonce).

Byte accounting matches the simulator: download = encoded broadcast size x selected devices;
upload = encoded size of each accepted update (duplicates and ignored updates are not counted).

Security (``docs/security.md``): every message the coordinator sends is signed with its Ed25519
key (``settings.signing_key_path``); every device message must carry a sequence number above the
last one accepted from that device (:class:`~cloud.replay_guard.ReplayGuard`, persisted), and an
update must echo the random ``task_nonce`` of its round's Task. Rejections are counted by reason
in ``counters`` and the active run's counters (``replayed_seq``, ``wrong_nonce``, ``auth_failed``...).

Code layout: :class:`Coordinator` (here: start/close, the public API any thread calls, the main loop and
its command queue) is built on :class:`~cloud.inbound_handling.InboundHandling` (inbound items),
:class:`~cloud.round_lifecycle.RoundLifecycle` (a run's rounds) and
:class:`~cloud.coordinator_services.CoordinatorServices` (the parts, run status, signed publishing).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cloud.coordinator_services import SHUTDOWN_REASON, log
from cloud.errors import BrokerUnavailableError, RunStateError
from cloud.inbound_handling import InboundHandling
from cloud.run_config import RunConfig
from cloud.run_phase import RunPhase, api_phase
from cloud.run_planning import plan_run
from cloud.store import RunRow
from protocol import Abort, topics

__all__ = ["SHUTDOWN_REASON", "Coordinator"]

INBOUND_BATCH = 256  # inbound items admitted (replay state written) in one transaction, then handled
GROUP_COMMIT_S = 0.02  # a batch with a durable replay-state write waits this long for more items (one fsync),
# unless it completes the open round (InboundHandling._completes_round: nothing more is awaited)
STOP_WAIT_S = 30.0  # POST stop waits this long for the main loop to stop the run


class Coordinator(InboundHandling):
    """Runs, devices and the MQTT link. Thread-safe public methods; work happens on the main loop."""

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, connect_timeout_s: float = 10.0) -> bool:
        """Connect to the broker and start the main loop; False if the broker did not accept us. Sets the
        process's GIL switch interval first (setting ``gil_switch_interval_s``)."""
        if self.settings.gil_switch_interval_s is not None:
            sys.setswitchinterval(self.settings.gil_switch_interval_s)
        ok = self.link.connect(connect_timeout_s)
        self._thread = threading.Thread(target=self._main_loop, name="coordinator", daemon=True)
        self._thread.start()
        return ok

    def close(self) -> None:
        """Stop the main loop (it marks the active run ``interrupted`` as its last write), then the link and
        the store. Nothing writes after the loop has exited; if it does not exit within a minute (a stuck
        evaluation), the store is left open rather than closed under it."""
        self._shutdown.set()
        if self._thread is None:
            self._interrupt_active()
        else:
            self._thread.join(timeout=60)
            if self._thread.is_alive():
                log.error("the coordinator main loop did not stop within 60 s; leaving the store open")
                self.link.close()
                return
        self.link.close()
        self.registry.flush()
        self.replay_guard.flush()
        self.tokens.close()
        self.store.close()

    # --- public API (any thread) ------------------------------------------------------------------

    def create_run(self, config: RunConfig) -> RunRow:
        """Store a new run after checking it can run here (``RunConfigRejectedError`` otherwise)."""
        plan_run(config, self.settings.data_roots)
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        return self.store.create_run(run_id, config.name, config.model_dump(mode="json"))

    def start_run(self, run_id: str) -> RunRow:
        """Queue the start of a created run; ``BrokerUnavailableError`` while the broker is disconnected."""
        self.store.get_run(run_id)
        if not self.broker_connected:
            raise BrokerUnavailableError("the coordinator is not connected to the MQTT broker "
                                         f"{self.settings.broker_url}; the run could not reach any device, retry "
                                         "when /healthz reports broker_connected")
        with self._lock:
            run = self.store.get_run(run_id)
            if run.status != "created":
                raise RunStateError(f"run {run_id} is {run.status}; only a created run can be started")
            if self._active_id is not None:
                raise RunStateError(f"run {self._active_id} is running; stop it first")
            self._active_id = run_id
            self._set_status(run_id, "running")
        self._commands.put(("start", run_id, None))
        return self.store.get_run(run_id)

    def resume_run(self, run_id: str) -> RunRow:
        """Queue the resume of an ``interrupted`` run from its last checkpointed round (``RunStateError``
        for any other status or while another run is active; ``BrokerUnavailableError`` while disconnected)."""
        self.store.get_run(run_id)
        if not self.broker_connected:
            raise BrokerUnavailableError("the coordinator is not connected to the MQTT broker "
                                         f"{self.settings.broker_url}; retry when /healthz reports broker_connected")
        with self._lock:
            run = self.store.get_run(run_id)
            if run.status != "interrupted":
                raise RunStateError(f"run {run_id} is {run.status}; only an interrupted run can be resumed")
            if self._active_id is not None:
                raise RunStateError(f"run {self._active_id} is running; stop it first")
            self._active_id = run_id
            self._set_status(run_id, "running")
        self._commands.put(("resume", run_id, None))
        return self.store.get_run(run_id)

    def stop_run(self, run_id: str) -> RunRow:
        """Stop a created or running run; returns once the main loop has stopped it (status ``stopped``, or
        ``completed``/``failed`` if it ended first), so a start right after it is not refused as running.
        ``RunStateError`` for a run in any other status."""
        done = threading.Event()
        with self._lock:
            run = self.store.get_run(run_id)
            if run.status == "created":
                self._set_status(run_id, "stopped", "stopped before it started")
                return self.store.get_run(run_id)
            if run.status != "running" or self._active_id != run_id:
                raise RunStateError(f"run {run_id} is {run.status}; it cannot be stopped")
            self._commands.put(("stop", run_id, done))
        if not done.wait(STOP_WAIT_S):
            log.warning("run %s: the main loop has not stopped it after %.0f s", run_id, STOP_WAIT_S)
        return self.store.get_run(run_id)

    def get_run(self, run_id: str) -> tuple[RunRow, list[dict[str, Any]]]:
        return self.store.get_run(run_id), self.store.rounds(run_id)

    def run_phase(self, run_id: str) -> RunPhase | None:
        """What the run is doing now, if it is the active run (None otherwise)."""
        ex = self._execution
        if ex is not None and ex.run_id == run_id:
            return api_phase(ex.phase, ex.server_round, ex.progress, ex.phase_since)
        if self.active_run_id == run_id:
            return RunPhase("starting", 1)
        return None

    def delete_run(self, run_id: str) -> None:
        """Delete a run that is not running: its row, rounds and model files (``RunStateError`` if running)."""
        with self._lock:
            run = self.store.get_run(run_id)
            if run.status == "running" or self._active_id == run_id:
                raise RunStateError(f"run {run_id} is running; stop it before deleting it")
            self.store.delete_run(run_id)
            self.checkpoints.delete_run(run_id)
        self._finished_accepted.pop(run_id, None)
        log.info("run %s deleted", run_id)

    def list_runs(self) -> list[RunRow]:
        return self.store.list_runs()

    def model_file(self, run_id: str) -> Path:
        return self.store.model_file(run_id)

    def model_onnx(self, run_id: str, server_round: int | None = None) -> bytes:
        """The run's global model (of ``server_round``, default the latest) as ONNX bytes."""
        from cloud.model_export import run_model_onnx  # local import: onnx is only needed here

        return run_model_onnx(self.store, run_id, server_round)

    def wait_for_run(self, run_id: str, timeout_s: float) -> RunRow:
        """Block until the run leaves 'running'/'created' (or the timeout); returns its row. Woken by each
        status change (the store is read again then, and at least every second)."""
        end = time.monotonic() + timeout_s
        while True:
            with self._status_changed:
                seen = self._status_changes
            run = self.store.get_run(run_id)
            left = end - time.monotonic()
            if run.status not in ("running", "created") or left <= 0:
                return run
            with self._status_changed:
                if self._status_changes == seen:
                    self._status_changed.wait(timeout=min(left, 1.0))

    # --- main loop ------------------------------------------------------------------------------

    def _main_loop(self) -> None:
        last_flush = time.monotonic()
        while not self._shutdown.is_set():
            try:
                self._drain_commands()
                try:
                    items = [self.inbound.get(timeout=0.05)]
                except queue.Empty:
                    items = []
                while items:
                    if (len(items) < INBOUND_BATCH and any(self._writes_durably(item) for item in items)
                            and not self._completes_round(items)):
                        items += self._take_queued(INBOUND_BATCH - len(items), GROUP_COMMIT_S)
                    self._handle_batch(items)
                    items = self._take_queued(INBOUND_BATCH)
                self._tick()
                if time.monotonic() - last_flush > 2.0:
                    self.registry.flush()
                    self.replay_guard.flush()
                    last_flush = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the loop must survive; the run fails loudly
                log.exception("coordinator main loop error")
                self._fail_active(f"internal error: {type(exc).__name__}: {exc}")
        self._interrupt_active()  # the loop's last write: nothing else writes a run's status after it

    def _drain_commands(self) -> None:
        while True:
            try:
                command, run_id, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                if command == "start":
                    self._begin_run(run_id)
                elif command == "resume":
                    self._resume_run(run_id)
                elif command == "stop":
                    self._stop_active(run_id)
            finally:
                if done is not None:
                    done.set()

    def _stop_active(self, run_id: str) -> None:
        ex = self._execution
        if ex is None or ex.run_id != run_id:  # it completed or failed before the stop reached the loop
            log.info("run %s ended before the stop request was handled; nothing to stop", run_id)
            return
        abort = Abort(run_id, ex.server_round + 1, "stopped by operator")
        self._publish(topics.control(run_id), self._sign(abort), topics.QOS_CONTROL)
        self._finish(run_id, "stopped", "stopped by operator")

