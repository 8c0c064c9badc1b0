"""Store call latency on SQLite and PostgreSQL, side by side: the calls the coordinator makes per message
and per round.

Per run of queued inbound packets the coordinator's keyring calls ``enrollment_generation`` (it used to
call ``has_enrollments`` and ``get_enrollment`` per message; both are still timed, for comparison);
the registry's flush calls ``save_device`` per changed device; each round ``save_model`` + ``add_round``.
For each back end, each call is timed ``--calls`` times on a store with 1000 enrolled devices (median
and 95th percentile, microseconds); the PostgreSQL/SQLite ratio of the medians is printed beside them.
PostgreSQL is the real server (``--database-url``, default the test server; a schema of its own,
dropped at the end). Targets: per-message reads <= 1 ms median on either back end (200 messages/s of a
1000-device fleet stay under 40 % of one core).

    python bench/store_latency.py          # table on stderr
    python bench/store_latency.py --json   # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MESSAGE_READ_TARGET_US = 1000.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(call: Callable[[int], object], n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"median_us": statistics.median(samples), "p95_us": samples[int(0.95 * (len(samples) - 1))]}


def measure(store, calls: int) -> dict[str, dict[str, float]]:  # noqa: ANN001 - a CoordinatorStore
    import torch

    from cloud.store import DeviceRow

    for i in range(1000):
        store.save_enrollment(f"dev-{i:04d}", "ab" * 32)
    store.create_run("bench", "bench", {"rounds": calls})
    params = {"fc.weight": torch.zeros(64, 64)}
    masks = {"fc.weight": torch.ones(64, 64, dtype=torch.bool)}
    record = {"selected": [f"dev-{i:04d}" for i in range(20)], "upload_bytes": 1, "download_bytes": 1,
              "accuracy": 0.5, "closed_at": time.time()}
    return {
        "enrollment_generation": timed(lambda i: store.enrollment_generation(), calls),
        "has_enrollments": timed(lambda i: store.has_enrollments(), calls),
        "get_enrollment": timed(lambda i: store.get_enrollment(f"dev-{i % 1000:04d}"), calls),
        "save_device": timed(lambda i: store.save_device(DeviceRow(f"dev-{i % 1000:04d}", {}, i, "online",
                                                                   time.time(), 0, 0, 0)), calls),
        "save_model+add_round": timed(lambda i: (store.save_model("bench", i, params, masks),
                                                 store.add_round("bench", {**record, "round": i})), calls),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per operation and back end")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server (default: the test server)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    import os

    if args.database_url:
        os.environ["FEDDST_TEST_DATABASE_URL"] = args.database_url
    import postgres_schemas

    from cloud.store import CoordinatorStore

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backends: dict[str, str | None] = {"sqlite": None}
        reason = postgres_schemas.unavailable_reason()
        if reason is None:
            backends["postgresql"] = postgres_schemas.new_schema()
        else:
            log(f"postgresql skipped: {reason}")
        try:
            for name, url in backends.items():
                store = CoordinatorStore(Path(tmp) / name, url)
                try:
                    results[name] = measure(store, args.calls)
                finally:
                    store.close()
        finally:
            postgres_schemas.drop_schemas()
    operations = list(results["sqlite"])
    ratios = {op: results["postgresql"][op]["median_us"] / results["sqlite"][op]["median_us"]
              for op in operations} if "postgresql" in results else {}
    worst_read = max(results[b][op]["median_us"] for b in results for op in ("enrollment_generation", "has_enrollments",
                                                                           "get_enrollment"))
    summary = {"calls": args.calls, "backends": results, "postgresql_over_sqlite": ratios,
               "message_read_target_us": MESSAGE_READ_TARGET_US, "worst_message_read_median_us": worst_read,
               "message_read_target_met": worst_read <= MESSAGE_READ_TARGET_US}
    log(f"{'operation':22} " + " ".join(f"{b + ' median/p95 us':>26}" for b in results) + "   pg/sqlite")
    for op in operations:
        cells = " ".join(f"{results[b][op]['median_us']:>12.0f} /{results[b][op]['p95_us']:>10.0f} " for b in results)
        log(f"{op:22} {cells}   {ratios.get(op, float('nan')):>8.2f}")
    log(f"per-message reads: worst median {worst_read:.0f} us (target <= {MESSAGE_READ_TARGET_US:.0f} us): "
        + ("met" if summary["message_read_target_met"] else "MISSED"))
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
