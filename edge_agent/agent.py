"""The edge agent's main loop: register, heartbeat, and turn each task into one published update.

Threads: paho's network thread (callbacks enqueue :mod:`edge_agent.mqtt_adapter` events), this
main loop (the only code that changes agent state), and one daemon thread per training job
(posts :class:`TrainingDone` back to the same queue). So a long training never stops heartbeats,
acks or reconnects.

Per round (the message-flow contract in ``docs/agent.md``): a ``Task`` selecting this device and
the ``ModelBroadcast`` of its ``model_round`` may arrive in either order; once both are here and
the (run, round) has not been handled before, training starts (a repeated task is handled once).
Model delivery: a Task that selects this device makes it subscribe to that round's retained model
chunk topics (``topics.model_filter``); it unsubscribes once the model is whole. Unselected devices
never receive model bytes. Tasks arrive on this device's inbox, one per round listing only this
device (topic layout revision 3; also the re-send to a device that registered again mid-round), or
on the run's task topic, which the agent still subscribes to for revision-2 coordinators (one Task
listing every selected id).

Deadlines are relative: the time left is the Task's ``deadline_unix`` minus its envelope
timestamp (both on the coordinator's clock), counted from receipt on this device's monotonic
clock, so a device clock that is wrong by minutes does not matter; the coordinator enforces the
absolute deadline.

The update (echoing the task's nonce, signed with ``--key-file``) is published once, chunked when
larger than ``--max-packet``, as QoS 1. It is re-published in full only when its delivery is in
doubt: a publish that paho refused (not connected), a reconnect on which the broker did not keep
the session, a repeated Task for its round (a retried round, a restarted coordinator; when this process
already published the update, only if no Ack came within ``REPEATED_TASK_ACK_WAIT_S``), or an agent
restart (with ``--state-dir`` the update is kept on disk until answered). Never on a timer while
the connection is up: paho itself re-sends un-acknowledged QoS 1 chunks on reconnect. Every
publish is encoded afresh with the next seq, because the coordinator drops any message whose seq
is not above the last it accepted. A negative Ack (the coordinator rejected the update, e.g.
``non_finite: ...``) also ends it; its reason is logged and counted (``updates_rejected``).
Anything malformed, oversized, unsigned by the coordinator (see
:mod:`edge_agent.coordinator_verifier`), replayed or on the wrong topic is logged, counted in
:attr:`EdgeAgent.stats`, and dropped.

Sequence numbers: one counter per agent process, started from the clock in microseconds (so a
restarted agent continues above what it sent before) and shared by the main loop and the MQTT
thread, which composes the last will ``Status(offline)`` before each connection attempt; the
Register sent on that connection announces the will's seq (``Register.will_seq``) so the
coordinator accepts that will even though later messages have higher seqs.
"""

from __future__ import annotations

import logging
import platform
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.capabilities import detect_capabilities
from edge_agent.config import AgentSettings, kernel_thresholds_warnings
from edge_agent.coordinator_verifier import REPLAYED, CoordinatorVerifier
from edge_agent.data import LocalData
from edge_agent.local_training import TrainingError, classify_failure, load_training_modules, train_on_task
from edge_agent.model_snapshot import ModelSnapshotWriter
from edge_agent.mqtt_adapter import DeviceLink, Inbound, LinkDown, LinkRefused, LinkUp, PublishRefused
from edge_agent.pending_updates import PendingUpdateStore, StoredUpdate
from edge_agent.thread_usage import ThreadUsage, read_thread_usage
from feddst_core import native
from feddst_core.sparse import default_thresholds, describe_thresholds
from protocol import (
    Abort,
    Ack,
    AuthenticationError,
    Capabilities,
    ChunkReassembler,
    DecodedMessage,
    DeviceError,
    Message,
    ModelBroadcast,
    ProtocolError,
    Register,
    RunCompleted,
    Status,
    Task,
    Update,
    encode_message,
    split_into_chunks,
    topics,
)

log = logging.getLogger("feddst.agent")

