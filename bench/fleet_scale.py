"""Part 2 of ``bench/live_overhead.py``: one round with N protocol-level fake agents through mosquitto.

The fake agents (no training; one MQTT connection each, spread over ``procs`` processes, one model
receiver per process standing in for its selected fakes) each return a density-0.2 update of the
MNIST CNN. The coordinator runs in its own process (``--_coordinator``), the fakes in theirs
(``--_fake``), so each side's CPU time can be read apart.

Breakdown of the round (``scale_breakdown`` in ``--json``), all from wall-clock timestamps on this
one machine and CPU seconds read from ``/proc`` (via psutil) at the round's start and end:

* timeline (seconds from the round's start, ``started_at``): ``broadcast`` (the coordinator signs,
  encodes and hands the model and Task to paho), ``model_at`` (the last fake process holding the model
  and the Task), ``fakes_sent_at`` (the last fake process done encoding and handing its updates to
  paho: the **bench's** cost), ``last_update_at`` (the last accepted update reaching the coordinator's
  MQTT callback), ``closed_at`` (the round closed: every queued update decoded, checked and added,
  the aggregation finished);
* CPU seconds during the round: the coordinator's main loop, its MQTT decoder thread, paho's network
  thread, the coordinator process in all; mosquitto; the fake-agent processes (bench);
* the broker's ``$SYS`` counters (``sys_interval 1``) over the round: messages and bytes received and
  sent, and their rates.

``--profile`` adds cProfile of the coordinator's main-loop and decoder threads (top functions by own
time, printed on stderr; the profiler slows the Python code it watches, so the timed round is not
comparable with an unprofiled one).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fake_agent_process(port: int, first: int, count: int, heartbeat_s: float = 2.0) -> None:
    """Child: ``count`` fake agents, one MQTT connection each; prints 'ready', serves one round, then
    prints one JSON line ``{"model_at", "sent_at", "encode_s", "updates"}`` (unix seconds / seconds).

    Like real agents they number their messages from the clock (the coordinator drops any seq not above
    the last one it accepted from a device) and echo the task's nonce in their updates. The update (every
    fake returns the model it was sent, density 0.2) is encoded once per process; each device's message is
    that payload in its own envelope (sender id, seq, timestamp, CRC): the bytes ``encode_message`` gives
    for that device, without repeating the tensor encoding per fake (the bench's cost, not the product's)."""
    import dataclasses
    import itertools

    import paho.mqtt.client as mqtt

    from feddst_core.models import MNIST_CNN
    from feddst_core.wire_format import model_from_tensors, update_message
    from protocol import (
        ChunkReassembler,
        ModelBroadcast,
        Register,
        Status,
        Task,
        Update,
        decode_envelope,
        decode_message,
        encode_message,
        split_into_chunks,
        topics,
    )
    from protocol.envelope import encode_envelope
    from protocol.messages import Capabilities

    ids = [f"fake-{i:05d}" for i in range(first, first + count)]
    seqs = itertools.count(time.time_ns() // 1000)  # one increasing counter shared by this process's fakes

    def encode(msg) -> bytes:  # noqa: ANN001
        return encode_message(msg, seq=next(seqs))

    model: dict = {}
    got_model = threading.Event()
    reassembler = ChunkReassembler()

    def on_model(client, userdata, message) -> None:  # noqa: ANN001
        if not message.payload:
            return  # the coordinator clearing a closed round's retained chunk
        whole = reassembler.add(message.payload, source=message.topic.rsplit("/", 1)[0])
        if whole is not None:
            msg = decode_message(whole)
            if isinstance(msg, ModelBroadcast):
                model["msg"] = msg
                got_model.set()

    receiver = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"model-rx-{first}")
    receiver.on_message = on_model
    receiver.connect("127.0.0.1", port)
    receiver.subscribe(f"{topics.ROOT}/runs/+/model/+/+", qos=1)
    receiver.loop_start()

    tasks: list = []

    def make_client(device_id: str) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        will_seq = next(seqs)
        c.will_set(topics.status(device_id), encode_message(Status(device_id, "offline"), seq=will_seq), qos=1,
                   retain=True)
        c.on_message = lambda cl, u, m: tasks.append((device_id, m.payload)) if m.topic.endswith("/task") else None
        c.connect("127.0.0.1", port, keepalive=300)
        c.subscribe([(f"{topics.ROOT}/runs/+/task", 1), (f"{topics.ROOT}/runs/+/ack/{device_id}", 1)])
        c.loop_start()
        c.publish(topics.status(device_id), encode(Status(device_id, "online")), qos=1, retain=True)
        c.publish(topics.register(device_id), encode(
            Register(device_id, Capabilities("x86_64", 1, 1024, {}), 40, will_seq)), qos=1)
        return c

    clients = {d: make_client(d) for d in ids}
    print("ready", flush=True)
    beat = time.time()
    report: dict = {}
    while not report:
        if time.time() - beat > heartbeat_s:
            for d, c in clients.items():
                c.publish(topics.status(d), encode(Status(d, "online")), qos=1, retain=True)
            beat = time.time()
        if tasks and got_model.is_set():
            model_at = time.time()
            task = decode_message(tasks[0][1])
            assert isinstance(task, Task)
            params, masks = model_from_tensors(model["msg"].tensors, MNIST_CNN.masked_names())
            template = update_message(task.run_id, task.server_round, ids[0], params, masks, masks, 40, 0.0, 0.0)
            template = dataclasses.replace(template, task_nonce=task.task_nonce)
            started, sent = time.perf_counter(), 0
            # The payload (tensors, mask changes, nonce) is the same for every fake: encode it once; per
            # device only the envelope (sender id, seq, CRC) differs, byte for byte what encode_message makes.
            payload = bytes(decode_envelope(encode(template)).payload)
            for d in ids:
                if d in task.selected:
                    data = encode_envelope(Update.MESSAGE_TYPE, task.run_id, task.server_round, d, next(seqs),
                                           time.time_ns() // 1_000_000, payload, None)
                    for packet in split_into_chunks(data):
                        clients[d].publish(topics.update(task.run_id, d), packet, qos=1)
                    sent += 1
            report = {"model_at": model_at, "sent_at": time.time(), "encode_s": time.perf_counter() - started,
                      "updates": sent}
        time.sleep(0.01)
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # parent closes stdin when done
    for c in clients.values():
        c.disconnect()
        c.loop_stop()
    receiver.loop_stop()


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's named threads and of the whole process."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other")
        key = ("main_loop" if name == "coordinator" else "decoder" if name == "mqtt-decoder"
               else "paho_network" if name.startswith("paho-mqtt-client") else "bench_main" if name == "MainThread"
               else "other")
        out[key] = out.get(key, 0.0) + t.user_time + t.system_time
    times = psutil.Process().cpu_times()
    out["process"] = times.user + times.system
    return out


def _profiled(method, profiles: list):  # noqa: ANN001, ANN202
    """Wrap a thread's loop method so it runs under its own cProfile.Profile (kept in ``profiles``)."""
    def run(self) -> None:  # noqa: ANN001
        profile = cProfile.Profile()
        profiles.append((method.__qualname__, profile))
        profile.runcall(method, self)
    return run


