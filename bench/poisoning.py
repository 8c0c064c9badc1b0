"""Poisoning guardrails: final accuracy with one attacker among 10 devices, by aggregation rule.

Setting (digits, built in): 10 devices holding the iid partition (143 images each; ``--partition
pathological``: 2 classes x 60 images each), every device every round, FedDST S = 0.8 (ERK),
20 rounds, 5 local epochs, batch 16, lr 0.05, readjust every 5 rounds with alpha 0.05 (the
``feddst demo`` setting). Device 0 is the attacker; it trains honestly, then sends

* ``scaled``: its update scaled by 1000: ``w_global + 1000 * (w_trained - w_global)`` on the
  positions it holds (a boosted / model-replacement update; finite, structurally valid);
* ``random``: N(0, 1) values on every position it holds (finite, structurally valid).

Both pass the structural update checks (they are finite and fit the mask), so only the
aggregation-side guardrails can stop them. Rows: ``mean`` without guardrails, ``mean`` with per-layer
update-norm clipping (``--clip``), ``trimmed_mean`` (trim 0.1) and ``median``, with no attack and
each attack; ``clean_accuracy`` is ``mean`` without an attack. ``accuracy`` is the report metric
(mean over the 10 clients of the global model's accuracy on each client's local test set);
``global_accuracy`` is on the whole digits test set. ``without_attacker_accuracy`` (always from the
simulator) is ``mean`` with device 0 sending nothing: the best any defence can do, since it must
discard the attacker's data too. With the pathological partition that alone costs ~13 points (device
0's two classes are held by only one other device), which is why iid is the default.

``--mode live`` (default): a real mosquitto, the real ``Coordinator`` (update checks, caps, clipping,
robust aggregation exactly as deployed) and 10 protocol-level devices in this process
(``tests/cloud/fake_devices.FakeDevice``, training with ``LocalTrainer`` exactly as agents do;
not 10 ``feddst agent run`` processes, which would not fit the time on 2 cores). ``--mode sim``:
the in-process simulator (same strategy code), with the attacker's outcome rewritten.

    python bench/poisoning.py            # a table on stdout
    python bench/poisoning.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "cloud"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CLIENTS = 10
SCALE = 1000.0
SETTING = dict(partition="iid", clients=CLIENTS, classes_per_client=2, samples_per_class=60,
               clients_per_round=CLIENTS, rounds=20, local_epochs=5, batch_size=16, lr=0.05, algorithm="feddst",
               sparsity=0.8, readjust_ratio=0.05, readjust_every=5, seed=0)
ATTACKS = ("none", "scaled", "random")


def rows_to_run(clip: float) -> list[tuple[str, str, dict]]:
    """(aggregation, guardrails label, strategy settings) of each measured configuration."""
    return [("mean", "none", dict(aggregation="mean")),
            ("mean", f"clip {clip:g}", dict(aggregation="mean", clip_update_norm=clip)),
            ("trimmed_mean", "none", dict(aggregation="trimmed_mean", trim_fraction=0.1)),
            ("median", "none", dict(aggregation="median")),
            ("trimmed_mean", f"clip {clip:g}", dict(aggregation="trimmed_mean", trim_fraction=0.1,
                                                    clip_update_norm=clip))]


def poison(attack: str, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
           global_params: Mapping[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The attacker's tensors: ``scaled`` or ``random`` (see the module docstring); 0 off its mask."""
    out = {}
    for name, p in params.items():
        held = masks[name].to(p.dtype) if name in masks else torch.ones_like(p)
        if attack == "scaled":
            g = global_params[name]
            out[name] = (g + SCALE * (p - g)) * held
        elif attack == "random":
            out[name] = torch.randn(p.shape, generator=gen) * held
        else:
            out[name] = p.clone()
    return out


# --- simulator mode ---------------------------------------------------------------------------------


class Stalled(Exception):
    """Every update of a round was non-finite (the coordinator rejects those): the run cannot go on."""


