"""Part 2 of ``bench/live_overhead.py``: one round with N protocol-level fake agents through mosquitto.

The fake agents (``bench/fleet_fakes.py``: no training; one MQTT connection each, multiplexed by one
asyncio loop per process over ``procs`` processes, one model receiver per process standing in for its
selected fakes) each return a density-0.2 update of the MNIST CNN and send a retained Status every
``heartbeat_s`` (default: the real agent's, ``edge_agent`` ``heartbeat_s``). The coordinator runs in its
own process (``--_coordinator``), the fakes in theirs, so each side's CPU time can be read apart. With
``bridge`` a second mosquitto is bridged to the first (``BRIDGE_TOPICS``: device traffic out, the
coordinator's in); fake processes alternate between the two, the coordinator is on the first, and the
model still reaches the devices by the brokers' fan-out (one copy over the bridge).

The brokers and fakes need one file descriptor per connection: the bench raises ``RLIMIT_NOFILE``
(inherited by them; mosquitto gets ``max_connections -1``) and says so when it cannot.

Breakdown of the round (``scale_breakdown`` in ``--json``), all from wall-clock timestamps on this
one machine and CPU seconds read from ``/proc`` (via psutil) at the round's start and end:

* timeline (seconds from the round's start, ``started_at``): ``broadcast`` (the coordinator signs,
  encodes and hands the model and the Tasks to paho), ``tasks`` (the part of it signing one Task per
  selected device and handing each to paho on the device's inbox), ``model_at`` (the last fake process
  holding the model and the last of its devices' Tasks), ``fakes_sent_at`` (the last fake process done
  encoding and handing its updates to its sockets: the **bench's** cost), ``fakes_acked_at`` (the broker
  acknowledged them all), ``last_update_at`` (the last accepted update reaching the coordinator's MQTT
  callback), ``closed_at`` (the round closed: every queued update decoded, checked and added, the
  aggregation finished);
* CPU seconds during the round (from the round's opening, after the coordinator's post-connect grace,
  to ``wait_for_run``'s return; ``cpu_window_s`` says how long that was): the coordinator's main loop,
  its MQTT decoder thread, paho's network thread, the coordinator process in all; each mosquitto; the
  fake-agent processes (bench); and the budget: their sum against cores x window;
* each broker's ``$SYS`` counters (``sys_interval 1``) over the round: messages and bytes received and
  sent, and their rates (``broker_sys``, and ``broker_sys_1`` for the bridged broker).

``--profile`` adds cProfile of the coordinator's main-loop, decoder and paho network threads (top functions by own
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


def agent_heartbeat_s() -> float:
    """The real agent's default seconds between Status heartbeats (``edge_agent`` settings: one definition)."""
    from edge_agent.setting_fields import AgentSettingFields

    return float(AgentSettingFields.model_fields["heartbeat_s"].default)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft open-file limit (inherited by the brokers and fakes it starts) to at
    least ``needed`` descriptors, raising the hard limit too when that is allowed (root); returns the soft
    limit now. ``RuntimeError`` naming ``RLIMIT_NOFILE`` (``ulimit -n``) and the figures when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, new_hard))
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"the scale test needs {needed} open files per process (RLIMIT_NOFILE, `ulimit -n`); the "
                           f"limit is {soft} (hard {hard}) and cannot be raised ({exc}): raise the hard limit or "
                           "use fewer agents per process (--scale-procs)") from exc
    return needed


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
        profile = cProfile.Profile(time.thread_time) if os.environ.get("FLEET_PROFILE_CPU") else cProfile.Profile()
        profiles.append((method.__qualname__, profile))
        profile.runcall(method, self)
    return run


