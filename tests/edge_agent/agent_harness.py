"""Test harness for the edge agent: a protocol-level fake coordinator and in-thread / subprocess agents.

The fake coordinator is a real paho client talking to a real mosquitto, speaking the wire protocol
directly (no ``cloud`` code), so these tests pin down the agent's side of the message flow. It signs
what it sends with a test Ed25519 key, whose public half every agent built here is given (agents
refuse unsigned coordinator messages by default).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentSettings
from edge_agent.data import LocalData, load_local_data
from feddst_core.models import get_model_spec
from feddst_core.strategies import FedStrategy, StrategyConfig
from feddst_core.wire_format import model_broadcast
from protocol import (
    ChunkReassembler,
    DecodedMessage,
    Message,
    ModelBroadcast,
    ProtocolError,
    Task,
    decode_message_with_envelope,
    encode_message,
    split_into_chunks,
    topics,
)
from protocol.ed25519 import Ed25519Signer

REPO = Path(__file__).resolve().parents[2]
RUN = "run-a"
SPEC = get_model_spec("digits_cnn")


def global_model(seed: int = 0):  # type: ignore[no-untyped-def]
    state = FedStrategy(SPEC, StrategyConfig(algorithm="feddst", sparsity=0.8, clients_per_round=2)).initialize(seed)
    return state.params, state.masks


def make_task(server_round: int = 1, selected: tuple[str, ...] = ("dev-003",), run: str = RUN, readjust: bool = False,
              deadline_s: float = 30.0, seed: int = 7, task_nonce: int | None = None) -> Task:
    return Task(run_id=run, server_round=server_round, selected=selected, model_round=server_round,
                local_epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.001, prox_mu=0.0,
                readjust=readjust, alpha=0.05 if readjust else 0.0, deadline_unix=time.time() + deadline_s,
                seed=seed, model_name="digits_cnn",
                task_nonce=(0x5EED0000 + server_round) if task_nonce is None else task_nonce)


def send_round(coordinator: FakeCoordinator, task: Task, params, masks, model_first: bool = True,  # type: ignore[no-untyped-def]
               max_packet: int = 4096) -> None:
    broadcast = model_broadcast(task.run_id, task.model_round, params, masks)
    if model_first:
        coordinator.send_model(broadcast, max_packet)
        coordinator.send(task, topics.task(task.run_id))
    else:
        coordinator.send(task, topics.task(task.run_id))
        coordinator.send_model(broadcast, max_packet)


def is_update_for(server_round: int, device: str = "dev-003"):  # type: ignore[no-untyped-def]
    return lambda r: r.message.server_round == server_round and r.message.device_id == device

DEVICE_KEY = bytes(range(32))
COORDINATOR_SIGNER = Ed25519Signer(bytes(range(100, 132)))
COORDINATOR_PUBLIC_KEY = COORDINATOR_SIGNER.public_key_hex
KEYED = {"coordinator_public_key": COORDINATOR_PUBLIC_KEY}
"""Agent settings that verify the fake coordinator's signature (``AgentSettings(**KEYED, ...)``)."""


@dataclass(frozen=True)
class Received:
    topic: str
    message: Message
    decoded: DecodedMessage
    raw: bytes