RoundKey = tuple[str, int]  # (run id, server round)
MODEL_CACHE_SIZE = 4
HANDLED_MEMORY = 4096
EXIT_OK, EXIT_FAILURE, EXIT_REFUSED = 0, 1, 3
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason: the broker does not speak this MQTT version
# The main loop blocks on its event queue until the next heartbeat or upload resend is due, and wakes at
# least this often for the coarser deadlines (task and upload expiry, CONNACK timeout: seconds). Every
# wake-up costs the training thread a GIL hand-off, which on a CPU shared by many processes costs a
# scheduler slice: a thread waking every 0.2 s slowed 20 one-thread training processes on 2 cores by 7-8 %
# (docs/results.md, "Live path latency").
TICK_MAX_S = 1.0
CONNACK_TIMEOUT_S = 3.0  # --mqtt-protocol auto: an MQTT 5 CONNECT unanswered this long means 3.1.1 only
REPEATED_TASK_ACK_WAIT_S = 2.0
"""A repeated Task for a round whose update this process already published re-sends it only if no Ack came
within this many seconds: the Task the coordinator re-sends when a restarted agent registers crosses the
update that agent re-sends on connecting, and the Ack for that one is on its way."""


@dataclass(frozen=True)
class TrainingDone:
    """Posted by a training thread: the update, or the error that stopped it."""

    task: Task
    update: Update | None
    error: str | None = None
    error_code: str = "training_failed"  # the DeviceError code when update is None
    job_s: float = 0.0  # the training job after load_s: model tensors to torch, training (update.compute_s), packing
    load_s: float = 0.0  # importing torch and the learning core (the first round only; 0 once loaded)
    job_cpu_s: float = 0.0  # the training thread's CPU seconds over job_s (time.thread_time)
    job_usage: ThreadUsage = ThreadUsage()  # the training thread's faults and context switches over job_s


@dataclass
class PendingUpload:
    """An update waiting for its Ack (encoded afresh, with a new seq, at each publish)."""

    topic: str
    update: Update
    deadline: float  # monotonic time after which it is given up
    next_send: float  # monotonic time before which it is not (re-)published
    sends: int = 0
    in_doubt: bool = True  # publish (again) when connected: never sent, or its delivery is in doubt
    pack_s: float = 0.0  # job time outside compute_s (tensor conversion, update packing); 0 when restored
    load_s: float = 0.0  # the round's import of torch and the learning core (TrainingDone.load_s); 0 when restored
    job_cpu_s: float = 0.0  # CPU seconds of the training job (TrainingDone.job_cpu_s); 0 when restored
    job_usage: ThreadUsage = ThreadUsage()  # TrainingDone.job_usage; zeros when restored


@dataclass
class AgentState:
    """Everything the main loop remembers between events (bounded)."""

    models: OrderedDict[RoundKey, ModelBroadcast] = field(default_factory=OrderedDict)
    waiting: dict[RoundKey, Task] = field(default_factory=dict)  # selected, model not here yet
    deadlines: dict[RoundKey, float] = field(default_factory=dict)  # monotonic deadline of each task received
    model_filters: set[RoundKey] = field(default_factory=set)  # (run, model round) model topics subscribed
    ready: list[Task] = field(default_factory=list)  # model here, waiting for the trainer
    handled: OrderedDict[RoundKey, None] = field(default_factory=OrderedDict)  # training started
    uploads: dict[RoundKey, PendingUpload] = field(default_factory=dict)
    aborted: dict[str, int] = field(default_factory=dict)  # run -> first aborted round
    training: Task | None = None