def _print_profiles(profiles: list, top: int = 25) -> None:
    for name, profile in profiles:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
        _log(f"--- cProfile of {name} (top {top} by own time) ---\n{out.getvalue()}")


def coordinator_process(url: str, state_dir: str, agents: int, profile: bool) -> None:
    """Child: the coordinator; runs one round with ``agents`` fakes, prints one JSON line."""
    sys.path.insert(0, str(ROOT / "bench"))
    from live_overhead import make_coordinator, wait_until

    from cloud.coordinator import Coordinator
    from cloud.mqtt_link import CoordinatorLink
    from cloud.run_config import RunConfig

    profiles: list = []
    if profile:
        Coordinator._main_loop = _profiled(Coordinator._main_loop, profiles)  # type: ignore[method-assign]
        CoordinatorLink._decode_loop = _profiled(CoordinatorLink._decode_loop, profiles)  # type: ignore
    coordinator = make_coordinator(url, Path(state_dir))
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) >= agents, 600, "fake agents online")
        run = coordinator.create_run(RunConfig(model="mnist_cnn", sparsity=0.8, clients_per_round=agents, rounds=1,
                                               quorum=agents, round_timeout_s=600, seed=0))
        cpu_before = _thread_cpu()
        coordinator.start_run(run.id)
        final = coordinator.wait_for_run(run.id, 900)
        cpu_after = _thread_cpu()
        _, rounds = coordinator.get_run(run.id)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = rounds[0] if rounds else {}
        received = record.get("update_received_at", {})
        print(json.dumps({"status": final.status, "error": final.error, "round_s": record.get("seconds"),
                          "broadcast_s": record.get("broadcast_s"), "aggregation_s": record.get("aggregation_s"),
                          "started_at": record.get("started_at"), "closed_at": record.get("closed_at"),
                          "last_update_at": max(received.values()) if received else None,
                          "first_update_at": min(received.values()) if received else None,
                          "accepted": len(record.get("accepted", [])), "peak_mb": peak_mb,
                          "cpu_s": {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after}}),
              flush=True)
    finally:
        coordinator.close()
        if profile:
            _print_profiles(profiles)


