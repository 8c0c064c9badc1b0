"""A broker that restarts without persistence loses the coordinator's session and the open round's retained
model: the coordinator, reconnecting without its session, publishes the round's model and Task again (same
nonce), so a device that re-sent its update while nobody was subscribed is asked again instead of waiting for
the deadline. Real mosquitto (``persistence false``), a protocol-level fake device, an independent observer."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt
from coordinator_harness import make_coordinator, wait_until
from fake_devices import FakeDevice

from cloud.run_config import RunConfig
from protocol import ChunkReassembler, ModelBroadcast, decode_message, topics

CONFIG = dict(model="digits_cnn", rounds=1, clients_per_round=1, quorum=1, local_epochs=0, batch_size=8,
              round_timeout_s=60.0, device_wait_s=20.0, max_round_retries=0)


def _retained_model(port: int, run_id: str, server_round: int, wait_s: float = 20.0) -> ModelBroadcast | None:
    """Connect (retrying while the broker comes back), subscribe to the round's model chunks and return the
    reassembled retained model, or None if none arrives within ``wait_s`` seconds."""
    got: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="session-loss-observer")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.model_filter(run_id, server_round), 1)
    client.on_message = lambda c, u, m: got.put((m.topic, bytes(m.payload)))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.connect("127.0.0.1", port)
            break
        except OSError:
            assert time.monotonic() < deadline, "the restarted broker does not accept connections"
            time.sleep(0.1)
    client.loop_start()
    reassembler = ChunkReassembler()
    try:
        while True:
            try:
                topic, payload = got.get(timeout=wait_s)
            except queue.Empty:
                return None
            if payload and (whole := reassembler.add(payload, source=topic.rsplit("/", 1)[0])) is not None:
                message = decode_message(whole)
                assert isinstance(message, ModelBroadcast)
                return message
    finally:
        client.loop_stop()
        client.disconnect()


def test_after_a_broker_restart_without_persistence_the_open_round_is_announced_again(mosquitto, tmp_path):
    device = FakeDevice("dev-000", mosquitto.port, silent=True).start()  # never answers: the round stays open
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        wait_until(lambda: coordinator.registry.online_ids() == ["dev-000"], 20, "the device online")
        run = coordinator.create_run(RunConfig(**CONFIG))  # type: ignore[arg-type]
        coordinator.start_run(run.id)
        wait_until(lambda: coordinator._execution is not None and coordinator._execution.collector is not None,
                   20, "round 1 open")
        execution = coordinator._execution
        assert execution is not None and execution.collector is not None
        nonce, server_round = execution.task_nonce, execution.collector.server_round

        mosquitto.restart(down_s=0.5)  # persistence false: sessions, subscriptions and retained chunks are gone

        model = _retained_model(mosquitto.port, run.id, server_round)
        assert model is not None, "the round's model is not retained on the restarted broker"
        assert (model.run_id, model.server_round) == (run.id, server_round)
        wait_until(lambda: execution.counters["round_reannounced"] == 1, 20, "the round announced again")
        # the selected device sees the same round's Task again (same nonce), long before the 60 s deadline
        wait_until(lambda: len([t for t in device.tasks_seen if t.task_nonce == nonce]) >= 2, 20, "the Task again")
    finally:
        coordinator.close()
        device.stop()