class FakeCoordinator:
    """Subscribes like the coordinator, decodes everything, publishes whatever a test needs."""

    def __init__(self, port: int, *, username: str = "coordinator", password: str | None = None,
                 device_keys: dict[str, bytes] | None = None, key: object = COORDINATOR_SIGNER,
                 protocol: int = mqtt.MQTTv5) -> None:
        self.device_keys = device_keys
        self.key = key
        self.received: queue.Queue[Received] = queue.Queue()
        self.errors: list[Exception] = []
        self._reassembler = ChunkReassembler()
        self._seq = 0
        self._retained: set[str] = set()  # model chunk topics this fake left retained (cleared on close)
        self._connected = threading.Event()
        self.connections = 0  # successful connects (and subscribes) so far
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fake-{username}-{id(self)}",
                             protocol=protocol)
        client.username_pw_set(username, password)
        client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = lambda *args: self._connected.clear()
        self.client = client
        client.connect("127.0.0.1", port)
        client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("fake coordinator could not connect")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: mqtt.ReasonCode,
                    properties: object) -> None:
        if not reason_code.is_failure:
            client.subscribe(topics.coordinator_subscriptions())

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: object,
                      properties: object) -> None:
        self.connections += 1  # connected and subscribed (SUBACK received)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            whole = self._reassembler.add(payload, source=message.topic)
            if whole is None:
                return
            decoded = decode_message_with_envelope(whole, self.device_keys)
        except ProtocolError as exc:
            self.errors.append(exc)
            return
        self.received.put(Received(message.topic, decoded.message, decoded, whole))

    def wait_connected(self, more_than: int = 0, timeout: float = 20.0) -> None:
        """Wait until connected more than ``more_than`` times (pass the count taken before a restart)."""
        if not wait_until(lambda: self.connections > more_than and self._connected.is_set(), timeout):
            raise TimeoutError("fake coordinator did not reconnect")

    def drain(self) -> None:
        while not self.received.empty():
            self.received.get_nowait()

    def expect(self, kind: type, where: Callable[[Received], bool] = lambda r: True,
               timeout: float = 20.0) -> Received:
        """Consume received messages until one of ``kind`` matching ``where`` arrives."""
        return self.received_until(kind, where, timeout)[-1]

    def received_until(self, kind: type, where: Callable[[Received], bool] = lambda r: True,
                       timeout: float = 20.0) -> list[Received]:
        """Every message received up to and including the first of ``kind`` matching ``where`` (what
        a test needs to show that something published earlier by the same client never arrived)."""
        deadline = time.monotonic() + timeout
        seen: list[Received] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind.__name__} within {timeout} s")
            try:
                got = self.received.get(timeout=remaining)
            except queue.Empty:
                continue
            seen.append(got)
            if isinstance(got.message, kind) and where(got):
                return seen

    def collect(self, seconds: float) -> list[Received]:
        """Everything received in the next ``seconds``."""
        out: list[Received] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                out.append(self.received.get(timeout=remaining))
            except queue.Empty:
                break
        return out

    def publish_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        info.wait_for_publish(10)

    def send(self, msg: Message, topic: str, max_packet: int = 128 * 1024) -> bytes:
        self._seq += 1
        data = encode_message(msg, self.key, seq=self._seq)  # type: ignore[arg-type]
        for packet in split_into_chunks(data, max_packet):
            self.publish_raw(topic, packet)
        return data

    def send_model(self, broadcast: ModelBroadcast, max_packet: int = 128 * 1024) -> bytes:
        """Publish a ModelBroadcast as the coordinator does: chunk i retained on ``topics.model_chunk(...)``."""
        self._seq += 1
        data = encode_message(broadcast, self.key, seq=self._seq)  # type: ignore[arg-type]
        for index, packet in enumerate(split_into_chunks(data, max_packet)):
            topic = topics.model_chunk(broadcast.run_id, broadcast.server_round, index)
            self.publish_raw(topic, packet, retain=True)
            self._retained.add(topic)
        return data

    def close(self) -> None:
        for topic in self._retained:  # a broker shared with later tests must not keep this test's models
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def agent_settings(broker_url: str, device_id: str = "dev-003", **overrides: object) -> AgentSettings:
    values: dict[str, object] = {**KEYED, "device_id": device_id, "broker_url": broker_url, "partition": "3/8",
                                 "heartbeat_s": 0.5, "ack_timeout_s": 0.5, "reconnect_min_s": 0.2,
                                 "reconnect_max_s": 1.0, "keepalive_s": 5}
    values.update(overrides)
    return AgentSettings(**values)  # type: ignore[arg-type]


class AgentThread:
    """An ``EdgeAgent`` running in a thread of the test process."""

    def __init__(self, settings: AgentSettings, *, data: LocalData | None = None,
                 key: bytes | None = DEVICE_KEY) -> None:
        self.settings = settings
        self.agent = EdgeAgent(settings, data if data is not None else load_local_data(settings), key=key)
        self.stop_event = threading.Event()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"agent-{settings.device_id}")
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.agent.run(self.stop_event)

    def wait_exit(self, timeout: float = 15.0) -> int | None:
        self.thread.join(timeout)
        return self.exit_code

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(15)


def agent_command(*args: str) -> list[str]:
    """``feddst agent run ARGS`` given the fake coordinator's public key (unless ARGS name another or none)."""
    keyed = any(a.startswith(("--coordinator-public-key", "--insecure")) for a in args)
    extra = () if keyed else ("--coordinator-public-key", COORDINATOR_PUBLIC_KEY)
    return [sys.executable, "-m", "feddst_cli.main", "agent", "run", *args, *extra]


def start_agent_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(agent_command(*args), cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
