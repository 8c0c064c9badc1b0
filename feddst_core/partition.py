"""Splitting a labelled dataset across clients: pathological (k classes each), Dirichlet(beta), iid.

Pure numpy and seeded: the same labels, arguments and seed give the same partition everywhere
(the simulator and an agent started with ``--partition I/N`` agree on client I's share).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feddst_core.choices import PARTITIONS


class PartitionError(ValueError):
    """The requested partition cannot be built from this dataset."""


@dataclass(frozen=True)
class Partition:
    """Per-client index arrays into the train and test sets."""

    train: list[np.ndarray]  # client i trains on train[i] (int64 indices)
    test: list[np.ndarray]  # client i's local test set

    @property
    def num_clients(self) -> int:
        return len(self.train)


def partition_pathological(y_train: np.ndarray, y_test: np.ndarray, num_clients: int, classes_per_client: int,
                           samples_per_class: int, seed: int) -> Partition:
    """Each client gets ``classes_per_client`` distinct classes with ``samples_per_class`` train images each
    (no image shared between clients); its local test set is every test image of its classes.

    Classes are dealt so that every class is used about equally often.
    """
    classes = np.unique(y_train)
    if classes_per_client < 1 or classes_per_client > len(classes):
        raise PartitionError(f"classes per client must be in [1, {len(classes)}], got {classes_per_client}")
    if samples_per_class < 1:
        raise PartitionError(f"samples per class must be >= 1, got {samples_per_class}")
    rng = np.random.default_rng(seed)
    # Deal classes from repeated shuffled decks: balanced use, k distinct classes per client.
    assignments: list[np.ndarray] = []
    deck: list[int] = []
    for _ in range(num_clients):
        chosen: list[int] = []
        while len(chosen) < classes_per_client:
            if not deck:
                deck = [int(c) for c in rng.permutation(classes)]
            pick = next((c for c in deck if c not in chosen), None)
            if pick is None:  # deck only holds classes this client already has: start a fresh deck
                deck = [int(c) for c in rng.permutation(classes)]
                continue
            deck.remove(pick)
            chosen.append(pick)
        assignments.append(np.array(sorted(chosen)))
    pools = {int(c): list(rng.permutation(np.flatnonzero(y_train == c))) for c in classes}
    needed = {int(c): 0 for c in classes}
    for chosen_classes in assignments:
        for c in chosen_classes:
            needed[int(c)] += samples_per_class
    short = {c: (needed[c], len(pools[c])) for c in needed if needed[c] > len(pools[c])}
    if short:
        detail = ", ".join(f"class {c} needs {n} images but has {have}" for c, (n, have) in short.items())
        raise PartitionError(f"pathological partition cannot be satisfied: {detail}; "
                             "use fewer clients, fewer samples per class or more classes per client")
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for chosen_classes in assignments:
        idx: list[int] = []
        for c in chosen_classes:
            pool = pools[int(c)]
            idx.extend(int(i) for i in pool[:samples_per_class])
            del pool[:samples_per_class]
        train.append(np.array(sorted(idx), dtype=np.int64))
        test.append(np.flatnonzero(np.isin(y_test, chosen_classes)).astype(np.int64))
    return Partition(train, test)


def _matching_test_set(y_test: np.ndarray, train_labels: np.ndarray, size: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Test indices whose class proportions follow the client's train labels."""
    classes, counts = np.unique(train_labels, return_counts=True)
    picks: list[np.ndarray] = []
    for c, n in zip(classes, counts, strict=True):
        want = max(1, round(size * n / counts.sum()))
        pool = np.flatnonzero(y_test == c)
        picks.append(rng.choice(pool, size=min(want, len(pool)), replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.empty(0, dtype=np.int64)


def partition_dirichlet(y_train: np.ndarray, y_test: np.ndarray, num_clients: int, beta: float,
                        seed: int, min_samples: int = 1) -> Partition:
    """Label-skewed split: class c's images go to clients in Dirichlet(beta) proportions.

    Every client ends with at least ``min_samples`` train images (resampled up to 100 times).
    Local test sets are drawn from the test set with the client's class proportions, as many as
    the client has train images.
    """
    if beta <= 0:
        raise PartitionError(f"beta must be > 0, got {beta}")
    if num_clients * min_samples > len(y_train):
        raise PartitionError(f"{num_clients} clients x {min_samples} samples exceeds {len(y_train)} images")
    rng = np.random.default_rng(seed)
    classes = np.unique(y_train)
    for _ in range(100):
        buckets: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y_train == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, beta))) * len(idx)).astype(int)[:-1]
            for client, part in enumerate(np.split(idx, cuts)):
                buckets[client].extend(int(i) for i in part)
        if min(len(b) for b in buckets) >= min_samples:
            break
    else:
        raise PartitionError(f"could not give every one of {num_clients} clients {min_samples} images "
                             f"with beta={beta}; raise beta or lower the client count")
    train = [np.array(sorted(b), dtype=np.int64) for b in buckets]
    test = [_matching_test_set(y_test, y_train[t], len(t), rng) for t in train]
    return Partition(train, test)


def partition_iid(y_train: np.ndarray, y_test: np.ndarray, num_clients: int, seed: int,
                  samples_per_client: int | None = None) -> Partition:
    """Uniform random split (optionally only ``samples_per_client`` images each)."""
    n = len(y_train)
    per = samples_per_client if samples_per_client is not None else n // num_clients
    if per < 1 or per * num_clients > n:
        raise PartitionError(f"cannot give {num_clients} clients {per} images each from {n} images")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    train = [np.sort(perm[i * per:(i + 1) * per]).astype(np.int64) for i in range(num_clients)]
    test = [_matching_test_set(y_test, y_train[t], len(t), rng) for t in train]
    return Partition(train, test)


def make_partition(kind: str, y_train: np.ndarray, y_test: np.ndarray, num_clients: int, seed: int,
                   classes_per_client: int = 2, samples_per_class: int = 20, beta: float = 0.1) -> Partition:
    """Dispatch on ``kind`` (one of ``PARTITIONS``)."""
    if num_clients < 1:
        raise PartitionError(f"number of clients must be >= 1, got {num_clients}")
    if kind == "pathological":
        return partition_pathological(y_train, y_test, num_clients, classes_per_client, samples_per_class, seed)
    if kind == "dirichlet":
        return partition_dirichlet(y_train, y_test, num_clients, beta, seed)
    if kind == "iid":
        return partition_iid(y_train, y_test, num_clients, seed)
    raise PartitionError(f"unknown partition {kind!r}; choose one of {', '.join(PARTITIONS)}")
