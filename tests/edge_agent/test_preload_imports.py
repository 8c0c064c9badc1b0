"""``--preload-training`` loads everything a round imports: the first round after it imports no module.

A module imported inside the first round is compiled and executed on the round's clock in each of the fleet's
agents (``feddst_core.native.tensor_kernels`` was: about 14 ms of the first round's CPU each, uncached bytecode).
Oracle: ``sys.modules`` of a fresh interpreter before and after its first ``train_on_task``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feddst_core import native

ROOT = Path(__file__).resolve().parents[2]
FIRST_ROUND = """
import json, sys
sys.path.insert(0, {tests!r})
from agent_harness import KEYED
from edge_agent.config import AgentSettings
from edge_agent.data import load_local_data
from edge_agent.local_training import load_training_modules, train_on_task
local = load_local_data(AgentSettings(**KEYED, device_id="d", partition="0/8", seed=5))
load_training_modules()
import torch
from feddst_core.masks import init_masks, layer_budgets
from feddst_core.models import get_model_spec, init_params
from feddst_core.wire_format import model_broadcast
from protocol import Task
spec = get_model_spec("digits_cnn")
g = torch.Generator().manual_seed(0)
params = init_params(spec, g)
shapes = {{nm: s for nm, s in spec.parameter_shapes().items() if nm in spec.masked_names()}}
masks = init_masks(params, layer_budgets(shapes, 0.9, "erk"), "random", g)
task = Task(run_id="r", server_round=1, selected=("d",), model_round=1, local_epochs=1, batch_size=32, lr=0.01,
            momentum=0.9, weight_decay=0.001, prox_mu=0.0, readjust=True, alpha=0.01, deadline_unix=0.0, seed=0,
            model_name="digits_cnn")
before = set(sys.modules)
train_on_task(task, model_broadcast("r", 1, params, masks), local, "d", 0, kernels="sparse")
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.skipif(not native.available(), reason="the native kernels are not built")
def test_first_round_after_preload_imports_nothing() -> None:
    script = FIRST_ROUND.format(tests=str(ROOT / "tests" / "edge_agent"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