class SysCounters:
    """The broker's ``$SYS`` byte and message counters, each value kept with the time it arrived."""

    TOPICS = ("$SYS/broker/messages/received", "$SYS/broker/messages/sent", "$SYS/broker/bytes/received",
              "$SYS/broker/bytes/sent")

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.samples: dict[str, list[tuple[float, int]]] = {t: [] for t in self.TOPICS}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_message = lambda c, u, m: self.samples[m.topic].append((time.time(), int(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(t, 0) for t in self.TOPICS])
        self.client.loop_start()

    def over(self, start: float, end: float) -> dict[str, float]:
        """Each counter's increase from its last sample before ``start`` to its first after ``end``."""
        out: dict[str, float] = {}
        for topic, samples in self.samples.items():
            before = [v for t, v in samples if t <= start]
            after = [v for t, v in samples if t >= end]
            if before and after:
                out[topic.rsplit("/", 2)[-2] + "_" + topic.rsplit("/", 1)[-1]] = after[0] - before[-1]
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _cpu_seconds(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def measure_scale(agents: int, workdir: Path, procs_count: int = 4, profile: bool = False,
                  heartbeat_s: float = 2.0) -> dict:
    """One round with ``agents`` fakes over a fresh mosquitto (each fake's Status every ``heartbeat_s``;
    the coordinator's online window is 15 s): the coordinator child's JSON plus ``breakdown`` (see the
    module docstring)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from brokers import MosquittoBroker

    broker = MosquittoBroker(workdir / "mosquitto-scale", extra_config=[
        "max_queued_messages 0", "max_inflight_messages 0", "sys_interval 1"]).start()
    assert broker.process is not None
    sys_counters = SysCounters(broker.port)
    fakes: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    coord = None
    fake_reports: list[dict] = []
    try:
        per = -(-agents // procs_count)
        for k in range(procs_count):
            first, count = k * per, min(per, agents - k * per)
            fakes.append(subprocess.Popen([sys.executable, __file__, "--_fake", str(broker.port), str(first),
                                           str(count), str(heartbeat_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          env=env, text=True))
        for p in fakes:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        _log(f"scale: {agents} fake agents connected in {procs_count} processes")
        cpu_before = {"broker": _cpu_seconds(broker.process.pid), "fakes": sum(_cpu_seconds(p.pid) for p in fakes)}
        coord = subprocess.Popen([sys.executable, __file__, "--_coordinator", broker.url,
                                  str(workdir / "scale-state"), str(agents), "1" if profile else "0"],
                                 stdout=subprocess.PIPE, text=True, env=env)
        out, _ = coord.communicate(timeout=1800)
        cpu_after = {"broker": _cpu_seconds(broker.process.pid), "fakes": sum(_cpu_seconds(p.pid) for p in fakes)}
        result = json.loads(out.strip().splitlines()[-1])
        if result["status"] != "completed":
            raise RuntimeError(f"scale round {result['status']}: {result['error']}")
        time.sleep(1.5)  # one more $SYS sample after the round's close
        for p in fakes:
            assert p.stdout is not None
            fake_reports.append(json.loads(p.stdout.readline()))
        result["breakdown"] = breakdown(result, fake_reports, cpu_before, cpu_after, sys_counters)
        return result
    finally:
        sys_counters.close()
        for p in fakes:
            try:
                p.communicate(input="\n", timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if coord is not None and coord.poll() is None:
            coord.kill()
        broker.stop()


def breakdown(result: dict, fakes: list[dict], cpu_before: dict, cpu_after: dict, sys_counters: SysCounters) -> dict:
    """The round's timeline (s from its start), CPU seconds per party and the broker's $SYS deltas.

    The fakes' and broker's CPU is read from the coordinator process's start to its end, which
    includes start-up and run creation (the fakes' heartbeats); the coordinator's own CPU is the round's."""
    t0 = result["started_at"]
    timeline = {"broadcast": result["broadcast_s"],
                "model_at": max(f["model_at"] for f in fakes) - t0,
                "fakes_sent_at": max(f["sent_at"] for f in fakes) - t0,
                "first_update_at": result["first_update_at"] - t0,
                "last_update_at": result["last_update_at"] - t0,
                "closed_at": result["closed_at"] - t0}
    cpu = {f"coordinator_{k}": v for k, v in result["cpu_s"].items()}
    cpu.update(broker=cpu_after["broker"] - cpu_before["broker"], fakes=cpu_after["fakes"] - cpu_before["fakes"],
               fakes_encode=sum(f["encode_s"] for f in fakes))
    broker = sys_counters.over(result["started_at"], result["closed_at"])
    span = result["closed_at"] - result["started_at"]
    broker.update({f"{k}_per_s": v / span for k, v in list(broker.items())} if span > 0 else {})
    return {"timeline_s": timeline, "cpu_s": cpu, "broker_sys": broker}


def print_breakdown(agents: int, result: dict) -> None:
    b = result["scale_breakdown"]
    t, cpu, sys_ = b["timeline_s"], b["cpu_s"], b["broker_sys"]
    print(f"scale breakdown ({agents} agents; seconds from the round's start):")
    print(f"  broadcast done {t['broadcast']:.3f}  last fake has model+task {t['model_at']:.3f}  "
          f"fakes done sending (bench) {t['fakes_sent_at']:.3f}")
    print(f"  first update at coordinator {t['first_update_at']:.3f}  last {t['last_update_at']:.3f}  "
          f"round closed {t['closed_at']:.3f} (aggregation adds + finish {result['scale_aggregation_s']:.3f} s)")
    print("  CPU s during the round: coordinator " + ", ".join(
        f"{k.removeprefix('coordinator_')} {v:.2f}" for k, v in cpu.items() if k.startswith("coordinator_")))
    print(f"  CPU s (coordinator's life): mosquitto {cpu['broker']:.2f}, fake agents {cpu['fakes']:.2f} "
          f"(of which encoding+publishing updates {cpu['fakes_encode']:.2f} s wall)")
    if sys_:
        print("  broker $SYS over the round: " + ", ".join(f"{k} {v:,.0f}" for k, v in sys_.items()))


if __name__ == "__main__":
    if sys.argv[1] == "--_fake":
        sys.path.insert(0, str(ROOT))
        fake_agent_process(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "--_coordinator":
        sys.path.insert(0, str(ROOT))
        coordinator_process(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
