"""Upload value formats in the simulator: bytes shrink as the format says, the server gets the decoded values."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.values import error_bound
from simulator.config import SimulationConfig
from simulator.engine import Simulation


def _run(fmt: str) -> tuple[Simulation, list]:
    sim = Simulation(SimulationConfig(dataset="digits", clients=10, clients_per_round=4, rounds=2, local_epochs=1,
                                      eval_every=2, upload_format=fmt, algorithm="fedavg"))
    return sim, list(sim.run_rounds())


def test_float16_halves_dense_uploads_and_stays_close():
    _, r32 = _run("float32")
    sim16, r16 = _run("float16")
    ratio = r16[-1].upload_bytes / r32[-1].upload_bytes
    assert 0.4 < ratio < 0.56  # 2 of 4 bytes a value (zstd may take a little more off either), plus headers
    assert r16[0].accuracy is None and abs(r16[-1].accuracy - r32[-1].accuracy) < 0.05


def test_the_server_aggregates_what_it_decodes():
    sim, _ = _run("float32")
    outcome_params = {n: p.clone() for n, p in sim.state.params.items()}

    class Outcome:
        params = outcome_params
        masks = sim.state.masks
        num_samples = 10
        train_loss = 0.0
        mask_changes: dict = {}  # a ClientOutcome field: no readjustment (the mask is the sent one)

    sim.meter.upload_format = "int8"
    size, received = sim.meter.received_update(Outcome, sim.state.masks, 3, 0)  # type: ignore[arg-type]
    assert size > 0
    for name, value in outcome_params.items():
        original = value.numpy().reshape(-1)
        decoded = received[name].numpy().reshape(-1)
        assert not np.array_equal(original, decoded) or np.all(original == 0)
        assert np.max(np.abs(decoded - original)) <= error_bound(original, "int8") + 1e-12


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="--upload-format must be one of float32, float16, bfloat16, int8"):
        SimulationConfig(dataset="digits", upload_format="float8")
