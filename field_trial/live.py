"""``feddst trial run``: the spec's algorithms, one after another, over a real broker with real agents.

Process orchestration is ``feddst demo``'s :class:`~feddst_cli.demo_command.DemoStack` (broker,
coordinator, agent processes, idempotent shutdown); this module only adds what a trial needs: one
agent per spec device with its link profile (``shaper = "agent"``: the agent's own token bucket and
delay, ``edge_agent.link_shaping``), its wire counters file, and per-round sampling of those counters.

Wire bytes: when the coordinator's round records carry per-device MQTT wire bytes
(``wire_by_device``: ``{device: {"up": n, "down": n}}``) those are used; otherwise the agents' own
counters (every byte paho wrote to / read from the socket) sampled when each round record appears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feddst_cli.demo_command import DemoError, DemoStack
from field_trial.netem import NetemLinks
from field_trial.private_mosquitto import PrivateMosquitto
from field_trial.spec import DEVICE_TORCH_THREADS, TrialSpec

HEARTBEAT_S = 5.0
RUN_TIMEOUT_S = 6 * 3600.0


class TrialStack(DemoStack):
    """The demo's stack, with one shaped agent per spec device."""

    def __init__(self, out: Path, spec: TrialSpec):
        super().__init__(out, spec.device_count, spec.trial.seed)
        self.spec = spec
        self.links: NetemLinks | None = NetemLinks() if spec.trial.shaper == "netem" else None
        self.counters_dir = out / "wire"
        self.counters_dir.mkdir(parents=True, exist_ok=True)
        self.mosquitto: PrivateMosquitto | None = None

    def start_coordinator(self, url: str) -> None:
        """The demo's coordinator, allowed to read the spec's evaluation data (its data_roots)."""
        from cloud.coordinator import Coordinator
        from cloud.settings import CloudSettings

        roots = [str(Path(self.spec.data.data_dir).resolve().parent)] if self.spec.data.data_dir else []
        settings = CloudSettings(broker_url=url, state_dir=self.state_dir / "coordinator", mqtt_username=None,
                                 heartbeat_s=HEARTBEAT_S, mqtt_client_id="trial-coordinator", data_roots=roots)
        coordinator = self.coordinator = Coordinator(settings)
        if not coordinator.start():
            raise DemoError(f"the coordinator cannot connect to the broker {url}")

    def start_broker(self) -> str:
        """The embedded broker; with netem it listens on every address, so the devices' veths reach it."""
        if self.links is None:
            return super().start_broker()
        from cloud.embedded_broker import EmbeddedBroker

        broker = self.broker = EmbeddedBroker(host="0.0.0.0").start()
        return broker.url

    def start_private_mosquitto(self, sys_interval_s: int = 1) -> str:
        """A private mosquitto (config, log in ``out/mosquitto``) instead of the embedded broker: MQTT 5, and
        ``$SYS/broker/bytes`` every ``sys_interval_s`` seconds. Raises ``MosquittoError`` if it is missing."""
        host = "127.0.0.1" if self.links is None else "0.0.0.0"
        self.mosquitto = PrivateMosquitto(self.out / "mosquitto", host=host, sys_interval_s=sys_interval_s).start()
        return self.mosquitto.url

    def agent_command(self, url: str, index: int, device_id: str, profile_name: str) -> list[str]:
        spec, d = self.spec, self.spec.data
        profile = spec.profile(profile_name)
        assert self.coordinator is not None
        cmd = [sys.executable, "-m", "feddst_cli.main", "agent", "run", "--broker", url, "--device-id", device_id,
               "--dataset", d.dataset, "--partition", f"{index}/{spec.device_count}", "--partition-kind",
               d.partition, "--classes-per-client", str(d.classes_per_client), "--samples-per-class",
               str(d.samples_per_class), "--beta", str(d.beta), "--seed", str(spec.trial.seed),
               "--threads", str(DEVICE_TORCH_THREADS),
               "--kernels", "dense", "--heartbeat-s", str(HEARTBEAT_S),
               "--coordinator-public-key", self.coordinator.public_key_hex,
               "--upload-format", spec.trial.upload_format, "--compute-factor", str(profile.compute_factor),
               "--wire-counters-file", str(self.counters_dir / f"{device_id}.json")]
        if d.data_dir:
            cmd += ["--data-dir", d.data_dir]
        if spec.trial.shaper == "agent":
            cmd += ["--max-uplink-kbps", str(profile.uplink_kbps), "--downlink-kbps", str(profile.downlink_kbps),
                    "--link-latency-ms", str(profile.latency_ms), "--link-jitter-ms", str(profile.jitter_ms)]
        if self.broker is not None:
            cmd += ["--mqtt-protocol", "3.1.1"]  # the embedded amqtt broker has no MQTT 5
        return cmd

    def start_agents(self, url: str) -> None:
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for index, (device_id, profile) in enumerate(self.spec.device_profiles()):
            cmd = self.agent_command(url, index, device_id, profile)
            if self.links is not None:  # the device's own namespace; it reaches the broker via its veth
                namespace, host_ip = self.links.add(index, self.spec.profile(profile))
                port = url.rsplit(":", 1)[1]
                cmd = ["ip", "netns", "exec", namespace] + [f"mqtt://{host_ip}:{port}" if c == url else c for c in cmd]
            log = open(logs / f"{device_id}.log", "wb")  # noqa: SIM115 - owned by the child
            self.processes.append(subprocess.Popen(cmd, stdout=log,
                                                   stderr=subprocess.STDOUT, env=env, start_new_session=True))
            log.close()

    def shutdown(self) -> None:
        """The demo's shutdown, then every namespace and qdisc this trial created."""
        try:
            super().shutdown()
        finally:
            if self.mosquitto is not None:
                self.mosquitto.stop()
                self.mosquitto = None
            if self.links is not None:
                self.links.close()

    def wire_counters(self) -> dict[str, dict[str, int]]:
        """Each agent's cumulative MQTT bytes now: ``{device: {"up": sent, "down": received}}``."""
        out = {}
        for device_id, _ in self.spec.device_profiles():
            try:
                data = json.loads((self.counters_dir / f"{device_id}.json").read_text(encoding="utf-8"))
                out[device_id] = {"up": int(data["sent_bytes"]), "down": int(data["received_bytes"])}
            except (OSError, ValueError, KeyError):
                out[device_id] = {"up": 0, "down": 0}
        return out

    def coordinator_wire_bytes(self) -> dict[str, int]:
        """The in-process coordinator's MQTT socket bytes so far: ``{"up": sent, "down": received}``."""
        assert self.coordinator is not None
        link = self.coordinator.link
        return {"up": int(link.wire_sent_bytes), "down": int(link.wire_received_bytes)}

    def run_algorithm(self, algorithm: str, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """One live run; returns its report (simulate's schema plus wall-clock and per-device bytes)."""
        from field_trial.trial_report import live_report

        assert self.coordinator is not None
        config = self.spec.run_config(algorithm)
        run = self.coordinator.create_run(config)
        base = self.wire_counters()
        self.coordinator.start_run(run.id)
        started = time.monotonic()
        seen, wire_rows = 0, []
        budget = self.spec.trial.upload_budget_mb * 1e6
        stopped_by_budget = False
        while True:
            row, records = self.coordinator.get_run(run.id)
            for record in records[seen:]:
                now = self.wire_counters()
                wire_rows.append(record.get("wire_by_device") or {
                    d: {k: now[d][k] - base[d][k] for k in ("up", "down")} for d in now})
                progress({"algorithm": algorithm, "round": record["round"], "rounds": config.rounds,
                          "accuracy": record["accuracy"], "upload_bytes": record["upload_bytes"],
                          "download_bytes": record["download_bytes"], "elapsed_s": time.monotonic() - started})
                if budget and record["upload_bytes"] >= budget and row.status == "running":
                    self.coordinator.stop_run(run.id)
                    stopped_by_budget = True
            seen = len(records)
            if row.status != "running" and row.status != "created":
                break
            if time.monotonic() - started > RUN_TIMEOUT_S:
                raise DemoError(f"{algorithm}: no result after {RUN_TIMEOUT_S:.0f} s")
            if all(p.poll() is not None for p in self.processes):
                raise DemoError(f"every agent exited; see {self.out / 'logs'}")
            time.sleep(0.2)
        if row.status != "completed" and not stopped_by_budget:
            raise DemoError(f"{algorithm}: run {run.id} {row.status}: {row.error}; agent logs in {self.out / 'logs'}")
        time.sleep(1.0)  # the agents' last counters (acks, status) reach their files
        final = self.wire_counters()
        totals = {d: {k: final[d][k] - base[d][k] for k in ("up", "down")} for d in final}
        return live_report(config, records, wire_rows, totals, time.monotonic() - started)
