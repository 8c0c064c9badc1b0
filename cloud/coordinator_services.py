"""``CoordinatorServices``: the coordinator's parts and the primitives every stage of it uses.

The parts (store, checkpoints, registry, keyring, MQTT link, signer, replay guard, metrics, run events)
are built here from the settings, with the state the main loop owns (the active run's
:class:`~cloud.run_execution.RunExecution`, counters). The primitives: writing a run's status
(``_set_status``, ``_finish``: a completed, stopped or failed run keeps its status), signing and
publishing a message (``_sign``, ``_publish``: every message is Ed25519-signed with the next
coordinator seq), and which devices a run may select (``_eligible``). The round lifecycle
(:mod:`cloud.round_lifecycle`), the inbound handling (:mod:`cloud.inbound_handling`) and the run
commands (:mod:`cloud.coordinator`) are built on them; all log to the ``cloud.coordinator`` logger.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

from cloud.access_tokens import TokenStore
from cloud.checkpoints import CheckpointStore
from cloud.device_registry import DeviceRegistry, eligible_devices
from cloud.enrollment import DeviceKeyring
from cloud.handoff_queue import HandOffQueue
from cloud.metrics import CoordinatorMetrics
from cloud.mqtt_link import CoordinatorLink, Inbound, PublishResult
from cloud.replay_guard import ReplayGuard
from cloud.run_config import RunConfig
from cloud.run_events import RunEventLog
from cloud.run_execution import RunExecution
from cloud.settings import CloudSettings
from cloud.signing_key import load_or_create_signing_key
from cloud.store import CoordinatorStore
from protocol import Message, encode_message, topics
from protocol.ed25519 import Ed25519Signer

log = logging.getLogger("cloud.coordinator")  # one logger for the whole coordinator (docs/coordinator.md)

STATUS_PAYLOAD_BYTES = "status_payload_bytes"  # run counter: devices' Status (heartbeat) messages, encoded bytes
SHUTDOWN_REASON = "coordinator shut down during the run"
TERMINAL_STATUSES = ("completed", "stopped", "failed")  # never rewritten (a stop racing completion is a no-op)


class CoordinatorServices:
    """The coordinator's parts and shared primitives (see the module docstring); not used on its own."""

    def __init__(self, settings: CloudSettings, store: CoordinatorStore | None = None):
        self.settings = settings
        self.store = store or CoordinatorStore.from_settings(settings)
        self.checkpoints = CheckpointStore(self.store.state_dir)
        left_running = self.store.mark_unfinished_runs_interrupted()
        self.tokens = TokenStore(self.store.state_dir)
        self.registry = DeviceRegistry(self.store, settings.heartbeat_s)
        self.events = RunEventLog()  # recent round/status/device_error events per run (the SSE endpoint)
        self.inbound: HandOffQueue[Inbound] = HandOffQueue(maxsize=256)  # link -> main loop (one consumer)
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
            key_snapshot=self.keyring.verification_key_lookup, tls_files=settings.tls_files(),
            raw_queue_packets=settings.mqtt_receive_queue_packets,
            receive_queue_bytes=settings.mqtt_receive_queue_bytes)
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

    def _interrupt_active(self) -> None:
        with self._lock:
            active = self._active_id
        if active is not None:
            self._set_status(active, "interrupted", SHUTDOWN_REASON)

    def _count(self, reason: str) -> None:
        """Count a rejection coordinator-wide and in the active run's counters."""
        self.counters[reason] += 1
        if self._execution is not None:
            self._execution.counters[reason] += 1

    def _eligible(self, config: RunConfig) -> list[str]:
        """Online, admitted (enrolled, not revoked) devices meeting the run's capability filter."""
        return eligible_devices(self.registry, config.select, self.keyring.snapshot().admits)

    def _clear_round_model(self, ex: RunExecution, server_round: int) -> None:
        """Remove the round's retained model chunks from the broker (the round is over)."""
        if ex.model_chunk_topics:
            self._count_publish(topics.model(ex.run_id, server_round),
                                self.link.clear_model(ex.run_id, server_round, ex.model_chunk_topics))
        ex.model_chunk_topics, ex.task_bytes = 0, {}

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
