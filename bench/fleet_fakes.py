"""The fake agents of ``bench/fleet_scale.py``: ``count`` protocol-level devices in ONE asyncio event loop.

One fake-agent process multiplexes its devices: one MQTT connection (socket) per device, all driven
by one event loop (the ``gmqtt`` client: an asyncio protocol per connection, no thread, no wake-up
socket pair), so a device costs one loopback port and one file descriptor on each side. (paho needs a
network thread and a ``_socketpair_compat`` wake-up pair per client, ~3 loopback ports each: 10 000 of
them do not fit in the ephemeral range 32768-60999.)

Per device, as a real agent does on the wire: a will (retained ``Status`` offline, QoS 1), a retained
``Status`` online at connect and every ``heartbeat_s`` (each device at its own phase of the interval,
not all at once), ``Register``, subscriptions to the run's task and its own ack (QoS 1). Message seqs
come from the clock (one increasing counter per process; the coordinator drops any seq not above the
last it accepted from a device). The update echoes the task's nonce and is chunked with
``protocol.split_into_chunks``; every fake returns the model it was sent (density 0.2), so the update
payload is encoded once per process and each device's message is that payload in its own envelope
(sender id, seq, timestamp, CRC): byte for byte what ``encode_message`` gives for that device, without
repeating the tensor encoding per fake (the bench's cost, not the product's). At most
``upload_window`` devices per process upload at once (real devices finish training at different
times; with every device of 10 000 uploading at once, the coordinator held ~10 000 first chunks
pending and dropped sets past its 512 MB reassembly bound: measured, see docs/fleet_scale.md).

One extra connection per process, the model receiver, subscribes to every round's model chunks and
stands in for the process's selected devices (the broker's fan-out still delivers the model; the
fakes do not each decode it).

Protocol (stdin/stdout with the parent): prints ``ready`` once every device is connected, subscribed
and registered; serves one round; prints one JSON line ``{"model_at", "sent_at", "encode_s",
"updates", "connected_s"}`` (unix seconds / seconds); exits when the parent closes stdin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable

CONNECT_CONCURRENCY = 64  # connections opened at once (mosquitto's listen backlog is 100)


class FakeFleet:
    """``count`` fake devices ``fake-{first:05d}``.. on the broker at ``host:port`` (see the module docstring).

    ``heartbeat_s``: seconds between each device's retained online Status; ``upload_window``: see
    :meth:`send_updates`."""

    def __init__(self, host: str, port: int, first: int, count: int, heartbeat_s: float, upload_window: int = 0):
        from protocol import ChunkReassembler

        self.host, self.port, self.heartbeat_s, self.upload_window = host, port, heartbeat_s, upload_window
        self.ids = [f"fake-{i:05d}" for i in range(first, first + count)]
        self.first = first
        self.seqs = itertools.count(time.time_ns() // 1000)  # one increasing counter shared by this process's fakes
        self.clients: dict[str, object] = {}
        self.tasks: list[bytes] = []
        self.model: dict = {}
        self.reassembler = ChunkReassembler()
        self.work = asyncio.Event()  # a Task or the model's last chunk arrived

    def encode(self, msg: object) -> bytes:
        return self.encode_seq(msg, next(self.seqs))

    @staticmethod
    def encode_seq(msg: object, seq: int) -> bytes:
        from protocol import encode_message

        return encode_message(msg, seq=seq)

    # --- connections ----------------------------------------------------------------------------------

    async def _connect(self, client_id: str, will: object, on_message: Callable) -> object:
        from gmqtt import Client
        from gmqtt.mqtt.constants import MQTTv311

        client = Client(client_id, will_message=will)
        client.on_message = on_message
        await client.connect(self.host, self.port, keepalive=300, version=MQTTv311)
        return client

    async def _start_device(self, device_id: str, gate: asyncio.Semaphore) -> None:
        from gmqtt import Message, Subscription

        from protocol import Register, Status, topics
        from protocol.messages import Capabilities

        will_seq = next(self.seqs)
        will = Message(topics.status(device_id), self.encode_seq(Status(device_id, "offline"), will_seq), qos=1,
                       retain=True)

        def on_message(client, topic, payload, qos, properties):  # noqa: ANN001, ANN202
            if topic.endswith("/task") and not self.tasks:  # one run, one round: every device gets the same Task
                self.tasks.append(payload)
                self.work.set()
            return 0

        async with gate:
            client = await self._connect(device_id, will, on_message)
        client.subscribe([Subscription(f"{topics.ROOT}/runs/+/task", qos=1),
                          Subscription(f"{topics.ROOT}/runs/+/ack/{device_id}", qos=1)])
        client.publish(topics.status(device_id), self.encode(Status(device_id, "online")), qos=1, retain=True)
        client.publish(topics.register(device_id), self.encode(
            Register(device_id, Capabilities("x86_64", 1, 1024, {}), 40, will_seq)), qos=1)
        self.clients[device_id] = client

    async def _start_receiver(self) -> None:
        from gmqtt import Subscription

        from protocol import topics

        def on_model(client, topic, payload, qos, properties):  # noqa: ANN001, ANN202
            from protocol import ModelBroadcast, decode_message

            if payload:  # empty: the coordinator clearing a closed round's retained chunk
                whole = self.reassembler.add(bytes(payload), source=topic.rsplit("/", 1)[0])
                if whole is not None:
                    msg = decode_message(whole)
                    if isinstance(msg, ModelBroadcast):
                        self.model["msg"] = msg
                        self.work.set()
            return 0

        self.receiver = await self._connect(f"model-rx-{self.first}", None, on_model)
        self.receiver.subscribe(Subscription(f"{topics.ROOT}/runs/+/model/+/+", qos=1))

    async def start(self) -> None:
        """Connect the model receiver and every device (at most ``CONNECT_CONCURRENCY`` handshakes at once)."""
        import feddst_core.models  # noqa: F401 - imported now (torch), not in the timed round
        import feddst_core.wire_format  # noqa: F401

        await self._start_receiver()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        await asyncio.gather(*(self._start_device(d, gate) for d in self.ids))
        await self._drained()

    async def _drained(self, timeout_s: float = 600.0) -> None:
        """Wait until every device's QoS 1 publishes so far are acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        while any(not c._persistent_storage.is_empty for c in self.clients.values()):  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not acknowledge the fakes' publishes")
            await asyncio.sleep(0.05)

    # --- the round ------------------------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """Each device's retained online Status every ``heartbeat_s``, device i at phase i/count of it."""
        from protocol import Status, topics

        tick = 0.1
        per_tick = max(1, round(len(self.ids) * tick / self.heartbeat_s))
        for k in itertools.count():
            await asyncio.sleep(tick)
            for j in range(k * per_tick, (k + 1) * per_tick):
                d = self.ids[j % len(self.ids)]
                self.clients[d].publish(topics.status(d), self.encode(Status(d, "online")), qos=1,  # type: ignore
                                        retain=True)

    async def serve_round(self) -> dict:
        """Wait for a Task and the model; send every selected device's update; return the report."""
        while not (self.tasks and "msg" in self.model):
            self.work.clear()
            await self.work.wait()
        model_at = time.time()
        started = time.perf_counter()
        sent = await self.send_updates()
        report = {"model_at": model_at, "sent_at": time.time(), "encode_s": time.perf_counter() - started,
                  "updates": sent}
        await self._drained()
        report["acked_at"] = time.time()
        return report

    async def send_updates(self) -> int:
        """Encode the update once, publish it in each selected device's envelope; the number sent.

        At most ``upload_window`` devices of this process upload at once (a device's slot is free once the
        broker acknowledged all its packets); 0: every device hands its update to its socket at once."""
        from feddst_core.models import MNIST_CNN
        from feddst_core.wire_format import model_from_tensors, update_message
        from protocol import Task, Update, decode_envelope, decode_message, split_into_chunks, topics
        from protocol.envelope import encode_envelope

        task = decode_message(self.tasks[0])
        assert isinstance(task, Task)
        params, masks = model_from_tensors(self.model["msg"].tensors, MNIST_CNN.masked_names())
        template = update_message(task.run_id, task.server_round, self.ids[0], params, masks, masks, 40, 0.0, 0.0)
        template = dataclasses.replace(template, task_nonce=task.task_nonce)
        payload = bytes(decode_envelope(self.encode(template)).payload)
        selected = set(task.selected)
        devices = [d for d in self.ids if d in selected]

        def publish(d: str) -> object:
            data = encode_envelope(Update.MESSAGE_TYPE, task.run_id, task.server_round, d, next(self.seqs),
                                   time.time_ns() // 1_000_000, payload, None)
            client = self.clients[d]
            for packet in split_into_chunks(data):
                client.publish(topics.update(task.run_id, d), packet, qos=1)  # type: ignore[attr-defined]
            return client

        if not self.upload_window:
            for d in devices:
                publish(d)
            return len(devices)
        gate = asyncio.Semaphore(self.upload_window)

        async def upload(d: str) -> None:
            async with gate:
                await publish(d)._persistent_storage.wait_empty()  # type: ignore[attr-defined]

        await asyncio.gather(*(upload(d) for d in devices))
        return len(devices)

    async def close(self) -> None:
        for client in [*self.clients.values(), self.receiver]:
            await client.disconnect()  # type: ignore[attr-defined]


async def _read_stdin_line() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run_fakes(host: str, port: int, first: int, count: int, heartbeat_s: float, upload_window: int) -> None:
    """The child's life (see the module docstring for its stdout protocol)."""
    fleet = FakeFleet(host, port, first, count, heartbeat_s, upload_window)
    t0 = time.perf_counter()
    await fleet.start()
    connected_s = time.perf_counter() - t0
    print("ready", flush=True)
    beats = asyncio.ensure_future(fleet.heartbeats())
    report = await fleet.serve_round()
    report["connected_s"] = connected_s
    print(json.dumps(report), flush=True)
    await _read_stdin_line()  # the parent closes stdin when done
    beats.cancel()
    await fleet.close()


def main(argv: list[str]) -> None:
    """``fleet_fakes.py HOST PORT FIRST COUNT HEARTBEAT_S UPLOAD_WINDOW``."""
    asyncio.run(run_fakes(argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5])))


if __name__ == "__main__":
    main(sys.argv[1:])
