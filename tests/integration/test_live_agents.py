"""End to end with real agent processes: a full run, an agent killed mid-round, the embedded broker."""

from __future__ import annotations

import signal

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from coordinator_harness import make_coordinator, wait_until

from cloud.embedded_broker import EmbeddedBroker
from cloud.run_config import EvalConfig, RunConfig
from inference import Predictor

DATA = ("--classes-per-client", "2", "--samples-per-class", "20")
EVAL_DATA = {"classes_per_client": 2, "samples_per_class": 20}


def test_agent_killed_mid_round_does_not_stall_the_round(mosquitto, agents, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        procs = {f"dev-{i:03d}": agents(mosquitto.url, f"dev-{i:03d}", f"{i}/3", *DATA, "--preload-training")
                 for i in range(3)}
        wait_until(lambda: len(coordinator.registry.online_ids()) == 3, 60, "agents online")
        # the survivor's 40 epochs must fit the deadline: torch is imported before the run, not inside round 1
        logs = [tmp_path / f"dev-{i:03d}.log" for i in range(3)]
        wait_until(lambda: all(b"training modules loaded" in log.read_bytes() for log in logs), 120, "torch loaded")
        timeout = 6.0
        run = coordinator.create_run(RunConfig(
            model="digits_cnn", clients_per_round=2, rounds=2, local_epochs=40, batch_size=8, lr=0.05, quorum=1,
            round_timeout_s=timeout, min_devices=3,
            eval=EvalConfig(dataset="digits", clients=3, classes_per_client=2, samples_per_class=20)))
        coordinator.start_run(run.id)
        wait_until(lambda: coordinator._execution is not None and coordinator._execution.collector is not None,
                   30, "round 1 open")
        victim = coordinator._execution.collector.selected[0]
        procs[victim].send_signal(signal.SIGKILL)  # mid-round: it is training (40 local epochs)
        final = coordinator.wait_for_run(run.id, 60)
        assert final.status == "completed", final.error
        _, rounds = coordinator.get_run(run.id)
        assert victim not in rounds[0]["accepted"] and len(rounds[0]["accepted"]) == 1
        # closed at the deadline of each attempt (a loaded machine can miss the quorum of 1 and retry once)
        assert rounds[0]["seconds"] < (rounds[0]["retries"] + 1) * timeout + 3.0
        assert victim not in rounds[1]["selected"]  # its last will marked it offline
        assert rounds[1]["accepted"] == rounds[1]["selected"]
    finally:
        coordinator.close()


def test_embedded_broker_supports_what_the_system_needs():
    """QoS 1, retained messages, last will and 128 KiB payloads with paho v2 clients (MQTT 3.1.1)."""
    import queue

    broker = EmbeddedBroker().start()
    got: queue.Queue = queue.Queue()
    try:
        def client(cid: str, will: bool = False) -> mqtt.Client:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
            if will:
                c.will_set("t/status/a", b"offline", qos=1, retain=True)
            c.on_message = lambda cl, u, m: got.put((cid, m.topic, bytes(m.payload)))
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            return c

        a = client("a", will=True)
        assert a.publish("t/status/a", b"online", qos=1, retain=True).wait_for_publish(5) is None
        b = client("b")
        b.subscribe([("t/status/+", 1), ("t/big", 1)])
        assert got.get(timeout=5) == ("b", "t/status/a", b"online")  # retained
        big = bytes(range(256)) * 512  # 128 KiB
        info = a.publish("t/big", big, qos=1)
        info.wait_for_publish(10)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        assert got.get(timeout=10) == ("b", "t/big", big)
        a.loop_stop()
        a.socket().close()  # vanish: the broker publishes the will
        assert got.get(timeout=10) == ("b", "t/status/a", b"offline")
        b.loop_stop()
        b.disconnect()
    finally:
        broker.stop()


def test_full_run_with_real_agents_on_the_embedded_broker(agents, tmp_path):
    broker = EmbeddedBroker().start()
    coordinator = make_coordinator(broker.url, tmp_path / "state")
    try:
        model_onnx = tmp_path / "dev-000-model.onnx"  # dev-000 keeps the final model for local use
        for i in range(3):
            extra = ("--model-onnx-path", str(model_onnx), "--model-onnx-every", "100") if i == 0 else ()
            agents(broker.url, f"dev-{i:03d}", f"{i}/3", *DATA, "--mqtt-protocol", "3.1.1", *extra)
        wait_until(lambda: len(coordinator.registry.online_ids()) == 3, 60, "agents online")
        run = coordinator.create_run(RunConfig(model="digits_cnn", clients_per_round=3, rounds=2, local_epochs=1,
                                               batch_size=8, round_timeout_s=30, min_devices=3,
                                               eval=EvalConfig(dataset="digits", clients=3, **EVAL_DATA)))
        coordinator.start_run(run.id)
        finished = coordinator.wait_for_run(run.id, 60)
        assert finished.status == "completed"
        assert finished.counters["final_model_bytes"] > 0
        # the model after the last round, which no round's broadcast carries, from the RunCompleted message
        wait_until(lambda: model_onnx.exists() and Predictor(model_onnx).card.server_round == 2, 30,
                   "dev-000's model.onnx of the completed run")
        card = Predictor(model_onnx).card
        last_round = coordinator.get_run(run.id)[1][-1]
        assert (card.run_id, card.server_round) == (run.id, 2)
        assert card.accuracy == pytest.approx(last_round["accuracy"])
        expected = Predictor(coordinator.model_onnx(run.id, 2))  # GET /api/runs/{id}/model.onnx's bytes
        x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(Predictor(model_onnx).probabilities(x), expected.probabilities(x), rtol=0, atol=1e-7)
    finally:
        coordinator.close()
        broker.stop()
