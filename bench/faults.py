"""Fault benchmark: a digits run through real mosquitto, a real ``feddst cloud serve`` and 6 real agents, per fault.

Every scenario is one run on the same fleet (one mosquitto with persistence on, one coordinator process,
``--agents`` agent processes with ``--state-dir``, partition i/N of digits, fixed seeds):

* ``fault_free``: the reference (its wall time and final model);
* ``coordinator_kill9``: the coordinator is ``kill -9``-ed while round ``rounds // 2 + 1`` is open and
  started again on its state dir (it resumes the run by itself, reopening that round);
* ``broker_restart``: mosquitto is stopped (SIGTERM) while that round is open and started again 2 s later;
* ``agent_killed_mid_upload``: a selected agent is ``kill -9``-ed right after it logged its trained update
  for that round, and restarted (it re-sends the update it kept on disk, or trains again on the Task it
  is re-sent when it registers); while it is away the next round may be drawn without it, so
  ``same_final_model`` is null;
* ``churn_30pct``: from the run's start and every ``CHURN_EVERY_S`` = 3 s until it ends, 30 % of the agents
  (2 of 6) are ``kill -9``-ed and restarted, chosen among the *settled* ones: an agent is settled once its
  current process has trained one round (logged ``trained``) or has been up ``CHURN_SETTLE_S`` = 60 s (one
  deadline).
  So every device is churned again and again, but each restarted one gets the chance to finish one local
  round (a restarted agent imports torch for its first task, 5-20 s on a loaded 2-core machine: killing
  it sooner would be a rate at which no device ever trains). Quorum 2 (below ``clients_per_round``), so
  which updates a round closes with is timing: ``same_final_model`` is null; the row's ``agents_killed``
  counts the kills while the run ran;
* ``network_cut``: every packet to and from the first agent that gets that round's Task is dropped for
  ``CUT_S`` = 75 s, longer than the 60 s deadline (``iptables -j DROP`` in its namespace: its sockets stay
  open, nothing answers, as on a dead cellular link); the round misses its quorum at the deadline and is
  retried with a stand-in (``same_final_model`` null: who stands in depends on who is online);
* ``packet_loss_5pct``: for the whole run each packet to and from every agent is dropped with 5 %
  probability, each direction on its own (``iptables -m statistic --mode random``); TCP turns the loss
  into delay, so with quorum = ``clients_per_round`` the same updates are aggregated and the final model
  is compared.

The two network scenarios need the agents in network namespaces (root, ``ip`` and ``iptables``:
``field_trial/link_faults.py``); then every scenario's agents run in one (veth to the host, the broker
listening on the veths' host ends too), so the fault-free reference is measured on the same path.
Without them (or with ``--no-netns``) those two rows say ``skipped`` and why. The namespaces and rules are
removed when the bench ends, also after a failure.

Per scenario: ``completed`` (the run ended ``completed``), ``rounds_rerun`` (rounds reopened after a
coordinator restart plus deadline retries), ``updates_lost`` (updates an agent logged as handed to its MQTT
client for a round of the run, ``SENT``, that the round's record does not list as accepted: an upper bound,
since a publish paho took but could not deliver before the agent was killed counts too; updates trained
but never handed over, the agent killed first, are listed as ``trained_not_sent``, and an update a
``network_cut`` kept from the broker until after its round closed as ``updates_cut_off``: neither could
arrive), ``overhead_ratio``
(wall time / the fault-free run's), ``same_final_model`` (every tensor bit-equal to the fault-free
run's; null where replies cannot be deterministic) and ``agents_killed`` (agent ``kill -9``s while the run
ran).

    python bench/faults.py            # the table
    python bench/faults.py --json     # one JSON object {"scenarios": [...]}
    python bench/faults.py --only network_cut --only packet_loss_5pct
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from field_trial.link_faults import AgentNamespaces

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "cloud"))

TRAINED = re.compile(r"trained (\S+) round (\d+):")
SENT = re.compile(r"stage timing (\S+) round (\d+):")
"""The agent's line when a process first hands a round's update to its MQTT client (``EdgeAgent``'s stage
timing: after training, or for an update restored from ``--state-dir`` after a restart)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