def run_simulated(settings: dict, attack: str) -> tuple[float, float, str]:
    """(accuracy, global accuracy, status) of one simulated run with device 0 attacking.

    Like the coordinator, the round drops non-finite outcomes (a client that diverged on a poisoned
    model); a round with none left ends the run, evaluated on the model it reached.
    """
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    config = SimulationConfig(dataset="digits", eval_every=SETTING["rounds"], client_batching=False,
                              **SETTING, **settings)
    sim = Simulation(config)
    gen = torch.Generator().manual_seed(1)
    honest_train = sim.train_clients

    def train_with_attacker(clients, readjust_fraction, prox_mu, server_round):  # noqa: ANN001, ANN202
        trained = honest_train(clients, readjust_fraction, prox_mu, server_round)
        if attack == "absent":
            trained = [(c, o) for c, o in trained if c != 0]
        for client, outcome in trained:
            if client == 0 and attack not in ("none", "absent"):
                outcome.params = poison(attack, outcome.params, outcome.masks, sim.state.params, gen)
        finite = [(c, o) for c, o in trained if all(bool(torch.isfinite(p).all()) for p in o.params.values())]
        if not finite:
            raise Stalled(f"round {server_round}: every update non-finite")
        return finite

    sim.train_clients = train_with_attacker  # type: ignore[method-assign]
    try:
        records = list(sim.run_rounds())
    except Stalled as exc:
        acc, global_acc = sim.evaluate()
        return acc, global_acc, f"stalled: {exc}"
    last = records[-1]
    assert last.accuracy is not None and last.global_accuracy is not None
    return last.accuracy, last.global_accuracy, "completed"


# --- live mode --------------------------------------------------------------------------------------


