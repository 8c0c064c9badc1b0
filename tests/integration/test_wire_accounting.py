"""What devices really pay on the wire, on a private mosquitto: model bytes only for the selected device,
and the run's MQTT byte counts against the broker's own ``$SYS`` counters."""

from __future__ import annotations

import sys
from pathlib import Path

from brokers import MosquittoBroker
from coordinator_harness import TEST_COORDINATOR_PUBLIC_KEY, make_coordinator, wait_until

from cloud.run_config import RunConfig
from field_trial.private_mosquitto import BrokerByteCounters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge_agent"))

from agent_harness import AgentThread, agent_settings  # noqa: E402


def test_only_the_selected_device_receives_the_model_and_wire_bytes_match_the_broker(tmp_path):
    broker = MosquittoBroker(tmp_path / "mosquitto", sys_interval_s=1).start()
    counters = BrokerByteCounters(broker.port)
    coordinator = make_coordinator(broker.url, tmp_path / "state")
    agents = [AgentThread(agent_settings(broker.url, f"dev-{i:03d}", partition=f"{i}/3", heartbeat_s=0.5,
                                         coordinator_public_key=TEST_COORDINATOR_PUBLIC_KEY), key=None)
              for i in range(3)]
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) == 3, 60, "agents online")
        run = coordinator.create_run(RunConfig(model="digits_cnn", clients_per_round=1, rounds=1, local_epochs=1,
                                               batch_size=16, quorum=1, round_timeout_s=30, min_devices=3))
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 60)
        assert final.status == "completed", final.error
        _, rounds = coordinator.get_run(run.id)
        (selected,) = rounds[0]["selected"]
        broadcast_bytes = rounds[0]["download_bytes"]  # encoded broadcast x 1 selected device
        by_id = {a.settings.device_id: a for a in agents}
        assert by_id[selected].agent.stats["received_modelbroadcast"] == 1
        for device_id, agent in by_id.items():
            if device_id != selected:
                assert agent.agent.stats["received_modelbroadcast"] == 0
                assert agent.agent.link.wire_received_bytes < broadcast_bytes / 4  # measured at its socket
        assert by_id[selected].agent.link.wire_received_bytes > broadcast_bytes
        # Every client stops cleanly, then the broker's counters must equal what the clients counted.
        for agent in agents:
            agent.close()
        coordinator.close()
        sys_values = counters.fresh()
        clients_sent = (sum(a.agent.link.wire_sent_bytes for a in agents) + coordinator.link.wire_sent_bytes
                        + counters.client.wire_sent_bytes)
        clients_received = (sum(a.agent.link.wire_received_bytes for a in agents)
                            + coordinator.link.wire_received_bytes + counters.client.wire_received_bytes)
        print(f"wire vs broker: sent {clients_sent} / {sys_values['received']}, received {clients_received} / "
              f"{sys_values['sent']}")
        assert abs(clients_sent / sys_values["received"] - 1) < 0.05, (clients_sent, sys_values)
        assert abs(clients_received / sys_values["sent"] - 1) < 0.05, (clients_received, sys_values)
    finally:
        for agent in agents:
            agent.close()
        coordinator.close()
        counters.close()
        broker.stop()
