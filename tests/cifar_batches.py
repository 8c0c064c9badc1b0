"""``write_cifar_dir``: a tiny CIFAR-10 python-batches directory (random pixels and labels, seeded) for the
loader tests. A top-level test module imported as ``cifar_batches`` (see ``simulate_args`` for why not ``tests.``)."""

from pathlib import Path

import numpy as np


def write_cifar_dir(directory: Path, per_batch=6) -> None:
    import pickle

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        with open(directory / name, "wb") as fh:
            pickle.dump(batch, fh)
