"""``feddst demo``: broker + coordinator + N edge agents on one machine, R rounds of FedDST on digits.

Demo setting (chosen to learn well in 20 rounds on the 1438 built-in digits training images): 8
agents, pathological partition with 2 classes x 60 images per agent (960 images in all; classes are
dealt evenly, so at most 120 images of a class are needed and digits has at least 139 of each),
every agent trains every round (clients_per_round = agents), 5 local epochs, batch 16, lr 0.05,
FedDST at 80% sparsity with readjustment every 5 rounds (alpha 0.05). The same flags in
``feddst simulate --no-client-batching`` give the same accuracy as the demo, round by round:
0.9359 after 20 rounds with seed 0 (global test set 0.9220), both printed on 2026-12-04 on an AMD EPYC after the
agent's input batches became row-major (live6; the same accuracy at rounds 10 and 20 to the last digit). Float
rounding depends on the kernels and the CPU's SIMD clone: 0.9393 after fcstep3 on an Intel Xeon, 0.9478 before it;
the demo alone printed 0.9393 on 2026-12-04 while its agents pooled through torch's channels-last kernel)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from feddst_cli.stack_lifetime import stack_lifetime

if TYPE_CHECKING:  # imported lazily at run time: the demo's --help must stay fast
    from cloud.coordinator import Coordinator
    from cloud.embedded_broker import EmbeddedBroker

CLASSES_PER_CLIENT = 2
SAMPLES_PER_CLASS = 60
LOCAL_EPOCHS = 5
BATCH_SIZE = 16
LR = 0.05
HEARTBEAT_S = 2.0
DEMO_TIMEOUT_S = 900.0


def demo(
    agents: int = typer.Option(8, min=1, help="Number of edge agent processes."),
    rounds: int = typer.Option(20, min=1, help="Federated rounds."),
    broker: str | None = typer.Option(None, help="Use this MQTT broker (mqtt://HOST:PORT) instead of the "
                                      "embedded one."),
    out: Path = typer.Option(Path("runs/demo"), help="Where report.json, metrics.csv, the plot and logs go."),
    seed: int = typer.Option(0, help="Seed of the model, the partition and the selection."),
    serve: bool = typer.Option(False, "--serve", help="After the run, keep the coordinator, its dashboard "
                               "(http://127.0.0.1:API_PORT/), its API and the agents up until Ctrl-C or SIGTERM; "
                               "prints the URL and an operator token for the page."),
    api_port: int = typer.Option(8080, min=0, max=65535, help="Port of the dashboard and API with --serve "
                                 "(loopback only)."),
) -> None:
    """Run the whole system on one machine and write report.json (same schema as `feddst simulate`).

    With --serve, the demo then stays up with its dashboard until Ctrl-C: open the printed URL and paste
    the printed token."""
    out.mkdir(parents=True, exist_ok=True)
    stack = DemoStack(out, agents, seed)
    with stack_lifetime(stack, (DemoError,)):
        url = broker or stack.start_broker()
        stack.start_coordinator(url)
        stack.start_agents(url)
        report = stack.run(rounds)
        if serve:
            _print_summary(report, out)
            stack.serve(api_port)
            return
    _print_summary(report, out)


class DemoError(RuntimeError):
    pass


class DemoStack:
    """Owns every process and thread the demo starts; ``shutdown`` is idempotent and leaves no orphans."""

    def __init__(self, out: Path, agents: int, seed: int):
        self.out, self.agents, self.seed = out, agents, seed
        self.broker: EmbeddedBroker | None = None
        self.coordinator: Coordinator | None = None
        self.processes: list[subprocess.Popen] = []
        self.state_dir = Path(tempfile.mkdtemp(prefix="feddst-demo-"))

    def start_broker(self) -> str:
        from cloud.embedded_broker import EmbeddedBroker

        broker = self.broker = EmbeddedBroker().start()
        return broker.url

    def start_coordinator(self, url: str) -> None:
        from cloud.coordinator import Coordinator
        from cloud.settings import CloudSettings

        settings = CloudSettings(broker_url=url, state_dir=self.state_dir / "coordinator", mqtt_username=None,
                                 heartbeat_s=HEARTBEAT_S, mqtt_client_id="demo-coordinator")
        coordinator = self.coordinator = Coordinator(settings)
        if not coordinator.start():
            raise DemoError(f"the coordinator cannot connect to the broker {url}")

    def start_agents(self, url: str) -> None:
        """Start the agent processes, each given the coordinator's public key (the demo is secure too:
        agents verify every coordinator message; the key pair lives in the demo's temporary state dir)."""
        assert self.coordinator is not None, "start the coordinator first: agents need its public key"
        public_key = self.coordinator.public_key_hex
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for i in range(self.agents):
            cmd = [sys.executable, "-m", "feddst_cli.main", "agent", "run", "--broker", url,
                   "--device-id", f"demo-{i:03d}", "--dataset", "digits", "--partition", f"{i}/{self.agents}",
                   "--classes-per-client", str(CLASSES_PER_CLIENT), "--samples-per-class",
                   str(SAMPLES_PER_CLASS), "--seed", str(self.seed), "--threads", "1",
                   "--heartbeat-s", str(HEARTBEAT_S), "--coordinator-public-key", public_key]
            if self.broker is not None:
                cmd += ["--mqtt-protocol", "3.1.1"]  # the embedded amqtt broker has no MQTT 5
            log = open(logs / f"agent-{i:03d}.log", "wb")  # noqa: SIM115 - owned by the child
            self.processes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                   start_new_session=True))
            log.close()

    def run(self, rounds: int) -> dict:
        from tqdm import tqdm

        from cloud.run_config import EvalConfig, RunConfig

        assert self.coordinator is not None
        config = RunConfig(
            name="feddst demo", algorithm="feddst", model="digits_cnn", sparsity=0.8, readjust_ratio=0.05,
            readjust_every=5, clients_per_round=self.agents, rounds=rounds, local_epochs=LOCAL_EPOCHS,
            batch_size=BATCH_SIZE, lr=LR, seed=self.seed, round_timeout_s=60.0, quorum=max(1, self.agents // 2),
            min_devices=self.agents, device_wait_s=90.0,
            eval=EvalConfig(dataset="digits", clients=self.agents, classes_per_client=CLASSES_PER_CLIENT,
                            samples_per_class=SAMPLES_PER_CLASS, eval_every=1))
        run = self.coordinator.create_run(config)
        self.coordinator.start_run(run.id)
        bar = tqdm(total=rounds, desc="feddst demo rounds", unit="round")
        bar.set_postfix_str(f"waiting for {self.agents} agents")
        seen = 0
        end = time.monotonic() + DEMO_TIMEOUT_S
        while True:
            row, records = self.coordinator.get_run(run.id)
            for record in records[seen:]:
                bar.update(1)
                bar.set_postfix({"acc": f"{record['accuracy']:.3f}" if record["accuracy"] is not None else "-",
                                 "up_MB": f"{record['upload_bytes'] / 1e6:.2f}"})
            seen = len(records)
            dead = [p for p in self.processes if p.poll() is not None]
            if row.status != "running" or time.monotonic() > end:
                break
            if len(dead) == len(self.processes):
                raise DemoError(f"every agent exited; see {self.out / 'logs'}")
            time.sleep(0.1)
        bar.close()
        if row.status != "completed":
            raise DemoError(f"run {run.id} {row.status}: {row.error}; agent logs in {self.out / 'logs'}")
        return _write_report(self.out, config, records)

    def serve(self, api_port: int) -> None:
        """The coordinator's dashboard and API on 127.0.0.1:``api_port`` until Ctrl-C or SIGTERM."""
        import uvicorn

        from cloud.app import create_app

        assert self.coordinator is not None
        token, _ = self.coordinator.tokens.create("operator", name="feddst demo --serve")
        server = uvicorn.Server(uvicorn.Config(create_app(coordinator=self.coordinator), host="127.0.0.1",
                                               port=api_port, log_level="warning"))

        def announce_once_listening() -> None:  # the URL only once it answers, never a refused connection
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                typer.echo(f"dashboard: http://127.0.0.1:{api_port}/  (API under /api, OpenAPI at /openapi.json)")
                typer.echo(f"operator token for the page (valid while the demo runs): {token}")
                typer.echo("press Ctrl-C to stop", err=True)

        threading.Thread(target=announce_once_listening, name="demo-announce", daemon=True).start()
        try:
            server.run()  # uvicorn handles SIGINT/SIGTERM: it returns (or re-raises the signal) on either
        except KeyboardInterrupt:
            pass
        if not server.started:
            raise DemoError(f"could not serve the dashboard on 127.0.0.1:{api_port} (port in use?)")

    def stop_agents(self) -> None:
        """SIGTERM every agent process (they disconnect cleanly), SIGKILL what is left after 10 s."""
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes = []

    def shutdown(self) -> None:
        self.stop_agents()
        if self.coordinator is not None:
            self.coordinator.close()
            self.coordinator = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        shutil.rmtree(self.state_dir, ignore_errors=True)


def dense_update_bytes(model: str) -> int:
    """Encoded size of one dense FedAvg update of ``model`` (real encoder, HMAC tag included)."""
    import torch

    from feddst_core.models import get_model_spec, init_params
    from feddst_core.wire_format import update_message
    from protocol import encoded_size

    spec = get_model_spec(model)
    params = init_params(spec, torch.Generator().manual_seed(0))
    full = {n: torch.ones_like(params[n], dtype=torch.bool) for n in spec.masked_names()}
    return encoded_size(update_message("demo", 1, "demo-000", params, full, full, 80, 0.0, 0.0))


def _write_report(out: Path, config: object, records: list[dict]) -> dict:
    from simulator.engine import RoundRecord
    from simulator.report import build_report, write_report

    rows = [RoundRecord(round=r["round"], upload_bytes=r["upload_bytes"], download_bytes=r["download_bytes"],
                        density=r["density"], train_loss=r.get("train_loss") or 0.0, seconds=r.get("seconds") or 0.0,
                        accuracy=r["accuracy"], global_accuracy=r["global_accuracy"]) for r in records]
    report = build_report(config.algorithm, config.report_config(), rows)  # type: ignore[attr-defined]
    updates = sum(len(r["accepted"]) for r in records)
    report["live"] = {"updates": updates,
                      "dense_fedavg_upload_bytes": updates * dense_update_bytes(config.model)}  # type: ignore[attr-defined]
    write_report(out, report)
    return report


def _print_summary(report: dict, out: Path) -> None:
    up = report["total_upload_bytes"]
    dense = report["live"]["dense_fedavg_upload_bytes"]
    typer.echo(f"final accuracy {report['final_accuracy']:.4f} (global test set "
               f"{report['rounds'][-1]['global_accuracy']:.4f}) after {len(report['rounds'])} evaluated rounds")
    typer.echo(f"uploaded {up / 1e6:.2f} MB; dense FedAvg would have uploaded {dense / 1e6:.2f} MB "
               f"for the same {report['live']['updates']} updates ({up / dense:.1%})")
    typer.echo(f"wrote {out / 'report.json'}, {out / 'metrics.csv'}, {out / 'accuracy_vs_upload.png'}")
