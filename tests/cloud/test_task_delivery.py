"""Task delivery (topic layout revision 3): each selected device gets its own Task, listing only itself, on
its own inbox, and is charged that Task's bytes; nothing goes to the run's task topic, so an unselected device
gets no Task. A device that restarts (registers again) during a round it is selected for gets its Task again
on its inbox, fetches the retained model and is accepted; an unselected device that re-registers gets
nothing. Real mosquitto, protocol-level fake devices, and an independent MQTT observer that decodes what
the coordinator publishes."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from coordinator_harness import TEST_COORDINATOR_PUBLIC_KEY, make_coordinator, wait_until
from fake_devices import FakeDevice

from cloud.run_config import RunConfig
from protocol import ProtocolError, Task, decode_message, topics
from protocol.ed25519 import Ed25519Verifier

VERIFIER = Ed25519Verifier(bytes.fromhex(TEST_COORDINATOR_PUBLIC_KEY))
CONFIG = dict(model="digits_cnn", rounds=1, clients_per_round=2, quorum=1, local_epochs=0, batch_size=8,
              round_timeout_s=8.0, device_wait_s=20.0, max_round_retries=0,
              eval={"dataset": "digits", "clients": 3, "samples_per_class": 10, "eval_every": 1})


class TaskObserver:
    """Subscribes to every run's task topic and every device inbox; keeps each Task verified as the coordinator's."""

    def __init__(self, port: int) -> None:
        self.tasks: list[tuple[str, Task, int]] = []  # (topic, task, bytes of the published message)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="task-observer")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"{topics.ROOT}/runs/+/task", 1), (f"{topics.ROOT}/devices/+/inbox", 1)])
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        try:
            msg = decode_message(bytes(message.payload), VERIFIER)  # type: ignore[arg-type]
        except ProtocolError:
            return
        if isinstance(msg, Task):
            with self._lock:
                self.tasks.append((message.topic, msg, len(message.payload)))

    def on(self, topic: str) -> list[Task]:
        with self._lock:
            return [t for top, t, _ in self.tasks if top == topic]

    def sizes_on(self, topic: str) -> list[int]:
        with self._lock:
            return [size for top, _, size in self.tasks if top == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_each_selected_device_gets_its_own_task_on_its_inbox_and_pays_its_bytes(mosquitto, tmp_path) -> None:
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    observer = TaskObserver(mosquitto.port)
    devices = {f"dev-{i:03d}": FakeDevice(f"dev-{i:03d}", mosquitto.port, index=i, coordinator_key=VERIFIER).start()
               for i in range(3)}
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
        run = coordinator.create_run(RunConfig(**{**CONFIG, "quorum": 2}))  # type: ignore[arg-type]
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 60)
        assert final.status == "completed", final.error
        _, rounds = coordinator.get_run(run.id)
        selected = rounds[0]["selected"]
        (unselected,) = sorted(set(devices) - set(selected))
        assert len(selected) == 2 and sorted(rounds[0]["accepted"]) == sorted(selected)

        assert observer.on(topics.task(run.id)) == []  # nothing for every device on the run's task topic
        assert observer.on(topics.inbox(unselected)) == [] and devices[unselected].tasks_seen == []
        tasks = {d: observer.on(topics.inbox(d)) for d in selected}
        assert all(len(t) == 1 and t[0].selected == (d,) for d, t in tasks.items()), tasks  # only itself
        first, second = (t[0] for t in tasks.values())
        assert (first.server_round, first.task_nonce, first.deadline_unix) == (
            second.server_round, second.task_nonce, second.deadline_unix)  # the same round's task
        assert [t.selected for d in selected for t in devices[d].tasks_seen] == [(d,) for d in selected]

        broadcast = rounds[0]["download_bytes"] // 2  # the encoded model x 2 selected devices
        bytes_down = {row.id: row.bytes_down for row, _ in coordinator.registry.snapshot()}
        for d in selected:  # charged the model and the bytes of its own Task, as published
            (task_size,) = observer.sizes_on(topics.inbox(d))
            assert task_size < 1024  # one id, not the selection
            assert bytes_down[d] == broadcast + task_size, (d, bytes_down[d], broadcast, task_size)
        assert bytes_down[unselected] == 0
    finally:
        for device in devices.values():
            device.crash()
        observer.close()
        coordinator.close()


def test_a_selected_device_that_registers_again_gets_its_task_and_is_accepted(mosquitto, tmp_path) -> None:
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    observer = TaskObserver(mosquitto.port)
    # All three receive their task but never answer: the round stays open for the restarts below.
    first = {f"dev-{i:03d}": FakeDevice(f"dev-{i:03d}", mosquitto.port, index=i, silent=True,
                                        coordinator_key=VERIFIER).start() for i in range(3)}
    restarted: dict[str, FakeDevice] = {}
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) == 3, what="3 devices online")
        run = coordinator.create_run(RunConfig(**CONFIG))  # type: ignore[arg-type]
        coordinator.start_run(run.id)
        wait_until(lambda: sum(len(observer.on(topics.inbox(d))) for d in first) == 2, what="the round's tasks")
        selected = sorted(d for d in first if observer.on(topics.inbox(d)))
        (unselected,) = sorted(set(first) - set(selected))
        again, stays_silent = selected
        (task,) = observer.on(topics.inbox(again))
        wait_until(lambda: all((run.id, 1) in first[d].handled for d in selected), what="tasks received")

        for device_id in (again, unselected):  # crash and come back: a new session registers again
            first[device_id].crash()
            restarted[device_id] = FakeDevice(device_id, mosquitto.port, index=int(device_id[-1]),
                                              coordinator_key=VERIFIER).start()
        final = coordinator.wait_for_run(run.id, 60)
        assert final.status == "completed", final.error

        (_, resent) = observer.on(topics.inbox(again))  # exactly one more Task, on the device's own inbox
        assert resent == task  # its task: same round, selection, nonce and deadline
        assert observer.on(topics.inbox(unselected)) == [] and len(observer.on(topics.inbox(stays_silent))) == 1
        assert observer.on(topics.task(run.id)) == []  # never published to everyone
        device = restarted[again]
        assert device.models_received == 1  # the retained model chunks, fetched after the re-sent task
        assert [(a.server_round, a.ok) for a in device.acks if a.run_id == run.id] == [(1, True)]
        assert restarted[unselected].models_received == 0 and restarted[unselected].handled == set()

        row, rounds = coordinator.get_run(run.id)
        assert rounds[0]["accepted"] == [again]
        assert row.counters["task_resent_on_register"] == 1
    finally:
        for device in [*restarted.values(), *(d for k, d in first.items() if k not in restarted)]:
            device.crash()
        observer.close()
        coordinator.close()
