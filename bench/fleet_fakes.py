"""The fake agents of ``bench/fleet_scale.py``: ``count`` protocol-level devices in ONE asyncio event loop.

One fake-agent process multiplexes its devices: one MQTT connection (socket) per device, all driven
by one event loop (uvloop when it is installed, else asyncio's; ``$FLEET_FAKES_LOOP=asyncio`` forces
asyncio's) with the lean MQTT 3.1.1 client of ``bench/fleet_mqtt.py`` (an asyncio protocol per
connection parsing packets as they arrive: no thread, no read task, no wake-up socket pair), so a device
costs one loopback port and one file descriptor on each side. (paho needs a network thread and a
``_socketpair_compat`` wake-up pair per client, ~3 loopback ports each: 10 000 of them do not fit in the
ephemeral range 32768-60999. The fakes used gmqtt before: about twice today's CPU per round, with this
client, the frames below and uvloop measured together, docs/results.md "Fleet scale, the bench's own CPU".)

Per device, as a real agent does on the wire: a will (retained ``Status`` offline, QoS 1), a retained
``Status`` online at connect and every ``heartbeat_s`` (each device at its own phase of the interval,
not all at once), ``Register``, subscriptions to the run's task topic, its own ack and its own inbox (QoS 1),
where each selected device gets its own Task (topic layout revision 3; a Task on the task topic, from a
revision-2 coordinator, is decoded once per process and answered for the devices it lists). Message seqs
come from the clock (one increasing counter per process; the coordinator drops any seq not above the
last it accepted from a device). The update echoes the task's nonce and is chunked with
``protocol.split_into_chunks``; every fake returns the model it was sent (density 0.2), so the update
payload is encoded once per process and each device's message is that payload in its own envelope
(sender id, seq, timestamp, CRC): byte for byte what ``encode_message`` gives for that device, without
repeating the tensor encoding per fake (the bench's cost, not the product's). The envelopes (each
heartbeat's Status, each update) are framed by ``bench/fleet_frames.py``: only the fixed header and CRC
per message, the update's chunks handed to the socket as slices of the shared payload (no copies). At most
``upload_window`` devices per process upload at once (real devices finish training at different
times; with every device of 10 000 uploading at once, the coordinator held ~10 000 first chunks
pending and dropped sets past its 512 MB reassembly bound: measured, see docs/fleet_scale.md).

One extra connection per process, the model receiver, subscribes to every round's model chunks and
stands in for the process's selected devices (the broker's fan-out still delivers the model; the
fakes do not each decode it).

Protocol (stdin/stdout with the parent): prints ``ready`` once every device is connected, subscribed
and registered; answers each device's Task (once the model is here) until the parent writes a line
(the round closed), then prints one JSON line ``{"model_at", "sent_at", "acked_at", "encode_s", "updates",
"connected_s"}`` (unix seconds / seconds; see :meth:`FakeFleet.report`); exits when the parent closes stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import itertools
import json
import os
import sys
import time
from collections.abc import Callable

from fleet_frames import EnvelopeFrame, chunk_pieces
from fleet_mqtt import FleetMqttConnection, open_connection

CONNECT_CONCURRENCY = 64  # connections opened at once (mosquitto's listen backlog is 100)
KEEPALIVE_S = 300
LOOP_ENV = "FLEET_FAKES_LOOP"  # "asyncio": asyncio's own event loop even when uvloop is installed


def now_ms() -> int:
    """Unix time in milliseconds (an envelope's timestamp)."""
    return time.time_ns() // 1_000_000


class FakeFleet:
    """``count`` fake devices ``fake-{first:05d}``.. on the broker at ``host:port`` (see the module docstring).

    ``heartbeat_s``: seconds between each device's retained online Status; ``upload_window``: see
    :meth:`serve`."""

    def __init__(self, host: str, port: int, first: int, count: int, heartbeat_s: float, upload_window: int = 0):
        from protocol import ChunkReassembler

        self.host, self.port, self.heartbeat_s, self.upload_window = host, port, heartbeat_s, upload_window
        self.ids = [f"fake-{i:05d}" for i in range(first, first + count)]
        self.first = first
        self.seqs = itertools.count(time.time_ns() // 1000)  # one increasing counter shared by this process's fakes
        self.clients: dict[str, FleetMqttConnection] = {}
        self.heartbeat_frames: dict[str, tuple[bytes, EnvelopeFrame]] = {}  # device -> (status topic, its Status)
        self.received: list[tuple[str, bytes]] = []  # (device, Task payload) not yet looked at
        self.decoded: dict[bytes, object] = {}  # Task payload -> Task (a revision-2 Task reaches every device)
        self.answered: set[tuple[str, int, str]] = set()  # (run, round, device)
        self.uploads: list[asyncio.Future] = []
        self.times: dict[str, float] = {}  # model_at, first_at, sent_at, acked_at (see report)
        self.task_rx: list[float] = []  # unix s each Task (or inbox message) reached its device's callback
        self.model: dict = {}
        self.payloads: dict[tuple, bytes] = {}  # (run, round, nonce) -> the update payload
        self.reassembler = ChunkReassembler()
        self.work = asyncio.Event()  # a Task or the model's last chunk arrived
        self.window = asyncio.Semaphore(upload_window) if upload_window else contextlib.nullcontext()

    def encode(self, msg: object) -> bytes:
        return self.encode_seq(msg, next(self.seqs))

    @staticmethod
    def encode_seq(msg: object, seq: int) -> bytes:
        from protocol import encode_message

        return encode_message(msg, seq=seq)

    # --- connections ----------------------------------------------------------------------------------

    async def _start_device(self, device_id: str, gate: asyncio.Semaphore) -> None:
        from protocol import Register, Status, decode_envelope, topics
        from protocol.messages import Capabilities

        will_seq = next(self.seqs)
        status_topic = topics.status(device_id).encode()
        will = (topics.status(device_id), self.encode_seq(Status(device_id, "offline"), will_seq), 1, True)
        inbox = topics.inbox(device_id)

        def on_message(topic: str, payload: bytes) -> None:
            if topic == inbox or topic.endswith("/task"):  # Tasks (an Ack of Register on the inbox is dropped later)
                self.received.append((device_id, payload))
                self.times["task_rx_at"] = time.time()
                self.task_rx.append(self.times["task_rx_at"])
                self.work.set()

        async with gate:
            client = await open_connection(self.host, self.port, device_id, KEEPALIVE_S, will, on_message)
            await client.subscribe([(f"{topics.ROOT}/runs/+/task", 1), (f"{topics.ROOT}/runs/+/ack/{device_id}", 1),
                                    (inbox, 1)])
        online = self.encode(Status(device_id, "online"))
        self.heartbeat_frames[device_id] = (status_topic, EnvelopeFrame(
            Status.MESSAGE_TYPE, "", 0, device_id, bytes(decode_envelope(online).payload)))
        client.publish(status_topic, [online], qos=1, retain=True)
        client.publish(topics.register(device_id).encode(), [self.encode(
            Register(device_id, Capabilities("x86_64", 1, 1024, {}), 40, will_seq))], qos=1)
        self.clients[device_id] = client

    async def _start_receiver(self) -> None:
        from protocol import topics

        def on_model(topic: str, payload: bytes) -> None:
            from protocol import ModelBroadcast, decode_message

            if payload:  # empty: the coordinator clearing a closed round's retained chunk
                whole = self.reassembler.add(payload, source=topic.rsplit("/", 1)[0])
                if whole is not None:
                    msg = decode_message(whole)
                    if isinstance(msg, ModelBroadcast):
                        self.model["msg"] = msg
                        self.times["model_rx_at"] = time.time()
                        self.work.set()

        self.receiver = await open_connection(self.host, self.port, f"model-rx-{self.first}", KEEPALIVE_S, None,
                                              on_model)
        await self.receiver.subscribe([(f"{topics.ROOT}/runs/+/model/+/+", 1)])

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
        try:
            await asyncio.wait_for(asyncio.gather(*(c.wait_acked() for c in self.clients.values())), timeout_s)
        except TimeoutError:
            raise TimeoutError("the broker did not acknowledge the fakes' publishes") from None

    def lost_connections(self) -> int:
        """Devices whose connection the broker closed (a fake never reconnects: its round cannot complete)."""
        return sum(c.lost is not None for c in self.clients.values())

    # --- the round ------------------------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """Each device's retained online Status every ``heartbeat_s``, device i at phase i/count of it."""
        tick = 0.1
        per_tick = max(1, round(len(self.ids) * tick / self.heartbeat_s))
        for k in itertools.count():
            await asyncio.sleep(tick)
            for j in range(k * per_tick, (k + 1) * per_tick):
                d = self.ids[j % len(self.ids)]
                topic, frame = self.heartbeat_frames[d]
                self.clients[d].publish(topic, [frame.encode(next(self.seqs), now_ms())], qos=1, retain=True)

    async def serve(self) -> None:
        """Until cancelled: each device's Task, once the model is here, starts that device's upload (at most
        ``upload_window`` devices of this process at once: a device's slot is free once the broker
        acknowledged all its packets; 0: no limit); a device answers a (run, round) once."""
        while True:
            await self.work.wait()
            self.work.clear()
            if "msg" not in self.model:
                continue
            taken, self.received = self.received, []
            answering = [pair for device_id, payload in taken for pair in self._selected_by(device_id, payload)]
            for d, task in answering:
                self.answered.add((task.run_id, task.server_round, d))  # type: ignore[attr-defined]
                self.uploads.append(asyncio.ensure_future(self._upload(d, task)))
            if answering:
                self.times.setdefault("first_at", time.time())
                self.times["model_at"] = time.time()

    def _selected_by(self, device_id: str, payload: bytes) -> list[tuple[str, object]]:
        """(device, Task) pairs of this process that ``payload``, received by ``device_id``, asks to answer now:
        a per-device Task selects its receiver; a revision-2 Task (decoded once) every listed device here."""
        from protocol import ProtocolError, Task, decode_message

        task = self.decoded.get(payload)
        if task is None:
            try:
                task = decode_message(payload)
            except ProtocolError:
                return []
            if len(payload) > 4096:  # keep only the big shared Task: per-device ones are seen once each
                self.decoded[payload] = task
        if not isinstance(task, Task):  # e.g. the Ack of a Register on the inbox
            return []
        devices = task.selected if len(task.selected) > 1 else (device_id,) if device_id in task.selected else ()
        return [(d, task) for d in devices
                if d in self.clients and (task.run_id, task.server_round, d) not in self.answered]

    def _update_payload(self, task: object) -> bytes:
        """The update payload for ``task``'s (run, round, nonce): the model sent back, encoded once per process."""
        from feddst_core.models import MNIST_CNN
        from feddst_core.wire_format import model_from_tensors, update_message
        from protocol import decode_envelope

        key = (task.run_id, task.server_round, task.task_nonce)  # type: ignore[attr-defined]
        if key not in self.payloads:
            params, masks = model_from_tensors(self.model["msg"].tensors, MNIST_CNN.masked_names())
            template = update_message(key[0], key[1], self.ids[0], params, masks, masks, 40, 0.0, 0.0)
            template = dataclasses.replace(template, task_nonce=key[2])
            self.payloads[key] = bytes(decode_envelope(self.encode(template)).payload)
        return self.payloads[key]

    async def _upload(self, d: str, task: object) -> None:
        """Device ``d``'s update for ``task`` in its own envelope, chunked, within the upload window."""
        from protocol import Update, topics

        run_id, server_round = task.run_id, task.server_round  # type: ignore[attr-defined]
        async with self.window:
            frame = EnvelopeFrame(Update.MESSAGE_TYPE, run_id, server_round, d, self._update_payload(task))
            client, topic = self.clients[d], topics.update(run_id, d).encode()
            for pieces in chunk_pieces(frame.parts(next(self.seqs), now_ms())):
                client.publish(topic, pieces, qos=1)
            self.times["sent_at"] = time.time()
            await client.wait_acked()
        self.times["acked_at"] = time.time()

    async def report(self) -> dict:
        """After the round: ``model_at`` (unix s: the process held the model and the last Task it got),
        ``model_rx_at`` (its model receiver reassembled the model), ``task_rx_at`` (the last Task reached
        one of its devices' sockets' callbacks),
        ``sent_at`` (the last update handed to its socket), ``acked_at`` (the broker acknowledged the last),
        ``encode_s`` (wall seconds from the first Task answered to ``sent_at``: the bench's encoding and
        publishing, upload-window waits included), ``updates`` (devices answered), ``lost_connections``
        (devices whose connection the broker closed), ``loop`` (the event loop's module: uvloop or asyncio)."""
        await asyncio.gather(*self.uploads)
        await self._drained()
        t = self.times
        return {"model_at": t.get("model_at"), "sent_at": t.get("sent_at"), "acked_at": t.get("acked_at"),
                "model_rx_at": t.get("model_rx_at"), "task_rx_at": t.get("task_rx_at"), "task_rx": self.task_rx,
                "encode_s": t.get("sent_at", 0.0) - t.get("first_at", 0.0), "updates": len(self.uploads),
                "lost_connections": self.lost_connections(),
                "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}

    async def close(self) -> None:
        for client in [*self.clients.values(), self.receiver]:
            await client.disconnect()


PROFILE_ENV = "FLEET_FAKES_PROFILE"  # a directory: each fake process writes fakes-FIRST.prof (cProfile) there


def _start_profile() -> cProfile.Profile | None:
    """A running cProfile of this process from ``ready`` to its report, when ``$FLEET_FAKES_PROFILE`` is set."""
    if not os.environ.get(PROFILE_ENV):
        return None
    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _stop_profile(profiler: cProfile.Profile | None, first: int) -> None:
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(os.environ[PROFILE_ENV], f"fakes-{first}.prof"))


async def _read_stdin_line() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run_fakes(host: str, port: int, first: int, count: int, heartbeat_s: float, upload_window: int) -> None:
    """The child's life (see the module docstring for its stdout protocol)."""
    fleet = FakeFleet(host, port, first, count, heartbeat_s, upload_window)
    t0 = time.perf_counter()
    await fleet.start()
    connected_s = time.perf_counter() - t0
    print("ready", flush=True)
    profiler = _start_profile()
    beats = asyncio.ensure_future(fleet.heartbeats())
    serving = asyncio.ensure_future(fleet.serve())
    await _read_stdin_line()  # the parent: the round closed
    serving.cancel()
    report = await fleet.report()
    report["connected_s"] = connected_s
    _stop_profile(profiler, first)
    print(json.dumps(report), flush=True)
    await _read_stdin_line()  # the parent closes stdin when done
    beats.cancel()
    await fleet.close()


def event_loop_runner() -> Callable:
    """``uvloop.run`` when uvloop is installed and ``$FLEET_FAKES_LOOP`` is not ``asyncio``, else ``asyncio.run``."""
    if os.environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


def main(argv: list[str]) -> None:
    """``fleet_fakes.py HOST PORT FIRST COUNT HEARTBEAT_S UPLOAD_WINDOW``."""
    event_loop_runner()(run_fakes(argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5])))


if __name__ == "__main__":
    main(sys.argv[1:])
