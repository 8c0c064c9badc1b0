"""Micro benchmark of the coordinator's per-update ingest path, one thread, no broker.

Builds the round the fleet bench runs (``mnist_cnn``, sparsity 0.8, one collector over ``--updates``
devices), encodes one update as ``bench/fleet_fakes.py`` does (the sent model returned, values on the
known mask; ``--readjust``: a readjusted mask, so the update carries mask changes; ``--hmac``: each
device's envelope carries an HMAC-SHA256 tag that the decode verifies), puts it in each device's own
envelope and chunks it (128 KiB, the agent's default). Then, per update, times the stages the
coordinator runs: ``reassemble`` (``ChunkReassembler.add`` of every chunk), ``decode``
(``decode_message_with_envelope``: envelope, CRC, tag, payload, tensors) and ``offer``
(``RoundCollector.offer``: checks and the fold into the aggregate); prints the mean microseconds per
update of each stage and their sum (best of ``--repeats`` passes over all updates).

Usage: ``python bench/update_ingest.py [--updates N] [--repeats R] [--readjust] [--hmac] [--profile] [--json]``
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloud.round_collector import RoundCollector  # noqa: E402
from feddst_core.models import MNIST_CNN  # noqa: E402
from feddst_core.readjust import readjust_masks  # noqa: E402
from feddst_core.strategies import FedStrategy, StrategyConfig  # noqa: E402
from feddst_core.wire_format import update_message  # noqa: E402
from protocol import (  # noqa: E402
    ChunkReassembler,
    Update,
    decode_envelope,
    decode_message_with_envelope,
    encode_message,
    split_into_chunks,
)
from protocol.envelope import encode_envelope  # noqa: E402

RUN_ID = "run-bench"
HMAC_KEY = bytes(range(32))
ALPHA = 0.1


def make_round(devices: int, readjust: bool) -> tuple[RoundCollector, bytes]:
    """A fresh collector over ``devices`` ids and the update payload every device sends (encoded once)."""
    import torch

    strategy = FedStrategy(MNIST_CNN, StrategyConfig(clients_per_round=devices, sparsity=0.8))
    state = strategy.initialize(0)
    ids = tuple(f"dev-{i:05d}" for i in range(devices))
    collector = RoundCollector(RUN_ID, 1, ids, strategy.begin_aggregation(state),
                               readjust_fraction=ALPHA if readjust else 0.0)
    params, masks = dict(state.params), dict(state.masks)
    if readjust:
        gen = torch.Generator().manual_seed(1)
        grads = {n: torch.randn(m.shape, generator=gen) for n, m in masks.items()}
        masks, _ = readjust_masks(state.masks, params, grads, ALPHA)
        params = {n: p * masks[n] if n in masks else p for n, p in params.items()}
    template = update_message(RUN_ID, 1, ids[0], params, state.masks, masks, 40, 0.5, 1.0)
    template = dataclasses.replace(template, task_nonce=collector.task_nonce)
    return collector, bytes(decode_envelope(encode_message(template, seq=1)).payload)


def device_packets(ids: tuple[str, ...], payload: bytes, hmac: bool) -> list[tuple[str, list[bytes]]]:
    """Each device's chunks of its own envelope around ``payload`` (what the fakes publish)."""
    out = []
    for seq, device in enumerate(ids, start=1):
        data = encode_envelope(Update.MESSAGE_TYPE, RUN_ID, 1, device, seq, 1_700_000_000_000, payload,
                               HMAC_KEY if hmac else None)
        out.append((f"feddst/v1/run/{RUN_ID}/update/{device}", split_into_chunks(data)))
    return out


def one_pass(devices: int, readjust: bool, hmac: bool) -> dict[str, float]:
    """Seconds per stage over every device's update, on a fresh round."""
    collector, payload = make_round(devices, readjust)
    packets = device_packets(collector.selected, payload, hmac)
    reassembler = ChunkReassembler(timeout_s=120.0, max_pending_bytes=512 * 1024 * 1024)
    key = HMAC_KEY if hmac else None
    spent = dict.fromkeys(("reassemble", "decode", "offer"), 0.0)
    for topic, chunks in packets:
        t0 = time.thread_time()
        whole = None
        for chunk in chunks:
            whole = reassembler.add(chunk, source=topic)
        t1 = time.thread_time()
        assert whole is not None
        decoded = decode_message_with_envelope(whole, key)
        t2 = time.thread_time()
        verdict = collector.offer(decoded.message, len(whole))
        t3 = time.thread_time()
        assert verdict.kind == "accepted", verdict
        spent["reassemble"] += t1 - t0
        spent["decode"] += t2 - t1
        spent["offer"] += t3 - t2
    collector.finish()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--readjust", action="store_true", help="updates carry mask changes (alpha 0.1)")
    parser.add_argument("--hmac", action="store_true", help="HMAC-SHA256-tagged envelopes, verified")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass (top 25 by own time)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(one_pass, args.updates, args.readjust, args.hmac)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    passes = [one_pass(args.updates, args.readjust, args.hmac) for _ in range(args.repeats)]
    best = {stage: min(p[stage] for p in passes) * 1e6 / args.updates for stage in passes[0]}
    best["total"] = sum(best.values())
    size = len(b"".join(device_packets(("dev-00000",), make_round(1, args.readjust)[1], args.hmac)[0][1]))
    if args.json:
        print(json.dumps({"us_per_update": best, "packet_bytes": size, "updates": args.updates}))
        return
    print(f"update ingest, {args.updates} updates of {size} packet bytes (readjust {args.readjust}, "
          f"hmac {args.hmac}), best of {args.repeats}, CPU us per update: "
          + ", ".join(f"{stage} {us:.1f}" for stage, us in best.items()))


if __name__ == "__main__":
    main()
