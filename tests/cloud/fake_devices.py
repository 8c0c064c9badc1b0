"""Protocol-level fake devices for coordinator tests: real MQTT (paho, MQTT 3.1.1), real codec.

A :class:`FakeDevice` follows the agent side of the contract (status + will, register, task and
model in either order (subscribing to a round's retained model topics when a Task selects it),
one update per (run, round), re-send until acked) and can misbehave on
purpose: send every update twice, go silent, also send an update for an older round, or rewrite
its updates (``tamper``: poisoning attacks), or report a ``DeviceError`` for every task
(``fails_with``). With
``data`` it trains exactly like an agent (``LocalTrainer`` K=1, ``client_seed(task.seed, r,
index)``); without, it returns the global model unchanged (no training: fast).

Like an agent, it numbers its messages from the clock (microseconds, so a device re-created with
the same id continues above the coordinator's persisted seq), announces its will's seq in its
Register, and echoes each task's nonce. With ``coordinator_key`` (a verifier, e.g. the coordinator's
Ed25519 public key) it drops coordinator messages that do not verify.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from feddst_core.models import get_model_spec
from feddst_core.training import ClientData, LocalTrainer, TrainConfig, client_seed
from feddst_core.wire_format import model_from_tensors, update_message
from protocol import (
    Ack,
    Capabilities,
    ChunkReassembler,
    DeviceError,
    ModelBroadcast,
    ProtocolError,
    Register,
    Status,
    Task,
    Update,
    decode_message,
    encode_message,
    split_into_chunks,
    topics,
)


@dataclass
class FakeDevice:
    device_id: str
    port: int
    index: int = 0
    data: ClientData | None = None
    duplicate: bool = False  # publish every update twice (different seq, same content)
    coordinator_key: object = None  # verifier of the coordinator's messages (None: not checked)
    key: bytes | None = None  # this device's HMAC key (None: unauthenticated messages)
    silent: bool = False  # receive tasks but never reply
    stale_too: bool = False  # after each update also re-send the previous round's update
    delay_s: float = 0.0  # hold each update this long before sending it (a slow device)
    resend_on_repeated_task: bool = False  # like the agent: a repeated Task for a round it answered puts the
    # update's delivery in doubt (a retried round, a restarted coordinator): send it again (new seq)
    heartbeat_s: float = 1.0
    sample_count: int = 10
    password: str | None = None  # MQTT password (enrolled devices)
    tamper: Callable[[Update, ModelBroadcast], Update] | None = None  # rewrite each update before sending (attacks)
    fails_with: tuple[str, str] | None = None  # (code, detail): report a DeviceError for each task instead
    acks: list[Ack] = field(default_factory=list)
    handled: set = field(default_factory=set)
    sent_sizes: dict = field(default_factory=dict)  # (run, round) -> bytes of the update sent
    training_failures: int = 0
    models_received: int = 0  # ModelBroadcasts reassembled (only rounds this device is selected in)

    def __post_init__(self) -> None:
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._models: dict[tuple[str, int], ModelBroadcast] = {}
        self._tasks: list[Task] = []
        self._pending: dict[tuple[str, int], tuple[bytes, float]] = {}  # (run, round) -> (data, deadline)
        self._last_update: object = None
        self._updates: dict[tuple[str, int], object] = {}  # (run, round) -> the update made for it
        self.resends = 0  # updates sent again for a repeated Task
        self.tasks_seen: list[Task] = []  # every Task that selected this device, repeats included
        self._seq = time.time_ns() // 1000
        self._seq_lock = threading.Lock()  # the network thread (on_connect) and the worker both encode
        self._reassembler = ChunkReassembler()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.username_pw_set(self.device_id, self.password)
        self.client.will_set(topics.status(self.device_id), self._encode(Status(self.device_id, "offline")),
                             qos=1, retain=True)
        self.will_seq = self._seq
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self._events.put((m.topic, m.payload))

    def _encode(self, msg: object) -> bytes:
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        return encode_message(msg, self.key, seq=seq)  # type: ignore[arg-type]

    def _publish(self, topic: str, data: bytes, retain: bool = False) -> None:
        for packet in split_into_chunks(data):
            info = self.client.publish(topic, packet, qos=1, retain=retain)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN, info.rc

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        client.subscribe(topics.device_subscriptions(self.device_id))
        self._publish(topics.status(self.device_id), self._encode(Status(self.device_id, "online")), retain=True)
        caps = Capabilities("x86_64", 1, 1024, {"numpy": "test"})
        self._publish(topics.register(self.device_id), self._encode(Register(self.device_id, caps,
                                                                                self.sample_count, self.will_seq)))

    def start(self) -> FakeDevice:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Clean shutdown: publish offline, disconnect."""
        self._stop.set()
        self._thread.join(5)
        self._publish(topics.status(self.device_id), self._encode(Status(self.device_id, "offline")), retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def crash(self) -> None:
        """Vanish without a goodbye: the broker publishes the last will (offline)."""
        self._stop.set()
        self._thread.join(5)
        self.client.loop_stop()
        if self.client.socket() is not None:
            self.client.socket().close()

    # --- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            now = time.time()
            if now - last_beat > self.heartbeat_s:
                self._publish(topics.status(self.device_id), self._encode(Status(self.device_id, "online")),
                              retain=True)
                last_beat = now
            try:
                topic, payload = self._events.get(timeout=0.05)
                self._on_packet(topic, payload)
            except queue.Empty:
                pass
            self._work()

    def _on_packet(self, topic: str, payload: bytes) -> None:
        model_round = topics.model_round_of(topic)
        if model_round is not None and not payload:
            return  # a closed round's retained chunk being cleared
        try:
            whole = self._reassembler.add(payload, source=topic if model_round is None else topics.model(*model_round))
            if whole is None:
                return
            msg = decode_message(whole, self.coordinator_key)  # type: ignore[arg-type]
        except ProtocolError:
            return
        if isinstance(msg, Task) and self.device_id in msg.selected:
            self.tasks_seen.append(msg)
            done = self._updates.get((msg.run_id, msg.server_round))
            if done is not None and self.resend_on_repeated_task:
                self.resends += 1
                self._publish(topics.update(msg.run_id, self.device_id), self._encode(done))
            elif (msg.run_id, msg.server_round) not in self.handled:
                self.handled.add((msg.run_id, msg.server_round))
                self._tasks.append(msg)
                if (msg.run_id, msg.model_round) not in self._models:  # selected: fetch the round's model
                    self.client.subscribe(topics.model_filter(msg.run_id, msg.model_round), qos=1)
        elif isinstance(msg, ModelBroadcast):
            self._models[(msg.run_id, msg.server_round)] = msg
            self.models_received += 1
            self.client.unsubscribe(topics.model_filter(msg.run_id, msg.server_round))
        elif isinstance(msg, Ack) and msg.device_id == self.device_id:
            self.acks.append(msg)
            self._pending.pop((msg.run_id, msg.server_round), None)

    def _work(self) -> None:
        for task in list(self._tasks):
            model = self._models.get((task.run_id, task.model_round))
            if model is None:
                continue
            self._tasks.remove(task)
            if self.silent:
                continue
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.fails_with is not None:  # like an agent whose task failed: one report, no update
                report = DeviceError(task.run_id, task.server_round, self.device_id, *self.fails_with)
                self._publish(topics.update(task.run_id, self.device_id), self._encode(report))
                continue
            try:
                update = self._make_update(task, model)
            except Exception:  # noqa: BLE001 - like an agent whose training fails: no update this round
                self.training_failures += 1
                continue
            data = self._encode(update)
            self.sent_sizes[(task.run_id, task.server_round)] = len(data)
            self._publish(topics.update(task.run_id, self.device_id), data)
            if self.duplicate:
                self._publish(topics.update(task.run_id, self.device_id), self._encode(update))
            if self.stale_too and self._last_update is not None:
                self._publish(topics.update(task.run_id, self.device_id), self._encode(self._last_update))
            self._last_update = update
            self._updates[(task.run_id, task.server_round)] = update
            self._pending[(task.run_id, task.server_round)] = (data, task.deadline_unix)
        now = time.time()
        for key, (_data, deadline) in list(self._pending.items()):
            if now > deadline:
                self._pending.pop(key)

    def _make_update(self, task: Task, model: ModelBroadcast) -> object:
        spec = get_model_spec(task.model_name)
        params, masks = model_from_tensors(model.tensors, spec.masked_names())
        if self.data is None:
            new_params, new_masks, n, loss = params, masks, self.sample_count, 0.0
        else:
            cfg = TrainConfig(lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay,
                              batch_size=task.batch_size, local_epochs=task.local_epochs, prox_mu=task.prox_mu)
            outcome = LocalTrainer(spec, cfg).train(
                params, masks, [self.data], [client_seed(task.seed, task.server_round, self.index)],
                task.alpha if task.readjust else 0.0)[0]
            new_params, new_masks, n, loss = outcome.params, outcome.masks, outcome.num_samples, outcome.train_loss
        msg = update_message(task.run_id, task.server_round, self.device_id, new_params, masks, new_masks, n, loss,
                             compute_s=0.0)
        msg = dataclasses.replace(msg, task_nonce=task.task_nonce)
        if self.tamper is not None:
            msg = self.tamper(msg, model)
        return msg
