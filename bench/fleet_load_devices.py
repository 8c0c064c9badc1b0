"""Fake devices of ``bench/fleet_load.py``: ``python bench/fleet_load_devices.py PORT FIRST COUNT HEARTBEAT_S TRAIN_S``.

``COUNT`` devices ``load-<FIRST>..`` each on its own paho MQTT 3.1.1 connection to ``127.0.0.1:PORT``:
retained ``Status(online)`` + last will ``Status(offline)``, a ``Register``, then a ``Status`` every
``HEARTBEAT_S`` seconds (device ``i`` at phase ``i / COUNT`` of the period, so beats are spread like a real
fleet's). Every ``Task`` that selects one of them (on the device's inbox, one per selected device: topic
layout revision 3; or on the run's task topic from a revision-2 coordinator) is answered once per (run,
round) with an ``Update``
holding the task's global model unchanged, ``TRAIN_S`` seconds after the Task arrived (standing in for
local training; the task's nonce echoed; messages numbered from the clock,
as agents do). One receiver connection per process takes the retained model chunks for every round
and stands in for its selected devices' model download. Prints ``ready`` once all are connected;
when stdin closes, prints one JSON line of counts (``heartbeats``, ``tasks``, ``updates_sent``,
``acks_ok``, ``acks_rejected``) and exits.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt  # noqa: E402

from feddst_core.models import get_model_spec  # noqa: E402
from feddst_core.wire_format import model_from_tensors, update_message  # noqa: E402
from protocol import (  # noqa: E402
    Ack,
    Capabilities,
    ChunkReassembler,
    ModelBroadcast,
    ProtocolError,
    Register,
    Status,
    Task,
    decode_message,
    encode_message,
    split_into_chunks,
    topics,
)

MODEL = "digits_cnn"


class Devices:
    """The ``count`` fake devices of this process and their counters."""

    def __init__(self, port: int, first: int, count: int, heartbeat_s: float, train_s: float) -> None:
        self.port, self.heartbeat_s, self.train_s = port, heartbeat_s, train_s
        self.ids = [f"load-{i:05d}" for i in range(first, first + count)]
        self.seqs = itertools.count(time.time_ns() // 1000)
        self.lock = threading.Lock()
        self.inbox: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self.models: dict[tuple[str, int], ModelBroadcast] = {}
        self.reassembler = ChunkReassembler()
        self.counts = {"heartbeats": 0, "tasks": 0, "updates_sent": 0, "acks_ok": 0, "acks_rejected": 0}
        self.masked = get_model_spec(MODEL).masked_names()
        self.receiver = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-model-rx-{first}")
        self.receiver.on_message = self._on_model
        self.receiver.connect("127.0.0.1", port, keepalive=60)
        self.receiver.subscribe(f"{topics.ROOT}/runs/+/model/+/+", qos=1)
        self.receiver.loop_start()
        self.clients = {d: self._connect(d) for d in self.ids}

    def encode(self, msg: Any) -> bytes:
        with self.lock:
            seq = next(self.seqs)
        return encode_message(msg, seq=seq)

    def _on_model(self, client: Any, userdata: Any, message: Any) -> None:
        if not message.payload:
            return  # a closed round's retained chunk being cleared
        whole = self.reassembler.add(message.payload, source=message.topic.rsplit("/", 1)[0])
        if whole is not None:
            msg = decode_message(whole)
            if isinstance(msg, ModelBroadcast):
                with self.lock:
                    self.models[(msg.run_id, msg.server_round)] = msg
                    for key in sorted(self.models)[:-3]:  # keep the newest few rounds
                        del self.models[key]

    def _connect(self, device_id: str) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        will_seq = next(self.seqs)
        c.will_set(topics.status(device_id), encode_message(Status(device_id, "offline"), seq=will_seq), qos=1,
                   retain=True)
        c.on_message = lambda cl, u, m: self.inbox.put((device_id, m.topic, bytes(m.payload)))
        c.connect("127.0.0.1", self.port, keepalive=60)
        c.subscribe([(f"{topics.ROOT}/runs/+/task", 1), (f"{topics.ROOT}/runs/+/ack/{device_id}", 1),
                     (topics.inbox(device_id), 1)])  # its own Task arrives on its inbox (topic layout revision 3)
        c.loop_start()
        c.publish(topics.status(device_id), self.encode(Status(device_id, "online")), qos=1, retain=True)
        c.publish(topics.register(device_id), self.encode(
            Register(device_id, Capabilities("x86_64", 1, 1024, {}), 40, will_seq)), qos=1)
        return c

    def beat(self, next_beat: dict[str, float], now: float) -> None:
        for d in self.ids:
            if now >= next_beat[d]:
                self.clients[d].publish(topics.status(d), self.encode(Status(d, "online")), qos=1, retain=True)
                next_beat[d] += self.heartbeat_s
                self.counts["heartbeats"] += 1

    def answer(self, task: Task, answered: set[tuple[str, int, str]]) -> bool:
        """Send this process's selected devices' updates for ``task``; False while its model is missing."""
        with self.lock:
            model = self.models.get((task.run_id, task.model_round))
        if model is None:
            return False
        params, masks = model_from_tensors(model.tensors, self.masked)
        for d in task.selected:
            if d not in self.clients or (task.run_id, task.server_round, d) in answered:
                continue
            answered.add((task.run_id, task.server_round, d))
            update = update_message(task.run_id, task.server_round, d, params, masks, masks, 40, 0.0, 0.0)
            data = self.encode(dataclasses.replace(update, task_nonce=task.task_nonce))
            for packet in split_into_chunks(data):
                self.clients[d].publish(topics.update(task.run_id, d), packet, qos=1)
            self.counts["updates_sent"] += 1
        return True

    def handle(self, topic: str, payload: bytes, seen: set[bytes], waiting: list[tuple[float, Task]]) -> None:
        if topic.endswith(("/task", "/inbox")):
            if payload in seen:
                return  # a QoS 1 duplicate, or a revision-2 coordinator's one Task reaching every device here
            seen.add(payload)
            msg = decode_message(payload)
            if isinstance(msg, Task):
                self.counts["tasks"] += 1
                waiting.append((time.monotonic() + self.train_s, msg))
            return
        msg = decode_message(payload)
        if isinstance(msg, Ack):
            self.counts["acks_ok" if msg.ok else "acks_rejected"] += 1

    def serve(self, stop: threading.Event) -> None:
        period = self.heartbeat_s
        start = time.monotonic()
        next_beat = {d: start + period * (i + 1) / len(self.ids) for i, d in enumerate(self.ids)}
        seen: set[bytes] = set()
        waiting: list[tuple[float, Task]] = []
        answered: set[tuple[str, int, str]] = set()
        while not stop.is_set():
            self.beat(next_beat, time.monotonic())
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                try:
                    _, topic, payload = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                try:
                    self.handle(topic, payload, seen, waiting)
                except ProtocolError:
                    continue
            now = time.monotonic()
            waiting = [(ready, task) for ready, task in waiting if ready > now or not self.answer(task, answered)]
            if len(seen) > 1000:
                seen.clear()

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()
        self.receiver.disconnect()
        self.receiver.loop_stop()


def main() -> None:
    port, first, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    devices = Devices(port, first, count, heartbeat_s=float(sys.argv[4]), train_s=float(sys.argv[5]))
    print("ready", flush=True)
    stop = threading.Event()
    server = threading.Thread(target=devices.serve, args=(stop,), daemon=True)
    server.start()
    sys.stdin.readline()
    stop.set()
    server.join(10)
    devices.close()
    print(json.dumps(devices.counts), flush=True)


if __name__ == "__main__":
    main()
