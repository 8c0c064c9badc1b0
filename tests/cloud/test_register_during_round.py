"""A device that restarts (registers again) during a round it is selected for gets that round's Task
again on its inbox, fetches the retained model and is accepted; an unselected device that
re-registers gets nothing. Real mosquitto, protocol-level fake devices, and an independent MQTT
observer that decodes what the coordinator publishes."""

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
        self.tasks: list[tuple[str, Task]] = []  # (topic, task)
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
                self.tasks.append((message.topic, msg))

    def on(self, topic: str) -> list[Task]:
        with self._lock:
            return [t for top, t in self.tasks if top == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
        wait_until(lambda: observer.on(topics.task(run.id)), what="the round's task")
        (task,) = observer.on(topics.task(run.id))
        selected = sorted(task.selected)
        (unselected,) = sorted(set(first) - set(selected))
        again, stays_silent = selected
        wait_until(lambda: all((run.id, 1) in first[d].handled for d in selected), what="tasks received")

        for device_id in (again, unselected):  # crash and come back: a new session registers again
            first[device_id].crash()
            restarted[device_id] = FakeDevice(device_id, mosquitto.port, index=int(device_id[-1]),
                                              coordinator_key=VERIFIER).start()
        final = coordinator.wait_for_run(run.id, 60)
        assert final.status == "completed", final.error

        (resent,) = observer.on(topics.inbox(again))  # exactly one Task, on the device's own inbox
        assert resent == task  # the round's task: same round, selection, nonce and deadline
        assert observer.on(topics.inbox(unselected)) == [] and observer.on(topics.inbox(stays_silent)) == []
        assert len(observer.on(topics.task(run.id))) == 1  # not re-published to everyone
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
