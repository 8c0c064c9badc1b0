"""Dashboard speed in Debian's headless Chromium, on a big store: 1000 devices and a 1000-round run.

The store is filled directly (``CoordinatorStore.create_run/add_round/save_device``: round records
like the coordinator's, 20 of the 1000 devices selected per round, 4 masked layers), then the
coordinator's app is served by uvicorn on loopback and the page is opened with an operator token.

* first render: from navigation start (``performance.timeOrigin``) to the moment the page has drawn
  the run view (charts + timeline of all 1000 rounds: ``data-drawn-at``) or the devices table (all
  1000 rows: ``data-rendered``); fresh navigation each time, median of ``--repeat`` (target <= 1 s).
* SSE latency: ``--events`` new rounds are published into the coordinator's event log one at a time,
  as its main loop does after recording a round (``events.publish("round", record)``); latency =
  the page's ``data-drawn-at`` for that round minus the event's ``published_at`` (same clock: one
  machine), i.e. round close to the point on the chart (target <= 0.5 s).
* run detail body: the server's work for the run view's one big request (``GET /api/runs/{id}``,
  1000 rounds) as the API does it beside the per-record way it replaced, best of ``--repeat``,
  measured in this process before the browser starts (a ratio; no target).

    python bench/dashboard.py          # human summary on stderr
    python bench/dashboard.py --json   # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "cloud"))

LAYERS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def round_record(r: int, devices: list[str], t0: float) -> dict:
    selected = [devices[(r * 37 + k * 50) % len(devices)] for k in range(20)]
    accepted = selected[:18]
    return {"round": r, "accuracy": 0.1 + 0.85 * (1 - 1 / (1 + r / 50)), "global_accuracy": 0.1 + 0.8 * r / 1000,
            "upload_bytes": 180_000 * 18 * r, "download_bytes": 210_000 * 20 * r, "density": 0.2,
            "train_loss": 1 / r, "seconds": 3.0, "selected": selected, "accepted": sorted(accepted),
            "ignored": {"duplicate": r % 3, "stale": r % 2}, "retries": int(r % 50 == 0), "late": selected[18:],
            "upload_by_device": {d: 180_000 for d in sorted(accepted)},
            "layer_density": {name: 0.1 + 0.05 * i for i, name in enumerate(LAYERS)},
            "started_at": t0 + 3.0 * (r - 1), "closed_at": t0 + 3.0 * r}


def fill_store(state_dir: Path, n_devices: int, n_rounds: int) -> tuple[str, list[str]]:
    import torch

    from cloud.run_config import RunConfig
    from cloud.store import CoordinatorStore, DeviceRow

    store = CoordinatorStore(state_dir)
    now = time.time()
    devices = [f"device-{i:04d}" for i in range(n_devices)]
    for i, device_id in enumerate(devices):
        caps = {"arch": ("x86_64", "aarch64", "armv7l")[i % 3], "cores": 1 + i % 8, "memory_mb": 512 * (1 + i % 8),
                "library_versions": {"torch": "2.13.0", "native-kernels": "yes" if i % 4 else "no"}}
        store.save_device(DeviceRow(device_id, caps, 100, "online" if i % 5 else "offline", now - i % 7,
                                    i % 300, 1_000_000 + i, 2_000_000 + i))
    run = store.create_run("run-bench", "bench", RunConfig(rounds=n_rounds + 1000).model_dump(mode="json"))
    t0 = now - 3.0 * n_rounds
    for r in range(1, n_rounds + 1):
        store.add_round(run.id, round_record(r, devices, t0))
    store.set_run_status(run.id, "running")
    store.save_model(run.id, n_rounds, {"w": torch.zeros(1)}, {})
    store.close()
    return run.id, devices


def first_render(page, url: str, selector: str, ready: str, stamp: str, repeat: int) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        page.goto("about:blank")
        page.goto(url)
        page.wait_for_function(ready, timeout=30_000)
        times.append(page.evaluate(f"() => (Number(document.querySelector('{selector}').dataset.{stamp}) - "
                                   "performance.timeOrigin) / 1000"))
    return times


def run_detail_serving(state_dir: Path, run_id: str, repeat: int) -> dict[str, float]:
    """Seconds (best of ``repeat``, in this process) to turn the stored rounds into the body of
    ``GET /api/runs/{id}``: the way the API does it (``rounds_from_json`` + pydantic's JSON bytes)
    beside the per-record way it replaced (``json.loads`` + ``RoundOut(**r)`` per record, then what
    FastAPI does with a model an endpoint returns: validate it against ``response_model``, dump its
    JSON), on the same store."""
    from pydantic import TypeAdapter

    from cloud.schemas import RoundOut, RunDetailOut, rounds_from_json
    from cloud.store import CoordinatorStore

    store = CoordinatorStore(state_dir)
    row = store.get_run(run_id)

    def now() -> bytes:
        return RunDetailOut.from_parts(row, rounds_from_json(store.round_texts(run_id))).model_dump_json().encode()

    response_model = TypeAdapter(RunDetailOut)

    def per_record() -> bytes:
        detail = RunDetailOut.from_parts(row, [RoundOut(**r) for r in store.rounds(run_id)])
        return response_model.dump_json(response_model.validate_python(detail))

    assert json.loads(now()) == json.loads(per_record())  # the same answer
    best = {}
    for name, build in (("api_s", now), ("per_record_s", per_record)):
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            build()
            times.append(time.perf_counter() - started)
        best[name] = min(times)
    store.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="fresh navigations per first-render figure")
    parser.add_argument("--events", type=int, default=20, help="rounds published live for the SSE latency")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()

    from headless_chromium import chromium_missing, launch
    from live_server import LiveServer
    from playwright.sync_api import sync_playwright

    from cloud.coordinator import Coordinator
    from cloud.settings import CloudSettings

    if chromium_missing():
        log(f"cannot run: {chromium_missing()}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="feddst-bench-dashboard-"))
    run_id, devices = fill_store(tmp / "state", args.devices, args.rounds)
    serving = run_detail_serving(tmp / "state", run_id, args.repeat)
    # Not started: no broker needed; the API reads the store and the event log, as it does in a live run.
    coordinator = Coordinator(CloudSettings(state_dir=tmp / "state", mqtt_username=None, heartbeat_s=3600.0))
    token, _ = coordinator.tokens.create("operator", name="bench")
    result: dict = {"devices": args.devices, "rounds": args.rounds}
    try:
        with LiveServer(coordinator) as server, sync_playwright() as playwright:
            context = launch(playwright, tmp / "profile")
            context.add_init_script(f"sessionStorage.setItem('feddst.token', {json.dumps(token)})")
            page = context.pages[0] if context.pages else context.new_page()
            run_times = first_render(
                page, f"{server.url}/#/runs/{run_id}", "#run-view",
                f"() => document.querySelector('#run-view')?.dataset.lastRound === '{args.rounds}'", "drawnAt",
                args.repeat)
            device_times = first_render(
                page, f"{server.url}/#/devices", "#devices-table",
                f"() => document.querySelectorAll('#devices-table tbody tr').length === {args.devices}", "rendered",
                args.repeat)
            page.goto(f"{server.url}/#/runs/{run_id}")
            page.wait_for_function(f"() => document.querySelector('#run-view')?.dataset.lastRound === '{args.rounds}'")
            latencies = []
            t0 = time.time() - 3.0 * args.rounds
            for r in range(args.rounds + 1, args.rounds + 1 + args.events):
                record = round_record(r, devices, t0)
                coordinator.store.add_round(run_id, record)
                event = coordinator.events.publish(run_id, "round", record)
                page.wait_for_function(f"() => document.querySelector('#run-view').dataset.lastRound === '{r}'")
                drawn_ms = float(page.evaluate("() => document.querySelector('#run-view').dataset.drawnAt"))
                latencies.append(drawn_ms / 1000 - event.published_at)
                time.sleep(0.2)  # rounds arrive one at a time, as in a run
            context.close()
    finally:
        coordinator.close()
    result.update({
        "first_render_run_view_s": round(statistics.median(run_times), 3),
        "first_render_run_view_max_s": round(max(run_times), 3),
        "first_render_devices_s": round(statistics.median(device_times), 3),
        "first_render_devices_max_s": round(max(device_times), 3),
        "sse_latency_median_s": round(statistics.median(latencies), 3),
        "sse_latency_max_s": round(max(latencies), 3),
        "run_detail_body_s": round(serving["api_s"], 4),
        "run_detail_body_per_record_s": round(serving["per_record_s"], 4),
        "run_detail_body_speedup": round(serving["per_record_s"] / serving["api_s"], 2),
        "targets": {"first_render_s": 1.0, "sse_latency_s": 0.5},
    })
    result["meets_targets"] = (max(result["first_render_run_view_s"], result["first_render_devices_s"]) <= 1.0
                               and result["sse_latency_max_s"] <= 0.5)
    log(f"first render, run view ({args.rounds} rounds): median {result['first_render_run_view_s']:.3f} s, "
        f"max {result['first_render_run_view_max_s']:.3f} s (target <= 1 s)")
    log(f"first render, devices table ({args.devices} devices): median {result['first_render_devices_s']:.3f} s, "
        f"max {result['first_render_devices_max_s']:.3f} s (target <= 1 s)")
    log(f"SSE latency, round published -> point drawn ({args.events} rounds): median "
        f"{result['sse_latency_median_s']:.3f} s, max {result['sse_latency_max_s']:.3f} s (target <= 0.5 s)")
    log(f"GET /api/runs/{{id}} body ({args.rounds} rounds, best of {args.repeat}): {result['run_detail_body_s']:.4f} s "
        f"vs {result['run_detail_body_per_record_s']:.4f} s per record (json.loads + RoundOut, response_model): "
        f"{result['run_detail_body_speedup']:.2f}x")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