class LiveFleet:
    """mosquitto + coordinator + 10 fake devices (device 0 the attacker), reused for every run."""

    def __init__(self, workdir: Path):
        from brokers import MosquittoBroker
        from fake_devices import FakeDevice

        from cloud.coordinator import Coordinator
        from cloud.settings import CloudSettings
        from datasources import load_dataset
        from feddst_core.partition import make_partition
        from feddst_core.training import ClientData

        self.attack_of: dict[str, str] = {}  # run id -> attack
        self.gen = torch.Generator().manual_seed(1)
        self.broker = MosquittoBroker(workdir / "mosquitto").start()
        self.coordinator = Coordinator(CloudSettings(broker_url=self.broker.url, state_dir=workdir / "state",
                                                     heartbeat_s=2.0, mqtt_username=None))
        if not self.coordinator.start():
            raise RuntimeError("the coordinator cannot connect to mosquitto")
        data = load_dataset("digits")
        part = make_partition(SETTING["partition"], data.y_train, data.y_test, CLIENTS, SETTING["seed"],
                              SETTING["classes_per_client"], SETTING["samples_per_class"])
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        self.devices = []
        for i in range(CLIENTS):
            idx = torch.from_numpy(part.train[i])
            share = ClientData(x[idx], y[idx])
            self.devices.append(FakeDevice(f"dev-{i:03d}", self.broker.port, index=i, data=share,
                                           sample_count=len(share), heartbeat_s=1.0,
                                           tamper=self._tamper if i == 0 else None).start())
        end = time.monotonic() + 60
        while len(self.coordinator.registry.online_ids()) < CLIENTS:
            if time.monotonic() > end:
                raise RuntimeError("the devices did not come online")
            time.sleep(0.1)

    def _tamper(self, update, model):  # noqa: ANN001, ANN202
        from feddst_core.models import get_model_spec
        from feddst_core.wire_format import model_from_tensors, update_message, update_to_model

        attack = self.attack_of.get(update.run_id, "none")
        if attack == "none":
            return update
        spec = get_model_spec("digits_cnn")
        g_params, g_masks = model_from_tensors(model.tensors, spec.masked_names())
        params, masks = update_to_model(update, g_masks)
        bad = poison(attack, params, masks, g_params, self.gen)
        return update_message(update.run_id, update.server_round, update.device_id, bad, g_masks, masks,
                              update.sample_count, update.train_loss, update.compute_s)

    def run(self, settings: dict, attack: str) -> tuple[float, float, str]:
        from cloud.run_config import EvalConfig, RunConfig

        s = SETTING
        # quorum 1, no retries: a round whose updates are all rejected (diverged devices) ends the run
        partition = {k: s[k] for k in ("partition", "clients", "classes_per_client", "samples_per_class")}
        config = RunConfig(model="digits_cnn", round_timeout_s=30, quorum=1, max_round_retries=0,
                           min_devices=CLIENTS, **{k: v for k, v in s.items() if k not in partition},
                           eval=EvalConfig(dataset="digits", eval_every=s["rounds"], **partition), **settings)
        run = self.coordinator.create_run(config)
        self.attack_of[run.id] = attack
        self.coordinator.start_run(run.id)
        final = self.coordinator.wait_for_run(run.id, 1800)
        row, rounds = self.coordinator.get_run(run.id)
        rejected = {k: v for k, v in row.counters.items() if k.startswith("invalid_")}
        status = final.status + (f" ({final.error})" if final.error else "")
        if rejected:
            status += f"; rejected {rejected}"
        if final.status == "completed":
            return rounds[-1]["accuracy"], rounds[-1]["global_accuracy"], status
        # failed (every device diverged on a poisoned model: their NaN updates are rejected): the last model
        from cloud.evaluation import HeldOutEvaluator
        from feddst_core.models import get_model_spec

        assert config.eval is not None
        params, _ = self.coordinator.store.load_model(run.id)
        evaluator = HeldOutEvaluator(get_model_spec("digits_cnn"), config.eval, config.seed, None)  # digits: no dir
        acc, global_acc = evaluator.evaluate(params)
        return acc, global_acc, status

    def close(self) -> None:
        for device in self.devices:
            device.stop()
        self.coordinator.close()
        self.broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("live", "sim"), default="live")
    parser.add_argument("--clip", type=float, default=2.0, help="clip_update_norm of the clipping rows")
    parser.add_argument("--partition", choices=("iid", "pathological"), default="iid")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    SETTING["partition"] = args.partition
    fleet = None
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="feddst-poisoning-") as tmp:
        try:
            if args.mode == "live":
                fleet = LiveFleet(Path(tmp))
            for aggregation, guardrails, settings in rows_to_run(args.clip):
                for attack in ATTACKS:
                    t0 = time.perf_counter()
                    acc, global_acc, status = (fleet.run(settings, attack) if fleet is not None
                                               else run_simulated(settings, attack))
                    results.append({"aggregation": aggregation, "guardrails": guardrails, "attack": attack,
                                    "accuracy": acc, "global_accuracy": global_acc, "status": status})
                    print(f"{aggregation:>12}  {guardrails:>9}  {attack:>6}: accuracy {acc:.4f} (global "
                          f"{global_acc:.4f}), {status}, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                          flush=True)
        finally:
            if fleet is not None:
                fleet.close()
    without_attacker, _, _ = run_simulated({"aggregation": "mean"}, "absent")
    clean = next(r for r in results if r["aggregation"] == "mean" and r["guardrails"] == "none"
                 and r["attack"] == "none")
    attacked = [r for r in results if r["attack"] != "none" and (r["aggregation"], r["guardrails"]) != ("mean", "none")]
    worst = {a: max(clean["accuracy"] - r["accuracy"] for r in attacked if r["attack"] == a) for a in ATTACKS[1:]}
    best = {a: min(clean["accuracy"] - r["accuracy"] for r in attacked if r["attack"] == a) for a in ATTACKS[1:]}
    out = {"mode": args.mode, "setting": SETTING, "scale": SCALE, "clip_update_norm": args.clip,
           "clean_accuracy": clean["accuracy"], "clean_global_accuracy": clean["global_accuracy"],
           "without_attacker_accuracy": without_attacker, "rows": results,
           "best_guarded_gap_points": {a: round(100 * v, 2) for a, v in best.items()},
           "worst_guarded_gap_points": {a: round(100 * v, 2) for a, v in worst.items()},
           "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"mode {args.mode}, partition {args.partition}; clean accuracy (mean, no attack) {clean['accuracy']:.4f}; "
          f"without the attacker (simulated) {without_attacker:.4f}")
    print(f"{'aggregation':>12}  {'guardrails':>10}  {'attack':>6}  accuracy  gap (points)")
    for r in results:
        print(f"{r['aggregation']:>12}  {r['guardrails']:>10}  {r['attack']:>6}  {r['accuracy']:.4f}  "
              f"{100 * (clean['accuracy'] - r['accuracy']):+6.2f}  {r['status']}")
    print(f"guarded rows, gap to clean in points: best {out['best_guarded_gap_points']}, "
          f"worst {out['worst_guarded_gap_points']}; {out['seconds']} s")


if __name__ == "__main__":
    main()
