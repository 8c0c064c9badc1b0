"""Same math as the simulator: a live run over MQTT (real agents, real mosquitto) ends with the
global model of ``Simulation(..., client_batching=False)`` for the same seed, partition and config."""

from __future__ import annotations

import torch
from coordinator_harness import make_coordinator, wait_until

from cloud.run_config import EvalConfig, RunConfig
from simulator.config import SimulationConfig
from simulator.engine import Simulation

N = 4
FLAGS = dict(classes_per_client=2, samples_per_class=20)


def test_live_run_matches_simulator(mosquitto, agents, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        for i in range(N):
            agents(mosquitto.url, f"dev-{i:03d}", f"{i}/{N}", "--classes-per-client", "2",
                   "--samples-per-class", "20", "--seed", "7")
        wait_until(lambda: len(coordinator.registry.online_ids()) == N, 60, "agents online")
        config = RunConfig(algorithm="feddst", model="digits_cnn", sparsity=0.8, readjust_ratio=0.2,
                           readjust_every=2, readjust_until=3, clients_per_round=3, rounds=3, local_epochs=2,
                           batch_size=8, lr=0.05, seed=7, round_timeout_s=60, quorum=3, min_devices=N,
                           eval=EvalConfig(dataset="digits", clients=N, eval_every=1, **FLAGS))
        run = coordinator.create_run(config)
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 120)
        assert final.status == "completed", final.error
        _, rounds = coordinator.get_run(run.id)
        live_params, live_masks = coordinator.store.load_model(run.id)
    finally:
        coordinator.close()

    sim = Simulation(SimulationConfig(
        dataset="digits", partition="pathological", clients=N, clients_per_round=3, rounds=3, local_epochs=2,
        batch_size=8, lr=0.05, algorithm="feddst", sparsity=0.8, readjust_ratio=0.2, readjust_every=2,
        readjust_until=3, seed=7, eval_every=1, client_batching=False, **FLAGS))
    records = list(sim.run_rounds())
    assert sim.state.mask_version >= 1  # a readjustment changed the global mask: masks are really compared
    for name, p in sim.state.params.items():
        assert torch.allclose(live_params[name], p, atol=1e-5, rtol=0), name
    for name, m in sim.state.masks.items():
        assert torch.equal(live_masks[name], m), name
    for live, simulated in zip(rounds, records, strict=True):
        assert live["accuracy"] == simulated.accuracy
        assert live["density"] == simulated.density
