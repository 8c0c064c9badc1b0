"""Wire-size and throughput benchmark of the protocol on the paper's MNIST CNN.

For each density, builds a self-contained sparse ModelBroadcast (random masks of that density in
every weight tensor, dense biases, random normal float32 values), encodes it with
``protocol.encode_message`` (HMAC-SHA256 tag included) and compares its size to the
information bound::

    sum over weight tensors of 32 * nnz + log2(C(n, nnz)) bits, plus 32 bits per bias value

Throughput is dense-equivalent megabytes (1e6 bytes of the dense float32 model) per second of
one ``encode_message`` and one ``decode_message`` (with HMAC verification), single-threaded,
median of ``--repeats`` runs. The headline ``encode_mb_s`` / ``decode_mb_s`` are the *worst* over
all densities. Targets: ratio <= 1.05 at every density; encode + decode >= 200 MB/s, i.e.
``1 / (1/encode + 1/decode) >= 200``.

Usage: ``python bench/wire.py [--json] [--compression auto|none|zstd] [--repeats N]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from protocol import ModelBroadcast, SparseTensor, decode_message, encode_message  # noqa: E402

MNIST_CNN_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (10, 1, 5, 5),
    "conv1.bias": (10,),
    "conv2.weight": (20, 10, 5, 5),
    "conv2.bias": (20,),
    "fc1.weight": (50, 5120),
    "fc1.bias": (50,),
    "fc2.weight": (10, 50),
    "fc2.bias": (10,),
}
DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)
KEY = bytes(range(32))
RATIO_TARGET = 1.05
THROUGHPUT_TARGET_MB_S = 200.0


def log2_binomial(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def build_model(density: float, rng: np.random.Generator) -> dict[str, SparseTensor]:
    tensors = {}
    for name, shape in MNIST_CNN_SHAPES.items():
        values = rng.standard_normal(shape).astype(np.float32)
        if name.endswith(".weight"):
            n = int(np.prod(shape))
            mask = np.zeros(n, dtype=bool)
            mask[rng.choice(n, size=round(density * n), replace=False)] = True
            tensors[name] = SparseTensor.from_dense(values, mask.reshape(shape))
        else:
            tensors[name] = SparseTensor.from_dense(values)
    return tensors


def information_bound_bytes(tensors: dict[str, SparseTensor]) -> float:
    bits = 0.0
    for tensor in tensors.values():
        n = int(np.prod(tensor.shape))
        if tensor.mask is None:
            bits += 32 * n
        else:
            bits += 32 * tensor.nnz + log2_binomial(n, tensor.nnz)
    return bits / 8


def median_seconds(action, repeats: int) -> float:
    action()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(compression: str, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    dense_bytes = 4 * sum(int(np.prod(shape)) for shape in MNIST_CNN_SHAPES.values())
    rows, throughput = [], []
    for density in DENSITIES:
        msg = ModelBroadcast("bench", 1, build_model(density, rng))
        data = encode_message(msg, KEY, timestamp=0, compression=compression)
        assert decode_message(data, KEY) == msg, "float32 round trip must be exact"
        bound = information_bound_bytes(msg.tensors)
        rows.append({"density": density, "bytes": len(data), "bound_bytes": round(bound, 1),
                     "ratio": round(len(data) / bound, 4)})
        encode_s = median_seconds(
            lambda msg=msg: encode_message(msg, KEY, timestamp=0, compression=compression), repeats)
        decode_s = median_seconds(lambda data=data: decode_message(data, KEY), repeats)
        throughput.append({"density": density, "encode_mb_s": round(dense_bytes / encode_s / 1e6, 1),
                           "decode_mb_s": round(dense_bytes / decode_s / 1e6, 1),
                           "round_trip_mb_s": round(dense_bytes / (encode_s + decode_s) / 1e6, 1)})
    return {
        "rows": rows,
        "encode_mb_s": min(t["encode_mb_s"] for t in throughput),
        "decode_mb_s": min(t["decode_mb_s"] for t in throughput),
        "round_trip_mb_s": min(t["round_trip_mb_s"] for t in throughput),
        "throughput_by_density": throughput,
        "dense_bytes": dense_bytes,
        "compression": compression,
        "value_format": "float32",
        "authenticated": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Targets: ratio <= 1.05 per density; encode+decode >= 200 MB/s.")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--compression", choices=("auto", "none", "zstd"), default="auto",
                        help="value compression passed to encode_message (default: auto, the default)")
    parser.add_argument("--repeats", type=int, default=20, help="timing repeats; the median is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.compression, args.repeats, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"MNIST CNN, {result['dense_bytes']} dense float32 bytes; float32 values, compression="
          f"{args.compression}, HMAC-SHA256 envelope included")
    print(f"{'density':>8} {'bytes':>9} {'bound':>11} {'ratio':>7} "
          f"{'enc MB/s':>9} {'dec MB/s':>9} {'e+d MB/s':>9}")
    for row, speed in zip(result["rows"], result["throughput_by_density"], strict=True):
        print(f"{row['density']:>8} {row['bytes']:>9} {row['bound_bytes']:>11.1f} {row['ratio']:>7.4f} "
              f"{speed['encode_mb_s']:>9.1f} {speed['decode_mb_s']:>9.1f} {speed['round_trip_mb_s']:>9.1f}")
    worst_ratio = max(row["ratio"] for row in result["rows"])
    print(f"worst ratio {worst_ratio:.4f} (target <= {RATIO_TARGET}): "
          f"{'met' if worst_ratio <= RATIO_TARGET else 'MISSED'}")
    print(f"worst encode {result['encode_mb_s']} MB/s, decode {result['decode_mb_s']} MB/s, "
          f"encode+decode {result['round_trip_mb_s']} MB/s (target >= {THROUGHPUT_TARGET_MB_S}): "
          f"{'met' if result['round_trip_mb_s'] >= THROUGHPUT_TARGET_MB_S else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