ROUND_TIMEOUT_S = 60.0
CUT_S = ROUND_TIMEOUT_S + 15.0
"""How long ``network_cut`` drops one selected agent's packets: longer than the round's deadline."""
CHURN_EVERY_S = 3.0
"""``churn_30pct``: a wave of kills every this many seconds, the first at the run's start."""
CHURN_SETTLE_S = ROUND_TIMEOUT_S
"""``churn_30pct``: an agent whose current process has not trained yet may be killed once it is this old: one
round deadline, the time a selected device is given to answer (at load 20 a restarted agent needed 16-25 s
to its first update: about 5 s to start and connect, then torch's import on its first task)."""
LOSS_PCT = 5.0
"""``packet_loss_5pct``: each packet to and from every agent is dropped with this probability (percent)."""


def run_config(rounds: int, agents: int, quorum: int) -> dict[str, Any]:
    return dict(model="digits_cnn", algorithm="fedavgm", rounds=rounds, clients_per_round=4, min_devices=agents,
                local_epochs=10, batch_size=8, lr=0.05, seed=7, round_timeout_s=ROUND_TIMEOUT_S,
                device_wait_s=120.0, quorum=quorum, max_round_retries=4)


class Fleet:
    """mosquitto (persistence on) + a coordinator process + agent processes, in ``workdir``; with ``spaces``
    each agent runs in its own network namespace (``field_trial.link_faults``), reaching the broker over a veth."""

    def __init__(self, workdir: Path, agents: int, spaces: AgentNamespaces | None = None):
        from brokers import MosquittoBroker
        from coordinator_harness import TEST_COORDINATOR_PUBLIC_KEY
        from coordinator_process import CoordinatorProcess

        self.workdir, self.count = workdir, agents
        persist = workdir / "mosquitto-data"
        persist.mkdir(parents=True)
        self.spaces = spaces
        self.broker = MosquittoBroker(workdir / "mosquitto", extra_config=[
            "persistence true", f"persistence_location {persist}/", "autosave_interval 1",
            "max_queued_messages 0"])
        if spaces is not None:  # each agent's namespace reaches the broker on its veth's host end
            for i in range(agents):
                spaces.add(i)
            self.broker.extra_config += [f"listener {self.broker.port} {ip}" for ip in spaces.host_addresses()]
        self.broker.start()
        self.cut_off: set[tuple[str, int]] = set()  # (device, round) updates a network cut kept from the broker
        # heartbeat_s 2: online = seen within 6 s; agents beat every 1 s
        self.coordinator = CoordinatorProcess(workdir / "coordinator", self.broker.url, heartbeat_s=2.0)
        self.public_key = TEST_COORDINATOR_PUBLIC_KEY
        self.agents: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.log_offset: dict[str, int] = {}  # where the agent's latest process began writing its log
        self.starts: dict[str, int] = {}
        self.kills = 0  # kill -9s so far (a scenario's row counts those during its run)

    def device_ids(self) -> list[str]:
        return [f"dev-{i}" for i in range(self.count)]

    def agent_log(self, device_id: str) -> Path:
        return self.workdir / f"{device_id}.log"

    def start_agent(self, device_id: str) -> None:
        i = int(device_id.split("-")[1])
        cmd = [sys.executable, "-m", "feddst_cli.main", "agent", "run", "--broker", self.broker.url,
               "--device-id", device_id, "--dataset", "digits", "--partition", f"{i}/{self.count}",
               "--classes-per-client", "2", "--samples-per-class", "20", "--seed", "7", "--threads", "1",
               "--heartbeat-s", "1", "--coordinator-public-key", self.public_key,
               "--state-dir", str(self.workdir / "agent-state" / device_id)]
        if self.spaces is not None:
            broker_url = f"mqtt://{self.spaces.addresses[i]}:{self.broker.port}"
            cmd = ["ip", "netns", "exec", self.spaces.namespaces[i]] + [broker_url if c == self.broker.url else c
                                                                         for c in cmd]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        path = self.agent_log(device_id)
        self.log_offset[device_id] = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as out:
            self.agents[device_id] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.started_at[device_id] = time.monotonic()
        self.starts[device_id] = self.starts.get(device_id, 0) + 1

    def settled(self, device_id: str, max_wait_s: float) -> bool:
        """The agent's latest process trained a round (its log since that start has a ``trained`` line) or
        has run for ``max_wait_s``."""
        if time.monotonic() - self.started_at[device_id] >= max_wait_s:
            return True
        path = self.agent_log(device_id)
        if not path.exists():
            return False
        with open(path, "rb") as f:
            f.seek(self.log_offset.get(device_id, 0))
            return TRAINED.search(f.read().decode(errors="replace")) is not None

    def wait_all_online(self, timeout_s: float = 180) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            devices = self.coordinator.api("GET", "/api/devices").json()
            if sum(d["status"] == "online" for d in devices) >= self.count:
                return
            time.sleep(0.5)
        raise TimeoutError("the agents did not all come online")

    def kill_agent(self, device_id: str) -> None:
        proc = self.agents[device_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1

    def start(self) -> Fleet:
        self.coordinator.start()
        for device_id in self.device_ids():
            self.start_agent(device_id)
        return self

    def stop(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.coordinator.stop()
        self.broker.stop()

    def trained(self, run_id: str, line: re.Pattern[str] = TRAINED) -> set[tuple[str, int]]:
        """(device, round) of every update the agents logged as trained for the run (``line=SENT``: as handed
        to their MQTT client)."""
        out: set[tuple[str, int]] = set()
        for device_id in self.device_ids():
            text = self.agent_log(device_id).read_text(errors="replace") if self.agent_log(device_id).exists() else ""
            out.update((device_id, int(r)) for run, r in line.findall(text) if run == run_id)
        return out


def final_tensors(fleet: Fleet, run_id: str) -> dict[str, Any]:
    from feddst_core.model_file import decode_model_file

    response = fleet.coordinator.api("GET", f"/api/runs/{run_id}/model")
    model = decode_model_file(response.content, run_id)
    return {**model.params, **{f"{n}.mask": m for n, m in model.masks.items()}}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_round_open(fleet: Fleet, run_id: str, server_round: int, timeout_s: float = 180) -> None:
    """Return as soon as the run collects ``server_round`` (an error if it got past it unseen)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        run = fleet.coordinator.run(run_id)
        phase = run.get("phase") or {}
        if phase.get("name") == "collecting" and phase.get("round") == server_round:
            return
        if len(run["rounds"]) >= server_round or run["status"] != "running":
            raise RuntimeError(f"round {server_round} closed before the fault could be injected")
        time.sleep(0.02)
    raise TimeoutError(f"round {server_round} never opened")


def wait_run_end(fleet: Fleet, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The run once it is no longer created or running; polls on while a killed coordinator restarts (its API
    refuses connections meanwhile)."""
    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            run = fleet.coordinator.run(run_id)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if run["status"] not in ("created", "running"):
            return run
        time.sleep(0.1)
    raise TimeoutError(f"run {run_id} did not end within {timeout_s:.0f} s")


def fault_coordinator_kill9(fleet: Fleet, run_id: str, server_round: int) -> None:
    wait_round_open(fleet, run_id, server_round)
    fleet.coordinator.kill9()
    fleet.coordinator.start()


def fault_broker_restart(fleet: Fleet, run_id: str, server_round: int) -> None:
    wait_round_open(fleet, run_id, server_round)
    fleet.broker.restart(down_s=2.0)


def fault_agent_killed_mid_upload(fleet: Fleet, run_id: str, server_round: int) -> None:
    wait_round_open(fleet, run_id, server_round)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        for device_id, r in fleet.trained(run_id):
            if r == server_round:
                fleet.kill_agent(device_id)
                fleet.start_agent(device_id)
                return
        time.sleep(0.02)
    raise TimeoutError(f"no agent trained round {server_round}")


def wait_selected(fleet: Fleet, run_id: str, server_round: int, timeout_s: float = 30) -> str:
    """The first agent that logged its Task for ``server_round`` of ``run_id``."""
    line = f"selected for {run_id} round {server_round} "
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for device_id in fleet.device_ids():
            path = fleet.agent_log(device_id)
            if path.exists() and line in path.read_text(errors="replace"):
                return device_id
        time.sleep(0.01)
    raise TimeoutError(f"no agent logged its task for round {server_round}")


def fault_network_cut(fleet: Fleet, run_id: str, server_round: int) -> None:
    """Drop every packet of one selected agent for ``CUT_S`` (> the deadline), from its Task's arrival on."""
    assert fleet.spaces is not None
    wait_round_open(fleet, run_id, server_round)
    device_id = wait_selected(fleet, run_id, server_round)
    index = fleet.device_ids().index(device_id)
    fleet.spaces.cut(index)
    fleet.cut_off.add((device_id, server_round))
    log(f"  cut {device_id}'s network for {CUT_S:.0f} s (round {server_round}'s deadline is {ROUND_TIMEOUT_S:.0f} s)")
    try:
        time.sleep(CUT_S)
    finally:
        fleet.spaces.restore(index)


def start_packet_loss(fleet: Fleet) -> None:
    """Before the run: every agent's packets are dropped with ``LOSS_PCT`` % probability each way."""
    assert fleet.spaces is not None
    for index in range(fleet.count):
        fleet.spaces.set_loss(index, LOSS_PCT)


def churn(fleet: Fleet, stop: threading.Event, every_s: float = CHURN_EVERY_S,
          settle_s: float = CHURN_SETTLE_S) -> None:
    """At once and then every ``every_s`` until ``stop``: kill -9 and restart 30 % of the agents, chosen among
    the settled ones (:meth:`Fleet.settled`: trained once since their restart, or up ``settle_s``)."""
    rng = random.Random(1)
    while not stop.is_set():
        up = [d for d in fleet.device_ids() if fleet.settled(d, settle_s)]
        victims = rng.sample(up, min(len(up), max(1, round(0.3 * fleet.count))))
        for device_id in victims:
            fleet.kill_agent(device_id)
        for device_id in victims:
            fleet.start_agent(device_id)
        stop.wait(every_s)


@dataclass(frozen=True)
class Scenario:
    """One fault: ``fault`` runs once the run started (it injects at round ``rounds // 2 + 1``), ``setup``
    before it starts; ``deterministic``: replies are the fault-free run's, so the final model is compared;
    ``needs_netns``: the agents must be in network namespaces."""

    name: str
    fault: Callable[[Fleet, str, int], None] | None = None
    deterministic: bool = False
    quorum: int = 2
    setup: Callable[[Fleet], None] | None = None
    needs_netns: bool = False


def run_scenario(fleet: Fleet, scenario: Scenario, config: dict[str, Any]) -> dict[str, Any]:
    log(f"scenario {scenario.name} ...")
    fleet.wait_all_online()
    created = fleet.coordinator.api("POST", "/api/runs", json=config)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    fleet.coordinator.wait_run(run_id, lambda r: True, 5, "the run")
    stop_churn = threading.Event()
    churner = injector = None
    try:
        if scenario.setup is not None:
            scenario.setup(fleet)
        started, kills_before = time.monotonic(), fleet.kills
        assert fleet.coordinator.api("POST", f"/api/runs/{run_id}/start").status_code == 200
        if scenario.name.startswith("churn"):
            churner = threading.Thread(target=churn, args=(fleet, stop_churn), daemon=True)
            churner.start()
        elif scenario.fault is not None:  # in a thread: a fault that lasts (a cut) must not delay seeing the end
            injector = threading.Thread(target=scenario.fault, args=(fleet, run_id, config["rounds"] // 2 + 1),
                                        daemon=True)
            injector.start()
        done = wait_run_end(fleet, run_id, 900)
        seconds, killed = time.monotonic() - started, fleet.kills - kills_before
    finally:
        if injector is not None:
            injector.join()
        if churner is not None:
            stop_churn.set()
            churner.join()
        if fleet.spaces is not None:
            for index in range(fleet.count):
                fleet.spaces.restore(index)
    accepted = {(d, r["round"]) for r in done["rounds"] for d in r["accepted"]}
    trained, sent = fleet.trained(run_id), fleet.trained(run_id, SENT)
    not_accepted = sent - accepted
    cut_off = sorted(not_accepted & fleet.cut_off)
    lost = sorted(not_accepted - fleet.cut_off)
    counters = done["counters"]
    return {"name": scenario.name, "run_id": run_id, "completed": done["status"] == "completed",
            "error": done.get("error"), "rounds_completed": len(done["rounds"]),
            "rounds_rerun": int(counters.get("rounds_reopened", 0)) + int(counters.get("round_retries", 0)),
            "updates_lost": len(lost), "lost": [f"{d}@{r}" for d, r in lost],
            "updates_cut_off": [f"{d}@{r}" for d, r in cut_off], "seconds": seconds, "agents_killed": killed,
            "trained_not_sent": [f"{d}@{r}" for d, r in sorted(trained - sent - accepted)],
            "model": final_tensors(fleet, run_id) if done["status"] == "completed" else None}


SCENARIOS = [
    Scenario("coordinator_kill9", fault_coordinator_kill9, deterministic=True, quorum=4),
    Scenario("broker_restart", fault_broker_restart, deterministic=True, quorum=4),
    Scenario("agent_killed_mid_upload", fault_agent_killed_mid_upload),  # its absence may change the next draw
    Scenario("churn_30pct"),
    # quorum 4: the cut agent's round misses its deadline and is retried with a stand-in; who stands in
    # depends on which devices were online then, so the final model is not compared
    Scenario("network_cut", fault_network_cut, quorum=4, needs_netns=True),
    # TCP hides the loss as delay: with quorum = clients_per_round the same updates are aggregated
    Scenario("packet_loss_5pct", deterministic=True, quorum=4, setup=start_packet_loss, needs_netns=True),
]


def warm_up(fleet: Fleet, agents: int) -> None:
    """One round on every agent before the reference: each agent imports torch on its first task (5-20 s on
    a loaded machine), which would otherwise be charged to the fault-free run and deflate every ratio."""
    config = {**run_config(1, agents, agents), "clients_per_round": agents}
    row = run_scenario(fleet, Scenario("warm_up", quorum=agents), config)
    log(f"  warm-up round: {row['seconds']:.1f} s")


def run_all(args: argparse.Namespace, workdir: Path, spaces: AgentNamespaces | None,
            netns_problem: str | None) -> list[dict[str, Any]]:
    """The fault-free reference, then every selected scenario on one fleet (skipped rows say why)."""
    fleet = Fleet(workdir, args.agents, spaces)
    try:
        fleet.start()
        warm_up(fleet, args.agents)
        base = run_scenario(fleet, Scenario("fault_free", quorum=4), run_config(args.rounds, args.agents, 4))
        base["same_final_model"] = None  # the reference itself
        rows = [base]
        for scenario in SCENARIOS:
            if args.only and scenario.name not in args.only:
                continue
            if scenario.needs_netns and spaces is None:
                log(f"scenario {scenario.name} skipped: {netns_problem}")
                rows.append({"name": scenario.name, "skipped": netns_problem})
                continue
            row = run_scenario(fleet, scenario, run_config(args.rounds, args.agents, scenario.quorum))
            row["same_final_model"] = (same_model(row["model"], base["model"])
                                       if scenario.deterministic and row["model"] is not None
                                       and base["model"] is not None else None)
            rows.append(row)
        return rows
    finally:
        fleet.stop()


def main() -> None:
    from field_trial.link_faults import AgentNamespaces, link_faults_problem

    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,  # the scenarios and churn's rule
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--only", action="append", help="Run only these scenarios (repeatable).")
    parser.add_argument("--no-netns", action="store_true",
                        help="Agents on loopback, not in network namespaces (skips network_cut and packet loss).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    parser.add_argument("--workdir", type=Path, help="Keep the logs and state here (default: a temporary dir).")
    args = parser.parse_args()
    netns_problem = "--no-netns" if args.no_netns else link_faults_problem()
    with tempfile.TemporaryDirectory(prefix="feddst-faults-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        spaces = AgentNamespaces() if netns_problem is None else None
        try:
            rows = run_all(args, workdir, spaces, netns_problem)
        finally:
            if spaces is not None:
                spaces.close()
    base_seconds = rows[0]["seconds"]
    scenarios = [{"name": r["name"], "completed": None, "rounds_rerun": None, "updates_lost": None,
                  "overhead_ratio": None, "same_final_model": None, "skipped": r["skipped"]} if "skipped" in r else
                 {"name": r["name"], "completed": r["completed"], "rounds_rerun": r["rounds_rerun"],
                  "updates_lost": r["updates_lost"], "overhead_ratio": round(r["seconds"] / base_seconds, 3),
                  "same_final_model": r["same_final_model"], "rounds_completed": r["rounds_completed"],
                  "seconds": round(r["seconds"], 2), "lost": r["lost"], "updates_cut_off": r["updates_cut_off"],
                  "error": r["error"], "agents_killed": r["agents_killed"],
                  "trained_not_sent": r["trained_not_sent"]} for r in rows]
    if args.json:
        print(json.dumps({"scenarios": scenarios, "agents": args.agents, "rounds": args.rounds,
                          "agents_in_namespaces": spaces is not None}))
        return
    print(f"{'scenario':<26}{'completed':>10}{'rounds':>8}{'re-run':>8}{'lost':>6}{'killed':>8}{'overhead':>10}"
          "  same model")
    for s in scenarios:
        if s.get("skipped"):
            print(f"{s['name']:<26}  skipped: {s['skipped']}")
            continue
        print(f"{s['name']:<26}{str(s['completed']):>10}{s['rounds_completed']:>8}{s['rounds_rerun']:>8}"
              f"{s['updates_lost']:>6}{s['agents_killed']:>8}{s['overhead_ratio']:>9.2f}x  {s['same_final_model']}")


if __name__ == "__main__":
    main()
