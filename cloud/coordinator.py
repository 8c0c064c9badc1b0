"""The coordinator service: one main-loop thread that owns the MQTT link's inbound queue and the run.

Lifecycle of a run (one run is active at a time; starting a second one is a ``RunStateError``):

1. ``start_run``: the main loop builds the strategy, the seeded initial model (saved as round 0),
   ``rng = np.random.default_rng(seed)`` and, if configured, the held-out evaluator.
2. Each round waits (up to ``device_wait_s``) for :func:`~cloud.run_phase.devices_needed`
   eligible devices, selects ``min(clients_per_round, eligible)`` with ``strategy.configure_round``,
   publishes the ``ModelBroadcast`` (chunked) then the ``Task``.
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
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.access_tokens import TokenStore
from cloud.checkpoints import CheckpointStore, OpenRound, rng_from_state
from cloud.device_registry import DeviceRegistry, eligible_devices
from cloud.enrollment import REVOKED_MARK, DeviceKeyring
from cloud.errors import BrokerUnavailableError, RunStateError
from cloud.metrics import CoordinatorMetrics
from cloud.mqtt_link import CoordinatorLink, Inbound, PublishResult
from cloud.replay_guard import REPLAYED, RETAINED_SEEN, ReplayGuard
from cloud.round_collector import RoundCollector, Verdict
from cloud.run_config import RunConfig
from cloud.run_events import RunEventLog
from cloud.run_execution import RunExecution, checkpoint_of, execution_from_checkpoint
from cloud.run_phase import RunPhase, api_phase, devices_needed, round_log_line
from cloud.run_planning import plan_run
from cloud.settings import CloudSettings
from cloud.signing_key import load_or_create_signing_key
from cloud.store import CoordinatorStore, DeviceErrorRow, RunRow
from feddst_core.masks import density
from feddst_core.wire_format import model_broadcast, run_completed
from protocol import (
    DEVICE_ERROR_CODES,
    Abort,
    Ack,
    DeviceError,
    Message,
    Register,
    Status,
    Task,
    Update,
    encode_message,
    topics,
)
from protocol.ed25519 import Ed25519Signer

log = logging.getLogger(__name__)

STATUS_PAYLOAD_BYTES = "status_payload_bytes"  # run counter: devices' Status (heartbeat) messages, encoded bytes
SHUTDOWN_REASON = "coordinator shut down during the run"
TERMINAL_STATUSES = ("completed", "stopped", "failed")  # never rewritten (a stop racing completion is a no-op)
INBOUND_BATCH = 256  # inbound items admitted (replay state written) in one transaction, then handled
STOP_WAIT_S = 30.0  # POST stop waits this long for the main loop to stop the run


class Coordinator:
    """Runs, devices and the MQTT link. Thread-safe public methods; work happens on the main loop."""

    def __init__(self, settings: CloudSettings, store: CoordinatorStore | None = None):
        self.settings = settings
        self.store = store or CoordinatorStore.from_settings(settings)
        self.checkpoints = CheckpointStore(self.store.state_dir)
        left_running = self.store.mark_unfinished_runs_interrupted()
        self.tokens = TokenStore(self.store.state_dir)
        self.registry = DeviceRegistry(self.store, settings.heartbeat_s)
        self.events = RunEventLog()  # recent round/status/device_error events per run (the SSE endpoint)
        self.inbound: queue.Queue[Inbound] = queue.Queue(maxsize=256)
        self._commands: queue.SimpleQueue[tuple[str, str, threading.Event | None]] = queue.SimpleQueue()
        self.keyring = DeviceKeyring(self.store, settings.device_keys(), settings.require_device_keys)
        self.metrics = CoordinatorMetrics(devices_online=lambda: len(self.registry.online_ids()),
                                          inbound_depth=self.inbound.qsize,
                                          broker_connected=lambda: self.broker_connected,
                                          active_runs=lambda: 0 if self.active_run_id is None else 1,
                                          link_counters=lambda: self.link.counters())
        self.link = CoordinatorLink(
            self.inbound, host=settings.broker_host, port=settings.broker_port,
            client_id=settings.mqtt_client_id, username=settings.mqtt_username,
            password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
            protocol=settings.mqtt_protocol, tls=settings.broker_tls, max_packet=settings.max_packet,
            key_lookup=self.keyring.lookup, authenticate=self.keyring.verifying, tls_files=settings.tls_files(),
            count_bytes=lambda direction, n: self.metrics.mqtt_bytes.labels(direction=direction).inc(n),
            raw_queue_packets=settings.mqtt_receive_queue_packets)
        self.signer = Ed25519Signer(load_or_create_signing_key(settings.signing_key_path))
        self.replay_guard = ReplayGuard(self.store)
        self._seq = int(time.time() * 1000)  # increasing across restarts too
        self._lock = threading.Lock()
        self._status_changed = threading.Condition()  # notified after every run status write (wait_for_run)
        self._status_changes = 0
        self._active_id: str | None = None
        self._execution: RunExecution | None = None
        self._shutdown = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished_accepted: dict[str, dict[int, frozenset[str]]] = {}  # recent runs, for late duplicates
        self.counters: Counter = Counter()  # coordinator-wide (messages outside any run, invalid...)
        self._connected_at = 0.0  # monotonic time of the last (re)connection to the broker
        if settings.resume_runs:
            self._resume_at_start(left_running)

    def _resume_at_start(self, left_running: list[str]) -> None:
        """Queue the resume of the run the previous process was running: one it left ``running`` (a crash,
        marked interrupted by the store just now) or one its shutdown interrupted; only the most recently
        started run qualifies (older interrupted runs are resumed by hand, ``resume_run``)."""
        started = [r for r in self.store.list_runs() if r.started_at is not None]
        if not started:
            return
        last = max(started, key=lambda r: r.started_at or 0.0)
        if last.status == "interrupted" and (last.id in left_running or last.error == SHUTDOWN_REASON):
            self._active_id = last.id
            self._set_status(last.id, "running")
            self._commands.put(("resume", last.id, None))
            log.info("run %s was running when the previous coordinator stopped; resuming it", last.id)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, connect_timeout_s: float = 10.0) -> bool:
        """Connect to the broker and start the main loop; False if the broker did not accept us."""
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

    @property
    def active_run_id(self) -> str | None:
        with self._lock:
            return self._active_id

    @property
    def public_key_hex(self) -> str:
        """The public half of the signing key (64 hex characters): what every device must be given."""
        return self.signer.public_key_hex

    @property
    def broker_connected(self) -> bool:
        return self.link.connected.is_set()

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

    def _take_queued(self, limit: int) -> list[Inbound]:
        """Up to ``limit`` inbound items that are queued now (no waiting)."""
        items: list[Inbound] = []
        while len(items) < limit:
            try:
                items.append(self.inbound.get_nowait())
            except queue.Empty:
                break
        return items

    def _handle_batch(self, items: list[Inbound]) -> None:
        """Admit a batch of inbound items against the replay guard, their seqs written in one transaction,
        then act on the fresh ones in order (the round is ticked after each, as for single items)."""
        with self.replay_guard.batched():
            fresh = [self._admit(item) for item in items]
        for item, ok in zip(items, fresh, strict=True):
            try:
                if ok:
                    self._handle(item)
                self._tick()
            except Exception as exc:  # noqa: BLE001 - as in the main loop, and the batch's other items still count
                log.exception("coordinator main loop error")
                self._fail_active(f"internal error: {type(exc).__name__}: {exc}")

    def _interrupt_active(self) -> None:
        with self._lock:
            active = self._active_id
        if active is not None:
            self._set_status(active, "interrupted", SHUTDOWN_REASON)

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

    # --- inbound --------------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        """Count a rejection coordinator-wide and in the active run's counters."""
        self.counters[reason] += 1
        if self._execution is not None:
            self._execution.counters[reason] += 1

    def _admit(self, item: Inbound) -> bool:
        """Whether ``item`` is acted on: False for a device message whose seq is not fresh (counted, logged)."""
        if item.kind != "message" or item.decoded is None:
            return True
        msg, envelope = item.decoded.message, item.decoded.envelope
        if not isinstance(msg, Register | Status | Update | DeviceError) or self.replay_guard.admit(
                envelope.sender_id, envelope.seq, msg):
            return True
        if item.retained and isinstance(msg, Status):
            self.counters[RETAINED_SEEN] += 1  # the broker's retained copy of a status already accepted
            return False
        self._count(REPLAYED)
        log.warning("dropped a replayed %s from %s on %s: seq %d is not above the last accepted %s",
                    type(msg).__name__, envelope.sender_id, item.topic, envelope.seq,
                    self.replay_guard.last_seq(envelope.sender_id))
        return False

    def _handle(self, item: Inbound) -> None:
        """Act on one admitted item (:meth:`_admit`)."""
        if item.kind == "invalid":
            self.counters["invalid_messages"] += 1
            if REVOKED_MARK in item.error:
                self.counters["revoked_device_messages"] += 1
            if self._execution is not None:
                self._execution.counters["invalid"] += 1
            if item.error.startswith("AuthenticationError"):
                self._count("auth_failed")
            log.warning("dropped undecodable message on %s: %s", item.topic, item.error)
            return
        if item.kind == "disconnected":  # logged and counted by the link (CoordinatorLink)
            return
        if item.kind == "connected":  # logged by the link; no round is drawn within the reconnection grace
            self._connected_at = time.monotonic()
            return
        if item.kind != "message" or item.decoded is None:
            return
        msg, envelope = item.decoded.message, item.decoded.envelope
        if isinstance(msg, Status):
            if item.topic != topics.status(msg.device_id):
                self.counters["misrouted"] += 1
                return
            at = envelope.timestamp_ms / 1000.0 if item.retained else item.received_at
            self.registry.status(msg.device_id, msg.state, min(at, item.received_at), item.size)
            if not item.retained:
                self.registry.wire_report(msg.device_id, msg.wire_sent_bytes, msg.wire_received_bytes)
                if self._execution is not None:  # heartbeat traffic of the run (its share is in the report)
                    self._execution.counters[STATUS_PAYLOAD_BYTES] += item.size
        elif isinstance(msg, Register):
            if item.topic != topics.register(msg.device_id):
                self.counters["misrouted"] += 1
                return
            self.registry.register(msg.device_id, msg.capabilities, msg.sample_count, item.size)
            self._resend_task_to(msg.device_id)
        elif isinstance(msg, Update):
            self._handle_update(msg, item)
        elif isinstance(msg, DeviceError):
            self._handle_device_error(msg, item)
        else:
            self.counters["unexpected_messages"] += 1

    def _handle_update(self, update: Update, item: Inbound) -> None:
        if item.topic != topics.update(update.run_id, update.device_id):
            self.counters["misrouted"] += 1
            return
        self.registry.seen(update.device_id, bytes_up=item.size)
        ex = self._execution
        finished = self._finished_accepted.get(update.run_id, {})
        if (ex is None or ex.run_id != update.run_id) and update.device_id in finished.get(update.server_round, ()):
            verdict = Verdict("duplicate", "already received (run finished)")
            self.counters["duplicate_after_run"] += 1
        elif ex is None or ex.run_id != update.run_id:
            verdict = Verdict("stale", f"run {update.run_id} is not active")
            self.counters["ignored_other_run"] += 1
            if ex is not None:
                ex.counters["ignored_other_run"] += 1
        elif update.device_id in ex.accepted_by_round.get(update.server_round, ()):
            verdict = Verdict("duplicate", "already received (round closed)")  # ok Ack: stop re-sending
            ex.counters["duplicate"] += 1
        elif ex.collector is None:
            verdict = Verdict("stale", "no round is open")
            ex.counters["stale"] += 1
        else:
            verdict = ex.collector.offer(update, item.size)
            ex.counters.update(verdict.counter_keys)
            if verdict.kind == "accepted":
                ex.update_received_at[update.device_id] = item.received_at
        self.metrics.updates.labels(verdict=verdict.kind).inc()
        if verdict.kind == "invalid":  # answered too (ok=false), so the device stops re-sending it
            log.warning("rejected update from %s for round %s (%s): %s", update.device_id, update.server_round,
                        verdict.reason, verdict.detail)
        ack = Ack(update.run_id, update.server_round, update.device_id, verdict.ack_ok, verdict.ack_detail)
        self._publish(topics.ack(update.run_id, update.device_id), self._sign(ack), topics.QOS_ACK)

    def _handle_device_error(self, report: DeviceError, item: Inbound) -> None:
        if item.topic != topics.update(report.run_id, report.device_id):
            self.counters["misrouted"] += 1
            return
        self.registry.error(DeviceErrorRow(report.device_id, report.run_id, report.server_round, report.code,
                                           report.detail, item.received_at), item.size)
        self.metrics.device_errors.labels(code=report.code if report.code in DEVICE_ERROR_CODES else "other").inc()
        log.warning("device %s could not do run %s round %s (%s): %s", report.device_id, report.run_id,
                    report.server_round, report.code, report.detail)
        self.events.publish(report.run_id, "device_error", {"device_id": report.device_id,
                                                           "round": report.server_round, "code": report.code,
                                                           "message": report.detail})
        ex = self._execution
        if ex is not None and ex.run_id == report.run_id:
            ex.counters["device_errors"] += 1
            if ex.collector is not None and ex.collector.server_round == report.server_round:
                ex.collector.report_error(report.device_id, report.code, report.detail)

    # --- runs -----------------------------------------------------------------------------------

    def _begin_run(self, run_id: str) -> None:
        try:
            config = RunConfig.model_validate(self.store.get_run(run_id).config)
            plan = plan_run(config, self.settings.data_roots)
            strategy, state, evaluator = plan.strategy, plan.initial_state, plan.evaluator
        except Exception as exc:  # noqa: BLE001 - any set-up failure fails the run with its reason
            self._finish(run_id, "failed", f"cannot start: {type(exc).__name__}: {exc}")
            return
        ex = RunExecution(run_id, config, strategy, state, np.random.default_rng(config.seed), evaluator)
        ex.progress = (len(self._eligible(config)), devices_needed(config, 1))
        ex.wire_marks = {d: self.registry.wire_bytes(d) for d in self.registry.online_ids()}
        self._execution = ex
        self.store.save_model(run_id, 0, state.params, state.masks)
        self.checkpoints.save(checkpoint_of(ex))
        log.info("run %s started", run_id)

    def _resume_run(self, run_id: str) -> None:
        """Continue an interrupted run from its last checkpoint; reopen the round it had open, if any, with
        the same selection and task nonce (agents' updates for it still count). A run without a checkpoint
        (it never got past start) starts over, which is the same run (everything is seeded)."""
        checkpoint = self.checkpoints.latest(run_id)
        if checkpoint is None:
            self._begin_run(run_id)
            return
        try:
            config = RunConfig.model_validate(self.store.get_run(run_id).config)
            plan = plan_run(config, self.settings.data_roots)
        except Exception as exc:  # noqa: BLE001 - like a start: the run fails with its reason
            self._finish(run_id, "failed", f"cannot resume: {type(exc).__name__}: {exc}")
            return
        ex = execution_from_checkpoint(checkpoint, config, plan.strategy, plan.evaluator)
        ex.counters["resumes"] += 1
        ex.progress = (len(self._eligible(config)), devices_needed(config, ex.server_round + 1))
        self._execution = ex
        opened = self.checkpoints.open_round(run_id)
        log.info("run %s resumed after round %s%s", run_id, ex.server_round,
                 f"; reopening round {opened.server_round}" if opened else "")
        if opened is not None and opened.server_round == ex.server_round + 1:
            ex.counters["rounds_reopened"] += 1
            ex.rng = rng_from_state(opened.rng_state)
            ex.retries = opened.retries
            self._open_round(ex, opened, time.time())

    def _eligible(self, config: RunConfig) -> list[str]:
        """Online, admitted (enrolled, not revoked) devices meeting the run's capability filter."""
        return eligible_devices(self.registry, config.select, self.keyring.admits)

    def _tick(self) -> None:
        ex = self._execution
        if ex is None:
            return
        now = time.time()
        if ex.phase == "waiting":
            self._try_begin_round(ex, now)
            return
        collector = ex.collector
        assert collector is not None
        ex.progress = (len(collector.accepted), len(collector.selected))
        if (collector.complete or (now >= ex.deadline and len(collector.accepted) >= ex.config.quorum)
                or self._only_gone_devices_missing(collector)):
            self._close_round(ex)
        elif collector.errors and collector.all_replied:  # no point waiting for the deadline
            self._after_errors(ex, now)
        elif now >= ex.deadline:
            self._retry_round(ex, now)

    def _only_gone_devices_missing(self, collector: RoundCollector) -> bool:
        """A retried round whose stand-ins answered (as many updates as it first selected) while every device
        still missing is offline: its selected set cannot complete before they return, so it closes now
        instead of waiting out the deadline (a device still online may yet answer: it is waited for)."""
        if not collector.target_met:
            return False
        online = set(self.registry.online_ids())
        return not any(d in online for d in collector.missing())

    def _after_errors(self, ex: RunExecution, now: float) -> None:
        """Every selected device replied, some with errors: close, retry now with spare devices, or fail saying why."""
        collector = ex.collector
        assert collector is not None
        if len(collector.accepted) >= ex.config.quorum:
            self._close_round(ex)
            return
        spare = [d for d in self._eligible(ex.config) if d not in collector.selected]
        if spare and ex.retries < ex.config.max_round_retries:
            self._retry_round(ex, now)
            return
        self._finish(ex.run_id, "failed", collector.failure_reason(ex.config.quorum, ex.retries if spare else None))

    def _try_begin_round(self, ex: RunExecution, now: float) -> None:
        """Select and open the next round once enough devices are eligible. Not within two heartbeats of a
        (re)connection to the broker: devices that lost it too are re-announcing themselves, and selecting
        from a partial fleet would change the draw (and the run) for a passing outage."""
        if time.monotonic() - self._connected_at < 2 * self.settings.heartbeat_s:
            return
        c = ex.config
        eligible = self._eligible(c)
        need = devices_needed(c, ex.server_round + 1)
        ex.progress = (len(eligible), need)
        if len(eligible) < need:
            if now - ex.phase_since > c.device_wait_s:
                self._finish(ex.run_id, "failed", f"only {len(eligible)} eligible devices online after "
                             f"{c.device_wait_s:.0f} s; round {ex.server_round + 1} needs {need}")
            return
        r = ex.server_round + 1
        plan = ex.strategy.configure_round(r, ex.state, list(range(len(eligible))), ex.rng,
                                           clients_per_round=min(c.clients_per_round, len(eligible)))
        ex.retries = 0
        opened = OpenRound(r, tuple(eligible[i] for i in plan.clients), secrets.randbits(64),
                           plan.readjust_fraction, plan.prox_mu, 0, dict(ex.rng.bit_generator.state))
        self.checkpoints.save_open_round(ex.run_id, opened)  # durable before any device sees the Task
        self._open_round(ex, opened, now)

    def _open_round(self, ex: RunExecution, opened: OpenRound, now: float) -> None:
        """Start collecting ``opened`` (a new round, or the one a restarted coordinator reopens)."""
        r, selected = opened.server_round, opened.selected
        ex.round_started = now
        ex.task_nonce = opened.task_nonce
        ex.collector = RoundCollector(ex.run_id, r, selected, ex.strategy.begin_aggregation(ex.state),
                                      task_nonce=ex.task_nonce, readjust_fraction=opened.readjust_fraction,
                                      registered_samples=self.registry.sample_count,
                                      max_sample_count=ex.config.max_sample_count,
                                      target=opened.target or len(selected))
        encode_started = time.perf_counter()
        ex.broadcast = self._sign(model_broadcast(ex.run_id, r, ex.state.params, ex.state.masks))
        ex.phase, ex.phase_since = "collecting", now
        ex.readjust_fraction, ex.prox_mu = opened.readjust_fraction, opened.prox_mu
        ex.update_received_at = {}
        self._send_round(ex, selected, new_devices=selected)
        ex.broadcast_s, ex.published_at = time.perf_counter() - encode_started, time.time()

    def _send_round(self, ex: RunExecution, selected: tuple[str, ...], new_devices: tuple[str, ...]) -> None:
        c, r = ex.config, ex.server_round + 1
        if not ex.model_chunk_topics:  # retained: a retry's extra devices subscribe and get it, no re-publish
            result, ex.model_chunk_topics = self.link.publish_model(ex.run_id, r, ex.broadcast)
            self._count_publish(topics.model(ex.run_id, r), result)
        ex.deadline = time.time() + c.round_timeout_s
        fraction = ex.readjust_fraction
        task = Task(ex.run_id, r, selected, model_round=r, local_epochs=c.local_epochs, batch_size=c.batch_size,
                    lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                    prox_mu=ex.prox_mu,
                    readjust=fraction > 0, alpha=fraction, deadline_unix=ex.deadline, seed=c.seed,
                    model_name=c.model, task_nonce=ex.task_nonce)
        task_bytes = ex.task_bytes = self._sign(task)
        self._publish(topics.task(ex.run_id), task_bytes, topics.QOS_TASK)
        ex.download_bytes += len(ex.broadcast) * len(new_devices)
        self.metrics.download_bytes.inc(len(ex.broadcast) * len(new_devices))
        self.registry.add_bytes_down(new_devices, len(ex.broadcast) + len(task_bytes))

    def _resend_task_to(self, device_id: str) -> None:
        """A device that (re)registers while selected for the open round and not yet accepted gets the Task
        again on its inbox (a restarted agent's new session never saw it); the model is retained."""
        ex = self._execution
        if ex is None or ex.collector is None or not ex.task_bytes:
            return
        collector = ex.collector
        if device_id not in collector.selected or device_id in collector.accepted:
            return
        ex.counters["task_resent_on_register"] += 1
        log.info("device %s registered during round %s it is selected for; re-sending its task", device_id,
                 collector.server_round)
        self._publish(topics.inbox(device_id), ex.task_bytes, topics.QOS_TASK)
        self.registry.add_bytes_down((device_id,), len(ex.task_bytes))

    def _retry_round(self, ex: RunExecution, now: float) -> None:
        collector = ex.collector
        assert collector is not None
        if ex.retries >= ex.config.max_round_retries:
            errors = f"; device errors: {collector.error_summary()}" if collector.errors else ""
            self._finish(ex.run_id, "failed", f"round {collector.server_round}: {len(collector.accepted)} of "
                         f"{len(collector.selected)} updates by the deadline, quorum {ex.config.quorum}, "
                         f"after {ex.retries} retries{errors}")
            return
        ex.retries += 1
        ex.counters["round_retries"] += 1
        missing = [d for d in collector.selected if d not in collector.accepted]
        spare = [d for d in self._eligible(ex.config) if d not in collector.selected]
        replace_count = min(len(missing), len(spare))
        extra = tuple(sorted(ex.rng.choice(np.asarray(spare), size=replace_count, replace=False).tolist())
                      if replace_count else ())
        collector.selected = collector.selected + extra
        self.checkpoints.save_open_round(ex.run_id, OpenRound(
            collector.server_round, collector.selected, ex.task_nonce, ex.readjust_fraction, ex.prox_mu,
            ex.retries, dict(ex.rng.bit_generator.state), collector.target))
        log.warning("round %s missed its quorum; retry %s with %s extra devices", collector.server_round,
                    ex.retries, len(extra))
        self._send_round(ex, collector.selected, new_devices=extra)

    def _close_round(self, ex: RunExecution) -> None:
        collector = ex.collector
        assert collector is not None
        ex.phase, ex.phase_since = "aggregating", time.time()
        started = time.perf_counter()
        new_state, metrics = collector.finish()
        aggregation_s = collector.aggregation_s + time.perf_counter() - started
        assert new_state is not None  # a round closes only with >= quorum >= 1 accepted updates
        r = collector.server_round
        self._clear_round_model(ex, r)
        ex.state, ex.server_round, ex.collector = new_state, r, None
        ex.upload_bytes += collector.upload_bytes
        ex.accepted_by_round[r] = frozenset(collector.accepted)
        for device_id in collector.accepted:
            self.registry.round_done(device_id)
        record: dict[str, Any] = {
            "round": r, "accuracy": None, "global_accuracy": None, "upload_bytes": ex.upload_bytes,
            "download_bytes": ex.download_bytes, "density": density(new_state.masks),
            "train_loss": metrics.get("train_loss", 0.0), "seconds": time.time() - ex.round_started,
            "selected": list(collector.selected), "accepted": sorted(collector.accepted),
            "ignored": {k: v for k, v in collector.counts.items() if not k.startswith("accepted")},
            "clipped": int(metrics.get("clipped_updates", 0)),
            "retries": ex.retries,
            "late": [d for d in collector.selected if d not in collector.accepted],
            "upload_by_device": dict(sorted(collector.accepted.items())),
            "wire_by_device": self._wire_since_last_round(ex),
            "wire_upload_bytes": ex.wire_upload_bytes, "wire_download_bytes": ex.wire_download_bytes,
            "status_upload_bytes": ex.counters[STATUS_PAYLOAD_BYTES],
            "layer_density": {name: float(m.to(torch.float32).mean()) for name, m in new_state.masks.items()},
            "started_at": ex.round_started, "closed_at": time.time(),
            "broadcast_s": ex.broadcast_s, "published_at": ex.published_at, "aggregation_s": aggregation_s,
            "update_received_at": dict(sorted(ex.update_received_at.items())),
            "errors": {d: {"code": c, "detail": t} for d, (c, t) in sorted(collector.errors.items())},
        }
        if ex.evaluator is not None and (r % ex.evaluator.every == 0 or r == ex.config.rounds):
            ex.phase, ex.phase_since = "evaluating", time.time()
            record["accuracy"], record["global_accuracy"] = ex.evaluator.evaluate(new_state.params)
        self.store.save_model(ex.run_id, r, new_state.params, new_state.masks)
        self.store.add_round(ex.run_id, record)
        self.events.publish(ex.run_id, "round", record)
        self.store.set_run_counters(ex.run_id, ex.counters)
        self.checkpoints.save(checkpoint_of(ex))  # after the round's row: a crash in between re-runs round r
        self.registry.flush()
        self._count_round(record, collector.upload_bytes, aggregation_s)
        log.info("%s", round_log_line(ex.run_id, ex.config.rounds, record))
        if r >= ex.config.rounds:
            self._publish_final_model(ex, record["accuracy"])
            self._finish(ex.run_id, "completed")
        else:
            ex.progress = (len(self._eligible(ex.config)), devices_needed(ex.config, r + 1))
            ex.phase, ex.phase_since = "waiting", time.time()
            self._try_begin_round(ex, time.time())

    def _publish_final_model(self, ex: RunExecution, accuracy: float | None) -> None:
        """``RunCompleted`` on the run's ``final`` topic: the model after the last round, which no round's
        broadcast carries, for the devices that keep it (``--model-onnx-path``; only they subscribe).
        Its encoded size is the run counter ``final_model_bytes`` (bytes per receiving device; the
        report's ``download_bytes`` counts the round broadcasts only, as the simulator does)."""
        data = self._sign(run_completed(ex.run_id, ex.server_round, ex.state.params, ex.state.masks, accuracy))
        self._publish(topics.final(ex.run_id), data, topics.QOS_FINAL)  # chunked by the link
        ex.counters["final_model_bytes"] = len(data)

    def _count_round(self, record: dict[str, Any], upload_bytes: int, aggregation_s: float) -> None:
        self.metrics.rounds_completed.inc()
        self.metrics.round_seconds.observe(record["seconds"])
        self.metrics.aggregation_seconds.observe(aggregation_s)
        self.metrics.upload_bytes.inc(upload_bytes)

    def _clear_round_model(self, ex: RunExecution, server_round: int) -> None:
        """Remove the round's retained model chunks from the broker (the round is over)."""
        if ex.model_chunk_topics:
            self._count_publish(topics.model(ex.run_id, server_round),
                                self.link.clear_model(ex.run_id, server_round, ex.model_chunk_topics))
        ex.model_chunk_topics, ex.task_bytes = 0, b""

    def _wire_since_last_round(self, ex: RunExecution) -> dict[str, dict[str, int]]:
        """Per device: MQTT bytes it sent (``up``) and received (``down``) since the previous round's row,
        from the cumulative counters its Status heartbeats report (so up to one heartbeat behind)."""
        out = {}
        for device_id in self.registry.online_ids():
            sent, received = self.registry.wire_bytes(device_id)
            if not sent and not received:  # no report yet (e.g. since a coordinator restart): keep the mark
                continue
            mark_sent, mark_received = ex.wire_marks.get(device_id, (0, 0))
            if sent < mark_sent or received < mark_received:  # the agent restarted: its counters began again
                mark_sent, mark_received = 0, 0
            up, down = sent - mark_sent, received - mark_received
            ex.wire_marks[device_id] = (sent, received)
            if up or down:
                out[device_id] = {"up": up, "down": down}
                ex.wire_upload_bytes += up
                ex.wire_download_bytes += down
        return dict(sorted(out.items()))

    def _stop_active(self, run_id: str) -> None:
        ex = self._execution
        if ex is None or ex.run_id != run_id:  # it completed or failed before the stop reached the loop
            log.info("run %s ended before the stop request was handled; nothing to stop", run_id)
            return
        abort = Abort(run_id, ex.server_round + 1, "stopped by operator")
        self._publish(topics.control(run_id), self._sign(abort), topics.QOS_CONTROL)
        self._finish(run_id, "stopped", "stopped by operator")

    def _fail_active(self, reason: str) -> None:
        with self._lock:
            active = self._active_id
        if active is not None:
            self._finish(active, "failed", reason)

    def _finish(self, run_id: str, status: str, error: str | None = None) -> None:
        ex = self._execution
        if ex is not None and ex.run_id == run_id:
            if ex.collector is not None:
                self._clear_round_model(ex, ex.collector.server_round)
            self.store.set_run_counters(run_id, ex.counters)
            self._finished_accepted[run_id] = ex.accepted_by_round
            while len(self._finished_accepted) > 4:
                self._finished_accepted.pop(next(iter(self._finished_accepted)))
            self._execution = None
        self._set_status(run_id, status, error)
        self.checkpoints.clear_open_round(run_id)
        with self._lock:
            if self._active_id == run_id:
                self._active_id = None
        log.info("run %s %s%s", run_id, status, f": {error}" if error else "")

    def _set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record a run's new status and publish it as a ``status`` event; a completed, stopped or failed run
        keeps its status (a stop racing the last round never rewrites a completed run)."""
        current = self.store.get_run(run_id).status
        if current in TERMINAL_STATUSES and status != current:
            log.warning("run %s is %s already; not marking it %s", run_id, current, status)
            return
        self.store.set_run_status(run_id, status, error)
        self.events.publish(run_id, "status", {"status": status, "error": error})
        with self._status_changed:
            self._status_changes += 1
            self._status_changed.notify_all()

    # --- publishing -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _sign(self, msg: Message) -> bytes:
        """Encode one outgoing message, Ed25519-signed, with the next coordinator seq."""
        return encode_message(msg, self.signer, seq=self._next_seq())

    def _publish(self, topic: str, data: bytes, qos: int) -> None:
        self._count_publish(topic, self.link.publish(topic, data, qos=qos))

    def _count_publish(self, topic: str, result: PublishResult) -> None:
        if not result.ok:
            self.counters["publishes_queued_offline"] += 1
            log.warning("publish on %s is queued (%s); sent when the broker is back", topic, result.detail)