class EdgeAgent:
    """One device's agent. Build it, then call :meth:`run` until ``stop`` is set.

    ``key`` signs this device's messages (its own HMAC key). The coordinator's messages are
    verified with ``settings.coordinator_public_key`` (none: ``insecure_unsigned_coordinator``);
    ``coordinator_verifier`` overrides that (tests). ``clock`` is this device's Unix time (plus
    ``settings.clock_offset_s``), used only for the deadlines of updates kept on disk; deadlines
    and retries run on ``time.monotonic``.
    """

    def __init__(self, settings: AgentSettings, data: LocalData, *, key: bytes | None = None,
                 coordinator_verifier: CoordinatorVerifier | None = None, capabilities: Capabilities | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.data = data
        self.key = key
        self.coordinator = coordinator_verifier or CoordinatorVerifier(settings.coordinator_public_key_bytes)
        self.capabilities = capabilities or detect_capabilities()
        self.clock: Callable[[], float] = (clock if not settings.clock_offset_s else
                                           (lambda: clock() + settings.clock_offset_s))
        self.pending_store = PendingUpdateStore(settings.state_dir) if settings.state_dir else None
        self.device_id = settings.device_id
        self.events: queue.Queue = queue.Queue()
        self.state = AgentState()
        self.stats: Counter[str] = Counter()
        self._seq = time.time_ns() // 1000  # microseconds: increases across restarts too
        self._seq_lock = threading.Lock()  # the MQTT thread composes the will, the main loop everything else
        self._will_seq = 0  # seq of the will given to the broker for the current connection
        self._reassembler = ChunkReassembler(timeout_s=120.0, max_pending_bytes=2 * settings.max_message_bytes,
                                             max_message_bytes=settings.max_message_bytes)
        self._next_heartbeat = 0.0
        self._exit_code: int | None = None
        # (run, model round) -> (Unix time the model's last chunk was taken up, seconds to decode and verify it)
        self._model_timing: OrderedDict[RoundKey, tuple[float, float]] = OrderedDict()
        self.link = DeviceLink(settings, self._compose_will, topics.status(self.device_id), self.events)
        self.snapshots = (None if settings.model_onnx_path is None else
                          ModelSnapshotWriter(settings.model_onnx_path, settings.model_onnx_every, data,
                                              settings.dataset))

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event) -> int:
        """Connect and serve until ``stop`` is set (or a fatal refusal); returns the exit code."""
        log.info("device %s: %d local samples (%s), broker %s", self.device_id, len(self.data), self.data.source,
                 self.settings.broker_address.url)
        self._log_coordinator_key()
        self._log_kernel_setup()
        self._load_pending_updates()
        if self.settings.preload_training:
            threading.Thread(target=self._preload_training, daemon=True, name="preload-training").start()
        self.link.start()
        try:
            while not stop.is_set() and self._exit_code is None:
                try:
                    event = self.events.get(timeout=self._wait_s())
                except queue.Empty:
                    event = None
                while event is not None:
                    self._dispatch_guarded(event)
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        event = None
                self._tick()
        finally:
            self._shutdown()
        return EXIT_OK if self._exit_code is None else self._exit_code


    @staticmethod
    def _preload_training() -> None:
        """``--preload-training``: import torch and the learning core now, beside the MQTT link, so that the
        first round does not pay it (a round that starts meanwhile waits for the same import)."""
        try:
            log.info("training modules loaded ahead of the first round in %.2f s", load_training_modules())
        except Exception:  # noqa: BLE001 - the first round will load (and report) again
            log.exception("could not preload the training modules; the first round will try again")

    def _log_coordinator_key(self) -> None:
        if self.coordinator.verifies:
            log.info("coordinator messages must be signed by Ed25519 key %s", self.settings.coordinator_public_key)
            if self.settings.insecure_unsigned_coordinator:
                log.warning("--insecure-unsigned-coordinator is ignored: a coordinator public key is set")
        else:
            log.warning("INSECURE: coordinator messages are not verified (--insecure-unsigned-coordinator): anyone "
                        "who can publish on the broker can send this device tasks, models and aborts; give "
                        "--coordinator-public-key instead")

    def _log_kernel_setup(self) -> None:
        """Which training kernels and which auto-policy table this agent uses, and doubts about the table."""
        if self.settings.kernels != "dense":
            if native.available():
                log.info("training kernels: %s; native CPU kernels %s", self.settings.kernels, native.status())
            else:
                log.warning("training kernels: %s, but the native CPU kernels are unavailable (%s): sparse layers "
                            "fall back to slower torch kernels", self.settings.kernels, native.status())
        thresholds = self.settings.kernel_thresholds_file
        if self.settings.kernels == "auto" and thresholds is None:
            log.info("kernel thresholds: built in (%s): %s", "native kernels" if native.available() else "torch only",
                     describe_thresholds(default_thresholds()))
        elif self.settings.kernels == "auto" and thresholds is not None:
            note = thresholds.measured_on
            log.info("kernel thresholds: %s (measured on %s, %s): %s", thresholds.path, note.get("machine", "?"),
                     note.get("date", "?"), describe_thresholds(thresholds.table))
            for problem in kernel_thresholds_warnings(thresholds, native.available(), platform.machine(),
                                                      self.settings.threads):
                log.warning("--kernel-thresholds: %s; re-run the calibration on this device", problem)
        elif thresholds is not None:
            log.info("--kernel-thresholds %s is unused: it only applies to --kernels auto, not %s", thresholds.path,
                     self.settings.kernels)

    def _dispatch_guarded(self, event: object) -> None:
        try:
            self._dispatch(event)
        except Exception:  # noqa: BLE001 - one bad event must not take the device offline
            self.stats["internal_errors"] += 1
            log.exception("error while handling %s; continuing", type(event).__name__)

    def _dispatch(self, event: object) -> None:
        if isinstance(event, Inbound):
            self._on_packet(event.topic, event.payload)
        elif isinstance(event, TrainingDone):
            self._on_training_done(event)
        elif isinstance(event, LinkUp):
            self._on_link_up(event)
        elif isinstance(event, PublishRefused):
            self.stats["publishes_refused"] += 1
            log.warning("the broker refused a publish on %s (%s): check its ACL for this device", event.topic,
                        event.reason)
        elif isinstance(event, LinkDown):
            self.stats["disconnects"] += 1
            if event.before_connack and self.link.can_fall_back:
                self._fall_back("it closed an MQTT 5 connection without answering")
            else:
                log.warning("broker connection lost or unavailable (%s); reconnecting with backoff", event.reason)
        elif isinstance(event, LinkRefused):
            if event.code == UNSUPPORTED_PROTOCOL and self.link.can_fall_back:
                self._fall_back("it refused MQTT 5")
            elif event.permanent:
                log.error("the broker refused the connection: %s", event.reason)
                self._exit_code = EXIT_REFUSED
            else:
                log.warning("the broker refused the connection (%s); retrying", event.reason)

    def _fall_back(self, why: str) -> None:
        if not self.link.fall_back_to_mqtt311():
            log.info("the broker's MQTT 5 answer arrived as the fall-back was due (%s); staying on MQTT 5", why)
            return
        log.info("the broker does not speak MQTT 5 (%s); reconnecting with MQTT 3.1.1", why)
        self.stats["protocol_fallbacks"] += 1

    def _wait_s(self) -> float:
        """Seconds the main loop may wait for an event: until the next heartbeat or upload (re)send is due
        (while connected: neither happens offline), at most ``TICK_MAX_S``."""
        if not self.link.connected:
            return TICK_MAX_S
        due = min([self._next_heartbeat] + [u.next_send for u in self.state.uploads.values() if u.in_doubt])
        return min(TICK_MAX_S, max(0.0, due - time.monotonic()))

    def _tick(self) -> None:
        if self.link.can_fall_back and self.link.connack_overdue(CONNACK_TIMEOUT_S):
            self._fall_back(f"no answer to an MQTT 5 CONNECT within {CONNACK_TIMEOUT_S:.0f} s")
        now = time.monotonic()
        if self.link.connected and now >= self._next_heartbeat:
            self._publish_status("busy" if self.state.training else "online")
        self._retry_uploads(now)
        self._expire_waiting()
        self._reassembler.expire()

    def _shutdown(self) -> None:
        """Publish a retained offline status (best effort) and disconnect cleanly."""
        info = None
        if self.link.connected:
            info = self.link.publish(topics.status(self.device_id),
                                     self._encode(Status(self.device_id, "offline", "stopped",
                                                         self.link.wire_sent_bytes, self.link.wire_received_bytes)),
                                     topics.QOS_STATUS, retain=topics.RETAIN_STATUS)
        if info is not None:
            try:
                info.wait_for_publish(timeout=3.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("offline status not confirmed: %s", exc)
        self.link.stop()
        log.info("device %s stopped (%s)", self.device_id, dict(self.stats))

    # ------------------------------------------------------------------ connection
    def _on_link_up(self, event: LinkUp) -> None:
        self.stats["connects"] += 1
        log.info("connected to %s (session %s)", self.settings.broker_address.url,
                 "resumed" if event.session_present else "new")
        self.link.subscribe(topics.device_subscriptions(self.device_id, final_model=self.snapshots is not None))
        if self.snapshots is not None:  # --model-onnx-path: this device opted into every round's model
            self.link.subscribe([(topics.all_models_filter(), topics.QOS_MODEL)])
        if self.state.model_filters:  # a broker restarted without persistence forgot them
            self.link.subscribe([(topics.model_filter(run, r), topics.QOS_MODEL)
                                 for run, r in self.state.model_filters])
        self._publish_status("busy" if self.state.training else "online")
        register = Register(self.device_id, self.capabilities, len(self.data), will_seq=self._will_seq)
        self.link.publish(topics.register(self.device_id), self._encode(register), topics.QOS_REGISTER,
                          retain=topics.RETAIN_REGISTER)
        if not event.session_present:  # the broker lost our session (and maybe what it had of the update)
            now = time.monotonic()
            for upload in self.state.uploads.values():
                upload.in_doubt, upload.next_send = True, min(upload.next_send, now)

    def _publish_status(self, state: str) -> None:
        training = self.state.training
        detail = f"training {training.run_id} round {training.server_round}" if training else ""
        status = Status(self.device_id, state, detail, self.link.wire_sent_bytes, self.link.wire_received_bytes)
        self.link.publish(topics.status(self.device_id), self._encode(status), topics.QOS_STATUS,
                          retain=topics.RETAIN_STATUS)
        self._next_heartbeat = time.monotonic() + self.settings.heartbeat_s

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _encode(self, msg: Message) -> bytes:
        return encode_message(msg, self.key, seq=self._next_seq())

    def _compose_will(self) -> bytes:
        """The last will for the next connection attempt (MQTT thread); its seq goes into the Register."""
        seq = self._next_seq()
        self._will_seq = seq
        return encode_message(Status(self.device_id, "offline", "connection lost"), self.key, seq=seq)

    # ------------------------------------------------------------------ inbound
    def _drop(self, reason: str, topic: str, detail: object) -> None:
        self.stats[f"dropped_{reason}"] += 1
        log.warning("dropped a message on %s (%s): %s", topic, reason, detail)

    def _on_packet(self, topic: str, payload: bytes) -> None:
        taken_up = time.time()
        limit = self.settings.max_message_bytes
        if len(payload) > limit:
            self._drop("oversized", topic, f"{len(payload)} bytes > limit {limit}")
            return
        model_round = topics.model_round_of(topic)
        if model_round is not None and not payload:
            self.stats["model_clears_seen"] += 1  # the coordinator removed a closed round's retained chunk
            return
        # the chunks of one model arrive on one topic each: they reassemble together
        source = topic if model_round is None else topics.model(*model_round)
        try:
            whole = self._reassembler.add(payload, source=source)
        except ProtocolError as exc:
            self._drop("malformed", topic, exc)
            return
        if whole is None:
            return
        decode_started = time.perf_counter()
        try:
            decoded = self.coordinator.decode(whole, limit)
        except AuthenticationError as exc:
            self._drop("unauthenticated", topic, f"{exc} (not signed by the coordinator's key)")
            return
        except ProtocolError as exc:
            self._drop("malformed", topic, f"{type(exc).__name__}: {exc}")
            return
        msg = decoded.message
        if topic not in self._allowed_topics(msg) and not (
                isinstance(msg, ModelBroadcast) and model_round == (msg.run_id, msg.server_round)):
            self._drop("wrong_topic", topic, f"{type(msg).__name__} for run {getattr(msg, 'run_id', '')!r}")
            return
        if self.coordinator.is_replay(decoded):
            self._drop(REPLAYED, topic, f"{type(msg).__name__} seq {decoded.envelope.seq} is not above the last one")
            return
        self.stats[f"received_{type(msg).__name__.lower()}"] += 1
        if isinstance(msg, Task):
            self._on_task(msg, decoded)
        elif isinstance(msg, ModelBroadcast):
            self._model_timing[(msg.run_id, msg.server_round)] = (taken_up, time.perf_counter() - decode_started)
            while len(self._model_timing) > MODEL_CACHE_SIZE:
                self._model_timing.popitem(last=False)
            self._on_model(msg)
        elif isinstance(msg, Ack):
            self._on_ack(msg, on_inbox=topic == topics.inbox(self.device_id))
        elif isinstance(msg, Abort):
            self._on_abort(msg)
        elif isinstance(msg, RunCompleted):
            self._on_run_completed(msg)

    def _allowed_topics(self, msg: Message) -> tuple[str, ...]:
        """The topics each message type may arrive on (none for types devices never receive)."""
        if isinstance(msg, Task):
            return (topics.task(msg.run_id), topics.inbox(self.device_id))
        if isinstance(msg, Abort):
            return (topics.control(msg.run_id),)
        if isinstance(msg, RunCompleted) and self.snapshots is not None:
            return (topics.final(msg.run_id),)
        if isinstance(msg, Ack) and msg.device_id == self.device_id:
            return (topics.ack(msg.run_id, self.device_id), topics.inbox(self.device_id))
        return ()

    def _is_aborted(self, run_id: str, server_round: int) -> bool:
        first = self.state.aborted.get(run_id)
        return first is not None and server_round >= first

    def _on_task(self, task: Task, decoded: DecodedMessage) -> None:
        key = (task.run_id, task.server_round)
        if self.device_id not in task.selected:
            self.stats["tasks_not_selected"] += 1
            log.debug("task %s round %d does not select this device", *key)
            return
        if self._is_aborted(*key):
            self.stats["tasks_aborted_run"] += 1
            return
        # the time left, on the coordinator's clock, counted from receipt on ours
        deadline = time.monotonic() + (task.deadline_unix - decoded.envelope.timestamp)
        if key not in self.state.handled and self.link.shaper.daily_cap_reached():
            self.stats["tasks_declined_daily_cap"] += 1
            log.warning("task %s round %d declined: today's upload cap (%.1f MB) is used up", *key,
                        self.settings.daily_upload_cap_mb)
            self._report_error(task, "upload_cap_reached", f"today's upload cap of "
                               f"{self.settings.daily_upload_cap_mb:g} MB is used up (resets at 00:00 UTC)")
            return
        if key in self.state.handled or key in self.state.waiting or key in self.state.uploads:
            self.stats["tasks_repeated"] += 1
            self.state.deadlines[key] = max(deadline, self.state.deadlines.get(key, deadline))
            upload = self.state.uploads.get(key)
            if upload is not None:  # a retried round or a restarted coordinator: its delivery is in doubt
                upload.deadline = max(upload.deadline, deadline)
                now = time.monotonic()  # already published by this process: its Ack may be on the way
                upload.in_doubt = True
                upload.next_send = max(upload.next_send, now + REPEATED_TASK_ACK_WAIT_S) if upload.sends else now
                self._save_pending(key, upload)
            log.info("task %s round %d already handled; not training again", *key)
            return
        if deadline < time.monotonic():
            self.stats["tasks_stale"] += 1
            log.warning("task %s round %d arrived after its deadline; skipped", *key)
            return
        self.state.deadlines[key] = deadline
        while len(self.state.deadlines) > HANDLED_MEMORY:
            self.state.deadlines.pop(next(iter(self.state.deadlines)))
        log.info("selected for %s round %d (model round %d)", task.run_id, task.server_round, task.model_round)
        model_key = (task.run_id, task.model_round)
        if model_key in self.state.models:
            self._make_ready(task)
        else:
            self.state.waiting[key] = task
            if model_key not in self.state.model_filters:
                self.state.model_filters.add(model_key)
                if self.link.connected:
                    self.link.subscribe([(topics.model_filter(*model_key), topics.QOS_MODEL)])

    def _on_model(self, model: ModelBroadcast) -> None:
        key = (model.run_id, model.server_round)
        if self._is_aborted(*key):
            return
        if key in self.state.model_filters:
            self.state.model_filters.discard(key)
            if self.link.connected:
                self.link.unsubscribe([topics.model_filter(*key)])
        if self.snapshots is not None and self.snapshots.due(model):
            self.stats["model_onnx_written" if self.snapshots.write(model) else "model_onnx_failed"] += 1
        models = self.state.models
        models[key] = model
        models.move_to_end(key)
        while len(models) > MODEL_CACHE_SIZE:
            models.popitem(last=False)
        for round_key, task in list(self.state.waiting.items()):
            if (task.run_id, task.model_round) == key:
                del self.state.waiting[round_key]
                self._make_ready(task)

    def _on_run_completed(self, done: RunCompleted) -> None:
        """The run's final model: written as model.onnx (only agents keeping one subscribe to it)."""
        log.info("run %s completed after %d rounds", done.run_id, done.server_round)
        if self.snapshots is not None and self.snapshots.due(done):
            self.stats["model_onnx_written" if self.snapshots.write(done) else "model_onnx_failed"] += 1

    def _on_ack(self, ack: Ack, on_inbox: bool) -> None:
        if on_inbox:
            log.info("registration acknowledged by the coordinator: %s", ack.detail or "ok")
            return
        upload = self.state.uploads.pop((ack.run_id, ack.server_round), None)
        if self.pending_store is not None:
            self.pending_store.remove(ack.run_id, ack.server_round)
        if upload is None:
            self.stats["acks_unmatched"] += 1
            return
        self.stats["updates_acked"] += 1  # answered either way: it is not re-sent
        if ack.ok:
            log.info("update for %s round %d acknowledged", ack.run_id, ack.server_round)
        else:
            self.stats["updates_rejected"] += 1
            log.warning("update for %s round %d rejected by the coordinator (not re-sent): %s", ack.run_id,
                        ack.server_round, ack.detail or "no reason given")

    def _on_abort(self, abort: Abort) -> None:
        run, first = abort.run_id, abort.server_round
        self.state.aborted[run] = min(first, self.state.aborted.get(run, first))
        log.warning("run %s aborted from round %d: %s", run, first, abort.reason)
        st = self.state
        st.waiting = {k: t for k, t in st.waiting.items() if not (k[0] == run and k[1] >= first)}
        st.ready = [t for t in st.ready if not (t.run_id == run and t.server_round >= first)]
        for key in [k for k in st.uploads if k[0] == run and k[1] >= first]:
            del st.uploads[key]
            if self.pending_store is not None:
                self.pending_store.remove(*key)
        for key in [k for k in st.models if k[0] == run]:
            del st.models[key]

    # ------------------------------------------------------------------ training
    def _make_ready(self, task: Task) -> None:
        key = (task.run_id, task.server_round)
        self.state.handled[key] = None
        while len(self.state.handled) > HANDLED_MEMORY:
            self.state.handled.popitem(last=False)
        self.state.ready.append(task)
        self._start_next_training()

    def _start_next_training(self) -> None:
        if self.state.training is not None or not self.state.ready:
            return
        task = self.state.ready.pop(0)
        model = self.state.models.get((task.run_id, task.model_round))
        if model is None:  # evicted meanwhile: wait for it again
            self.state.handled.pop((task.run_id, task.server_round), None)
            self.state.waiting[(task.run_id, task.server_round)] = task
            self._start_next_training()
            return
        self.state.training = task
        self._publish_status("busy")
        thread = threading.Thread(target=self._train, args=(task, model), daemon=True,
                                  name=f"train-{task.run_id}-{task.server_round}")
        thread.start()

    def _train(self, task: Task, model: ModelBroadcast) -> None:
        """Training thread: never touches agent state, only posts the outcome."""
        try:
            load_s = load_training_modules()
            started, cpu_started, usage_started = time.perf_counter(), time.thread_time(), read_thread_usage()
            update = train_on_task(task, model, self.data, self.device_id, self.settings.client_index,
                                   self.settings.kernels, self.settings.kernel_threshold_table)
            job_cpu_s, job_usage = time.thread_time() - cpu_started, read_thread_usage() - usage_started
            if self.settings.compute_factor > 1:  # trials: emulate a slower device
                time.sleep(update.compute_s * (self.settings.compute_factor - 1))
            self.events.put(TrainingDone(task, update, job_s=time.perf_counter() - started, load_s=load_s,
                                         job_cpu_s=job_cpu_s, job_usage=job_usage))
        except Exception as exc:  # noqa: BLE001 - a failed round must not kill the agent
            if not isinstance(exc, TrainingError):
                log.exception("training crashed")
            code, detail = classify_failure(exc)
            self.events.put(TrainingDone(task, None, detail, code))

    def _on_training_done(self, done: TrainingDone) -> None:
        task = done.task
        self.state.training = None
        self._publish_status("online")
        key = (task.run_id, task.server_round)
        if done.update is None:
            self.stats["training_failed"] += 1
            log.error("cannot train %s round %d (%s): %s; reporting it to the coordinator", *key, done.error_code,
                      done.error)
            self._report_error(task, done.error_code, done.error or "")
        elif self._is_aborted(*key):
            log.info("run %s was aborted during training; update discarded", task.run_id)
        else:
            self.stats["trained"] += 1
            update = done.update
            log.info("trained %s round %d: %d samples, loss %.4f, %.2f s", *key, update.sample_count,
                     update.train_loss, update.compute_s)
            now = time.monotonic()
            upload = PendingUpload(topics.update(task.run_id, self.device_id), update,
                                   self.state.deadlines.get(key, now), next_send=now,
                                   pack_s=max(0.0, done.job_s - update.compute_s), load_s=done.load_s,
                                   job_cpu_s=done.job_cpu_s, job_usage=done.job_usage)
            self.state.uploads[key] = upload
            self._save_pending(key, upload)
            self._retry_uploads(now)
        self._start_next_training()

    def _report_error(self, task: Task, code: str, detail: str) -> None:
        """Publish a DeviceError for the task (QoS 1, once) unless the run was aborted meanwhile."""
        if self._is_aborted(task.run_id, task.server_round) or not self.link.connected:
            return
        report = DeviceError(task.run_id, task.server_round, self.device_id, code, detail)
        packets = split_into_chunks(self._encode(report), self.settings.max_packet)
        if self.link.publish_all(topics.update(task.run_id, self.device_id), packets, topics.QOS_UPDATE) is not None:
            self.stats["errors_reported"] += 1

    def _retry_uploads(self, now: float) -> None:
        for key, upload in list(self.state.uploads.items()):
            if now > upload.deadline:
                del self.state.uploads[key]
                if self.pending_store is not None:
                    self.pending_store.remove(*key)
                self.stats["updates_unacked"] += 1
                log.warning("no ack for %s round %d before the deadline; giving up", *key)
                continue
            if not upload.in_doubt or now < upload.next_send or not self.link.connected:
                continue
            encode_started = time.perf_counter()
            packets = split_into_chunks(encode_message(upload.update, self.key, seq=self._next_seq(),
                                                       value_format=self.settings.upload_format),
                                        self.settings.max_packet)
            encode_s = time.perf_counter() - encode_started
            published_at = time.time()
            if self.link.publish_all(upload.topic, packets, topics.QOS_UPDATE) is None:
                upload.next_send = now + 1.0  # refused part-way: the whole message again, never a prefix
                continue
            if upload.sends == 0:
                self._log_stage_timing(key, upload, encode_s, published_at)
            upload.sends += 1
            upload.in_doubt = False
            self.stats["update_publishes"] += 1
            if upload.sends > 1:
                self.stats["update_resends"] += 1
                log.info("re-sent the update for %s round %d (attempt %d)", *key, upload.sends)

    def _log_stage_timing(self, key: RoundKey, upload: PendingUpload, encode_s: float, published_at: float) -> None:
        """One INFO line per trained round with this device's stage times (``bench/live_overhead.py`` reads it).

        Times ``*_at`` are Unix seconds on this device's clock (no ``--clock-offset-s``), durations seconds:
        ``model_at`` the model's last chunk taken up by the main loop, ``decode`` envelope + signature + tensor
        decode of the model, ``train`` the update's ``compute_s``, ``encode`` packing (``pack_s``) plus envelope,
        HMAC and chunking of the first publish, ``published_at`` when the update was handed to the MQTT client,
        ``load`` the import of torch and the learning core before training (first round only, unless
        ``--preload-training`` did it at start-up), ``train_cpu`` the training thread's CPU seconds over the job
        (model tensors, training, update packing): against ``train``'s wall time, how long it waited for a core;
        ``train_faults`` / ``train_vcsw`` / ``train_ivcsw`` that thread's minor page faults and voluntary /
        involuntary context switches over the same job (``edge_agent.thread_usage``; 0 when restored)."""
        timing = self._model_timing.get(key)  # the coordinator's Task names its own round as the model round
        model_at, decode_s = timing if timing is not None else (float("nan"), float("nan"))
        log.info("stage timing %s round %d: model_at=%.6f decode=%.6f train=%.6f encode=%.6f published_at=%.6f "
                 "load=%.6f train_cpu=%.6f train_faults=%d train_vcsw=%d train_ivcsw=%d", *key, model_at, decode_s,
                 upload.update.compute_s, upload.pack_s + encode_s, published_at, upload.load_s, upload.job_cpu_s,
                 upload.job_usage.minor_faults, upload.job_usage.voluntary_switches,
                 upload.job_usage.involuntary_switches)

    def _save_pending(self, key: RoundKey, upload: PendingUpload) -> None:
        """Keep the update on disk (``--state-dir``) with its deadline on this device's wall clock."""
        if self.pending_store is None:
            return
        deadline_wall = self.clock() + (upload.deadline - time.monotonic())
        try:
            self.pending_store.save(StoredUpdate(upload.topic, upload.update, deadline_wall))
        except OSError as exc:
            self.stats["pending_save_failed"] += 1
            log.warning("cannot keep the update for %s round %d on disk: %s", *key, exc)

    def _load_pending_updates(self) -> None:
        """Updates a previous run of this agent left unacknowledged: re-sent on the first connection."""
        if self.pending_store is None:
            return
        now_wall, now = self.clock(), time.monotonic()
        for stored in self.pending_store.load():
            update = stored.update
            key = (update.run_id, update.server_round)
            if stored.deadline_wall <= now_wall:
                self.pending_store.remove(*key)
                continue
            self.state.handled[key] = None  # never trained again
            self.state.uploads[key] = PendingUpload(stored.topic, update, now + stored.deadline_wall - now_wall,
                                                    next_send=now)
            self.stats["updates_restored"] += 1
            log.info("restored the unacknowledged update for %s round %d from %s", *key,
                     self.pending_store.directory)

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for key, task in list(self.state.waiting.items()):
            if now > self.state.deadlines.get(key, now):
                del self.state.waiting[key]
                self.stats["tasks_expired_without_model"] += 1
                log.warning("the model for %s round %d never arrived before the deadline", *key)
                model_key = (task.run_id, task.model_round)
                if model_key in self.state.model_filters and not any(
                        (t.run_id, t.model_round) == model_key for t in self.state.waiting.values()):
                    self.state.model_filters.discard(model_key)
                    if self.link.connected:
                        self.link.unsubscribe([topics.model_filter(*model_key)])