def _print_profiles(profiles: list, top: int = 25) -> None:
    for name, profile in profiles:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
        if os.environ.get("FLEET_PROFILE_DIR"):  # the whole profile, for pstats (cumulative views)
            profile.dump_stats(str(Path(os.environ["FLEET_PROFILE_DIR"]) / f"{name}.prof"))
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
        import paho.mqtt.client as mqtt  # paho's network thread (loop_start runs Client._thread_main)

        mqtt.Client._thread_main = _profiled(mqtt.Client._thread_main, profiles)  # type: ignore[method-assign]
    coordinator = make_coordinator(url, Path(state_dir))
    try:
        wait_until(lambda: len(coordinator.registry.online_ids()) >= agents, 600, "fake agents online")
        run = coordinator.create_run(RunConfig(model="mnist_cnn", sparsity=0.8, clients_per_round=agents, rounds=1,
                                               quorum=agents, round_timeout_s=600, seed=0))
        coordinator.start_run(run.id)
        # The round opens once the coordinator's post-connect grace (2 heartbeats) is over: CPU is read from then.
        while getattr(getattr(coordinator, "_execution", None), "phase", "waiting") == "waiting":
            time.sleep(0.005)
        print("starting", flush=True)  # the parent reads the brokers' and fakes' CPU now
        cpu_before, window_start = _thread_cpu(), time.time()
        final = coordinator.wait_for_run(run.id, 900)
        cpu_after, window_end = _thread_cpu(), time.time()
        _, rounds = coordinator.get_run(run.id)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = rounds[0] if rounds else {}
        received = record.get("update_received_at", {})
        print(json.dumps({"status": final.status, "error": final.error, "round_s": record.get("seconds"),
                          "broadcast_s": record.get("broadcast_s"), "tasks_s": record.get("tasks_s"),
                          "aggregation_s": record.get("aggregation_s"),
                          "started_at": record.get("started_at"), "closed_at": record.get("closed_at"),
                          "last_update_at": max(received.values()) if received else None,
                          "first_update_at": min(received.values()) if received else None,
                          "accepted": len(record.get("accepted", [])), "peak_mb": peak_mb,
                          "cpu_window": [window_start, window_end],
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


def _cpu_seconds(pid: int, system_only: bool = False) -> float:
    """CPU seconds (user + system, or ``system_only``: in the kernel) of process ``pid`` so far (0 once gone)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.system if system_only else times.user + times.system


# Bridge topics (on the second broker, pointing at the first, where the coordinator is): what devices
# publish goes out, what the coordinator publishes comes in; nothing else crosses.
BRIDGE_TOPICS = [f"{t} 1" for t in (
    "feddst/v1/devices/+/status out", "feddst/v1/devices/+/register out", "feddst/v1/runs/+/update/+ out",
    "feddst/v1/runs/+/task in", "feddst/v1/runs/+/control in", "feddst/v1/runs/+/ack/+ in",
    "feddst/v1/runs/+/model/+/+ in", "feddst/v1/runs/+/final in", "feddst/v1/devices/+/inbox in")]
UPLOAD_WINDOW = 64  # devices per fake process uploading at once (bench/fleet_fakes.py FakeFleet.serve)
BROKER_CONFIG = ["max_queued_messages 0", "max_inflight_messages 0", "sys_interval 1", "max_connections -1"]
BROKER_CONFIG_ENV = "FLEET_SCALE_BROKER_CONFIG"  # extra mosquitto config lines, ";"-separated (experiments)
# glibc's allocator in mosquitto: keep freed heap (no trimming below 512 MiB, no mmap per 128 KiB packet) so that
# freed packet memory is reused instead of returned and faulted in again, zeroed. perf puts 18-46 % of the broker's
# CPU in a 10 000 round in such page faults (clear_page_erms under memmove), mostly first touches of the backlog it
# holds; these tunables measured within noise (docs/results.md, branch fakes2). What mosquitto does is unchanged.
BROKER_MALLOC_TUNABLES = "glibc.malloc.trim_threshold=536870912:glibc.malloc.mmap_threshold=16777216"
BROKER_TUNABLES_ENV = "FLEET_SCALE_BROKER_TUNABLES"  # GLIBC_TUNABLES for the scale brokers ("" = glibc's defaults)


def broker_environment() -> dict[str, str]:
    """The scale brokers' extra environment: ``GLIBC_TUNABLES`` (:data:`BROKER_MALLOC_TUNABLES`, or
    ``$FLEET_SCALE_BROKER_TUNABLES`` when set; none when that is empty)."""
    tunables = os.environ.get(BROKER_TUNABLES_ENV, BROKER_MALLOC_TUNABLES)
    return {"GLIBC_TUNABLES": tunables} if tunables else {}


def broker_config() -> list[str]:
    """The scale brokers' config lines: :data:`BROKER_CONFIG` plus any in ``$FLEET_SCALE_BROKER_CONFIG``."""
    extra = [line.strip() for line in os.environ.get(BROKER_CONFIG_ENV, "").split(";") if line.strip()]
    return [*BROKER_CONFIG, *extra]


def start_brokers(workdir: Path, bridge: bool) -> list:
    """One mosquitto, or (``bridge``) two: the second bridged to the first (``BRIDGE_TOPICS``), started
    once the bridge carries a message both ways."""
    sys.path.insert(0, str(ROOT / "tests"))
    from brokers import MosquittoBroker

    brokers = [MosquittoBroker(workdir / "mosquitto-scale", extra_config=broker_config(),
                               environment=broker_environment()).start()]
    if bridge:
        try:
            brokers.append(MosquittoBroker(workdir / "mosquitto-scale-b", extra_config=broker_config(),
                                           environment=broker_environment(),
                                           bridge_to=brokers[0].port, bridge_topics=BRIDGE_TOPICS).start())
            _wait_for_bridge(brokers[1].port, brokers[0].port)
        except BaseException:
            for b in brokers:
                b.stop()
            raise
    return brokers


def _wait_for_bridge(device_port: int, coordinator_port: int, timeout_s: float = 20.0) -> None:
    """Return once a device-side publish on ``device_port`` reaches ``coordinator_port`` and back."""
    import paho.mqtt.client as mqtt

    seen: set[str] = set()
    clients = []
    for port, topic in ((coordinator_port, "feddst/v1/devices/+/status"), (device_port, "feddst/v1/runs/+/task")):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bridge-probe-{port}")
        c.on_message = lambda cl, u, m: seen.add(m.topic)
        c.connect("127.0.0.1", port)
        c.subscribe(topic, qos=1)
        c.loop_start()
        clients.append(c)
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the mosquitto bridge {device_port} -> {coordinator_port} carries nothing "
                                   f"after {timeout_s} s (see its mosquitto.log)")
            clients[1].publish("feddst/v1/devices/bridge-probe/status", b"", qos=1)  # empty: not retained
            clients[0].publish("feddst/v1/runs/bridge-probe/task", b"", qos=1)
            time.sleep(0.2)
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()


def start_fakes(brokers: list, agents: int, procs_count: int, heartbeat_s: float,
                upload_window: int) -> list[subprocess.Popen]:
    """``procs_count`` fake-agent processes (``bench/fleet_fakes.py``), process k on broker k mod len(brokers);
    returns once every one printed ``ready``."""
    from device_processes import start_device_processes

    return start_device_processes(
        ROOT / "bench" / "fleet_fakes.py", agents, procs_count,
        lambda k, first, count: ["127.0.0.1", str(brokers[k % len(brokers)].port), str(first), str(count),
                                 str(heartbeat_s), str(upload_window)])


def peak_rss_mb(pid: int) -> float | None:
    """Process ``pid``'s peak resident set (``VmHWM``, MB), or None when it cannot be read."""
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _fake_reports(fakes: list[subprocess.Popen]) -> list[dict]:
    """Tell each fake process the round closed and read its report (``bench/fleet_fakes.py``); ``RuntimeError``
    if any device lost its broker connection (a fake never reconnects)."""
    for p in fakes:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    reports = [json.loads(p.stdout.readline()) for p in fakes if p.stdout is not None]
    lost = sum(f.get("lost_connections", 0) for f in reports)
    if lost:
        raise RuntimeError(f"{lost} fake devices lost their broker connection during the round (see mosquitto.log)")
    return reports


def _party_cpu(brokers: list, fakes: list[subprocess.Popen]) -> dict[str, float]:
    out = {f"broker_{i}": _cpu_seconds(b.process.pid) for i, b in enumerate(brokers)}
    out["broker"] = sum(out.values())
    out["fakes"] = sum(_cpu_seconds(p.pid) for p in fakes)
    out["system_broker"] = sum(_cpu_seconds(b.process.pid, system_only=True) for b in brokers)
    out["system_fakes"] = sum(_cpu_seconds(p.pid, system_only=True) for p in fakes)
    return out


def measure_scale(agents: int, workdir: Path, procs_count: int = 4, profile: bool = False,
                  heartbeat_s: float | None = None, bridge: bool = False,
                  upload_window: int = UPLOAD_WINDOW) -> dict:
    """One round with ``agents`` fakes over a fresh mosquitto, or a bridged pair (``bridge``: fakes
    alternate between the two, the coordinator on the first); each fake's Status every ``heartbeat_s``
    (default: the real agent's, :func:`agent_heartbeat_s`; the coordinator's online window is 15 s).
    ``upload_window``: devices per fake process uploading at once (0: all). Returns the coordinator
    child's JSON plus ``breakdown`` (see the module docstring)."""
    heartbeat_s = agent_heartbeat_s() if heartbeat_s is None else heartbeat_s
    limit = raise_fd_limit(agents + 1024)  # every broker and fake process inherits it
    brokers = start_brokers(workdir, bridge)
    sys_counters = [SysCounters(b.port) for b in brokers]
    fakes: list[subprocess.Popen] = []
    coord = None
    try:
        t0 = time.perf_counter()
        fakes = start_fakes(brokers, agents, procs_count, heartbeat_s, upload_window)
        _log(f"scale: {agents} fake agents connected in {len(fakes)} processes to {len(brokers)} broker(s) in "
             f"{time.perf_counter() - t0:.1f} s (RLIMIT_NOFILE {limit}, heartbeat every {heartbeat_s:g} s)")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        coord = subprocess.Popen([sys.executable, __file__, "--_coordinator", brokers[0].url,
                                  str(workdir / "scale-state"), str(agents), "1" if profile else "0"],
                                 stdout=subprocess.PIPE, text=True, env=env)
        assert coord.stdout is not None
        if coord.stdout.readline().strip() != "starting":
            raise RuntimeError(f"the coordinator child failed before the round (exit {coord.wait()})")
        cpu_before, window_start = _party_cpu(brokers, fakes), time.time()
        out = coord.stdout.readline()
        cpu_after, window_end = _party_cpu(brokers, fakes), time.time()
        broker_peak_mb = [peak_rss_mb(b.process.pid) for b in brokers]
        coord.wait(60)
        result = json.loads(out)
        if result["status"] != "completed":
            raise RuntimeError(f"scale round {result['status']}: {result['error']}")
        time.sleep(1.5)  # one more $SYS sample after the round's close
        fake_reports = _fake_reports(fakes)
        result["breakdown"] = breakdown(result, fake_reports, cpu_before, cpu_after, sys_counters)
        result["breakdown"].update(brokers=len(brokers), fake_procs=len(fakes), heartbeat_s=heartbeat_s,
                                   upload_window=upload_window, fakes_loop=fake_reports[0].get("loop"),
                                   broker_config=broker_config(), broker_environment=broker_environment(),
                                   broker_peak_mb=broker_peak_mb,
                                   cpu_window_s={"coordinator": result["cpu_window"][1] - result["cpu_window"][0],
                                                 "brokers_fakes": window_end - window_start,
                                                 "before_round": result["started_at"] - result["cpu_window"][0],
                                                 "after_close": result["cpu_window"][1] - result["closed_at"]})
        return result
    finally:
        for c in sys_counters:
            c.close()
        for p in fakes:
            try:
                p.communicate(input="\n", timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        if coord is not None and coord.poll() is None:
            coord.kill()
        for b in reversed(brokers):
            b.stop()


def breakdown(result: dict, fakes: list[dict], cpu_before: dict, cpu_after: dict,
              sys_counters: list[SysCounters]) -> dict:
    """The round's timeline (s from its start), CPU seconds per party and each broker's $SYS deltas.

    Every party's CPU is read at the round's start and end (the brokers' and fakes' by the parent, as
    the coordinator child reports them; the coordinator's by itself)."""
    t0 = result["started_at"]
    timeline = {"broadcast": result["broadcast_s"], "tasks": result.get("tasks_s") or 0.0,
                "model_at": max(f["model_at"] for f in fakes) - t0,
                "model_rx_at": max(f.get("model_rx_at") or t0 for f in fakes) - t0,
                "task_rx_at": max(f.get("task_rx_at") or t0 for f in fakes) - t0,
                "fakes_sent_at": max(f["sent_at"] for f in fakes) - t0,
                "fakes_acked_at": max(f["acked_at"] for f in fakes) - t0,
                "first_update_at": result["first_update_at"] - t0,
                "last_update_at": result["last_update_at"] - t0,
                "closed_at": result["closed_at"] - t0}
    tasks_at = sorted(t - t0 for f in fakes for t in f.get("task_rx", ()) if t >= t0)
    if tasks_at:
        timeline.update(task_rx_p50=tasks_at[len(tasks_at) // 2], task_rx_p90=tasks_at[int(len(tasks_at) * 0.9)])
    cpu = {f"coordinator_{k}": v for k, v in result["cpu_s"].items()}
    cpu.update({k: cpu_after[k] - cpu_before[k] for k in cpu_before})
    cpu["fakes_encode"] = sum(f["encode_s"] for f in fakes)
    span = result["closed_at"] - result["started_at"]
    out: dict = {"timeline_s": timeline, "cpu_s": cpu, "round_span_s": span}
    for i, counters in enumerate(sys_counters):
        sys_ = counters.over(result["started_at"], result["closed_at"])
        sys_.update({f"{k}_per_s": v / span for k, v in list(sys_.items())} if span > 0 else {})
        out["broker_sys" if i == 0 else f"broker_sys_{i}"] = sys_
    return out


def print_breakdown(agents: int, result: dict) -> None:
    """The breakdown's lines; the CPU budget line sets every party's CPU seconds against the round's
    wall time x this machine's cores (the most CPU the round could have had)."""
    b = result["scale_breakdown"]
    t, cpu = b["timeline_s"], b["cpu_s"]
    print(f"scale breakdown ({agents} agents, {b.get('fake_procs')} fake processes, {b.get('brokers')} broker(s), "
          f"heartbeat {b.get('heartbeat_s')} s, upload window {b.get('upload_window')} per process, fakes on "
          f"{b.get('fakes_loop')}; seconds from "
          "the round's start):")
    if b.get("broker_config", BROKER_CONFIG) != BROKER_CONFIG:
        print(f"  mosquitto config beyond the listener and auth: {'; '.join(b['broker_config'])}")
    if b.get("broker_environment"):
        print("  mosquitto environment: " + " ".join(f"{k}={v}" for k, v in b["broker_environment"].items()))
    print(f"  broadcast done {t['broadcast']:.3f} (of which Tasks signed + handed to paho {t.get('tasks', 0.0):.3f})  "
          f"last fake has model+task {t['model_at']:.3f} (model {t.get('model_rx_at', 0.0):.3f}; Tasks at the fakes: "
          f"median {t.get('task_rx_p50', 0.0):.3f}, 90 % {t.get('task_rx_p90', 0.0):.3f}, last "
          f"{t.get('task_rx_at', 0.0):.3f})  "
          f"fakes done sending (bench) {t['fakes_sent_at']:.3f}  all acked by broker {t['fakes_acked_at']:.3f}")
    print(f"  first update at coordinator {t['first_update_at']:.3f}  last {t['last_update_at']:.3f}  "
          f"round closed {t['closed_at']:.3f} (aggregation adds + finish {result['scale_aggregation_s']:.3f} s)")
    print("  CPU s during the round: coordinator " + ", ".join(
        f"{k.removeprefix('coordinator_')} {v:.2f}" for k, v in cpu.items() if k.startswith("coordinator_")))
    brokers = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k.startswith("broker_"))
    peaks = "/".join(f"{mb:.0f}" for mb in b.get("broker_peak_mb") or () if mb is not None) or "?"
    print(f"  CPU s during the round: mosquitto {cpu['broker']:.2f} ({brokers}; in the kernel "
          f"{cpu.get('system_broker', 0.0):.2f}; peak RSS {peaks} MB), fake agents {cpu['fakes']:.2f} (in the kernel "
          f"{cpu.get('system_fakes', 0.0):.2f}; encoding+publishing updates {cpu['fakes_encode']:.2f} s wall)")
    total = cpu["coordinator_process"] + cpu["broker"] + cpu["fakes"]
    cores, window = os.cpu_count() or 1, b["cpu_window_s"]
    print(f"  CPU budget: coordinator + mosquitto + fakes = {total:.2f} CPU s, read over {window['coordinator']:.2f} s "
          f"(coordinator) / {window['brokers_fakes']:.2f} s (brokers, fakes) around the {b['round_span_s']:.2f} s "
          f"round; {cores} cores give {cores * window['brokers_fakes']:.2f} CPU s in that time; this CPU alone "
          f"needs >= {total / cores:.2f} s on {cores} cores")
    print(f"  (the window: from {window['before_round']:.3f} s before the round's start to "
          f"{window['after_close']:.3f} s after its close)")
    for key in sorted(k for k in b if k.startswith("broker_sys")):
        if b[key]:
            print(f"  {key} over the round: " + ", ".join(f"{k} {v:,.0f}" for k, v in b[key].items()))


if __name__ == "__main__":
    if sys.argv[1] == "--_coordinator":
        sys.path.insert(0, str(ROOT))
        coordinator_process(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
