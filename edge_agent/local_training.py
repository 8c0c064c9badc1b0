"""One round of local training on a device: task + model broadcast + local data -> ``Update``.

Exactly the simulator's per-client path (``client_batching=False``): one client (K=1) trained by
``make_local_trainer`` (``LocalTrainer``, or the CPU sparse kernels' trainer with the same math),
seed ``client_seed(task.seed, task.server_round, client_index)``, readjustment fraction
``task.alpha`` when ``task.readjust`` else 0, and the update built by ``feddst_core.wire_format``.

Importing this module does not import torch: an idle agent never loads it (about 220 MB resident).
:func:`load_training_modules` imports torch and the learning core (at the first round, in the training
thread, or at start-up with ``--preload-training``; about 3.5-4 CPU s on an x86-64 core, tens of seconds
on a small ARM board), gives torch the thread count set with :func:`set_torch_threads`, and freezes the
objects loaded so far out of the garbage collector's reach (:func:`freeze_loaded_objects`).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from edge_agent.data import LocalData
from feddst_core.sparse import SparseThreshold
from protocol import ModelBroadcast, ProtocolError, Task, Update

if TYPE_CHECKING:
    from feddst_core.models import ModelSpec
    from feddst_core.sparse.trainer import SparseLocalTrainer
    from feddst_core.training import LocalTrainer, TrainConfig

MAX_ERROR_DETAIL = 500  # characters of the DeviceError detail an agent sends
_torch_threads: int | None = None  # set_torch_threads(); None: torch's own default


def set_torch_threads(threads: int) -> None:
    """Torch's intra-op thread count for every round (``--threads``), applied now if torch is already
    imported, else when the first round imports it; the native kernels use the same pool."""
    global _torch_threads
    _torch_threads = threads
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def load_training_modules() -> float:
    """Import torch and every learning-core module a round uses; returns the seconds this call spent.

    The first call pays the imports (the agent logs it as the round's ``load`` stage, apart from
    training and packing); later calls return about 0. Safe to call from several threads at once
    (Python's import lock: a second caller waits for the first import to finish)."""
    started = time.perf_counter()
    import torch

    import feddst_core.models
    import feddst_core.native.tensor_kernels  # the kernels' torch wrappers: else imported by the round's first step
    import feddst_core.sparse.trainer
    import feddst_core.training
    import feddst_core.wire_format  # noqa: F401 - imported for the round's later use, not here

    if _torch_threads is not None:
        torch.set_num_threads(_torch_threads)
    freeze_loaded_objects()
    return time.perf_counter() - started


_freeze_lock = threading.Lock()
_frozen = False


def freeze_loaded_objects() -> None:
    """Once per process: collect garbage, then move every object alive now (torch's and the learning core's
    modules, functions and classes: about 170 000 on x86-64) to the garbage collector's permanent generation
    (``gc.freeze``), so later collections never scan them again. Later objects (each round's model, update,
    messages) are collected as before.

    Why: a full collection over those objects takes about 0.09 CPU s (x86-64), and one comes once the rounds'
    allocations have aged into the oldest generation. The unbatched simulation pays that once for all its
    clients; 20 agents sharing 2 cores pay it 20 times, inside each other's training (measured in one process
    training one client: the second round 0.17 s, of which 0.093 s one full collection, against 0.07-0.08 s
    for the next rounds; with the freeze 0.10 s; docs/results.md, "Branch live4"; an agent's first full
    collection after start-up came a few seconds after a 5-round run). Refcounting still frees
    frozen objects; only cycles among them are never collected (none are expected among loaded modules)."""
    global _frozen
    with _freeze_lock:
        if _frozen:
            return
        gc.collect()
        gc.freeze()
        _frozen = True


class TrainingError(RuntimeError):
    """This device cannot train on this task (unknown model, data that does not fit it...).

    ``code`` is the :class:`protocol.DeviceError` reason code reported to the coordinator."""

    def __init__(self, message: str, code: str = "training_failed"):
        super().__init__(message)
        self.code = code


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """``(code, detail)`` of a failed round for the :class:`protocol.DeviceError` report: a
    :class:`TrainingError`'s own code, ``out_of_memory`` for ``MemoryError`` and torch's allocation
    failures, else ``training_failed``; ``detail`` is at most ``MAX_ERROR_DETAIL`` characters."""
    if isinstance(exc, TrainingError):
        code, detail = exc.code, str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
        lowered = str(exc).lower()
        oom = isinstance(exc, MemoryError) or "out of memory" in lowered or "can't allocate memory" in lowered
        code, detail = ("out_of_memory" if oom else "training_failed"), text
    return code, detail[:MAX_ERROR_DETAIL]


def make_local_trainer(spec: ModelSpec, config: TrainConfig, kernels: str = "dense",
                       thresholds: Mapping[str, Sequence[SparseThreshold]] | None = None,
                       ) -> LocalTrainer | SparseLocalTrainer:
    """``feddst_core.sparse.make_local_trainer``, imported (with torch) at the first call."""
    from feddst_core.sparse.trainer import make_local_trainer as make

    return make(spec, config, kernels, thresholds)


def train_config(task: Task) -> TrainConfig:
    from feddst_core.training import TrainConfig

    return TrainConfig(lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay,
                       batch_size=task.batch_size, local_epochs=task.local_epochs, prox_mu=task.prox_mu)


def readjust_fraction(task: Task) -> float:
    return float(task.alpha) if task.readjust else 0.0


def train_on_task(task: Task, model: ModelBroadcast, data: LocalData, device_id: str, client_index: int,
                  kernels: str = "auto", thresholds: Mapping[str, Sequence[SparseThreshold]] | None = None,
                  ) -> Update:
    """Train from ``model`` on ``data`` as ``task`` asks; return the update to send.

    ``kernels``: ``auto`` (compressed sparse layers where measured faster), ``sparse`` or ``dense``;
    all three give the same weights (within float rounding). ``thresholds``: the auto policy's table
    (``--kernel-thresholds``, this device's own); None = the built-in one.
    Raises :class:`TrainingError` when the model is unknown or does not fit the data.
    """
    import torch

    from feddst_core.models import get_model_spec
    from feddst_core.training import client_seed
    from feddst_core.wire_format import model_from_tensors, update_message

    if _torch_threads is not None:
        torch.set_num_threads(_torch_threads)
    try:
        spec = get_model_spec(task.model_name)
    except (KeyError, ValueError) as exc:
        raise TrainingError(f"unknown model {task.model_name!r}: {exc}", "model_unavailable") from exc
    if spec.input_shape != data.input_shape:
        raise TrainingError(f"model {spec.name} takes inputs {spec.input_shape} but the local data is "
                            f"{data.input_shape}; give this device matching data", "bad_data")
    if int(data.y.max()) >= spec.num_classes:
        raise TrainingError(f"model {spec.name} has {spec.num_classes} classes but the local labels go up to "
                            f"{int(data.y.max())}", "bad_data")
    expected = dict(spec.parameter_shapes())
    got = {name: tuple(t.shape) for name, t in model.tensors.items()}
    if got != {name: tuple(shape) for name, shape in expected.items()}:
        raise TrainingError(f"the broadcast model's tensors do not match {spec.name}", "model_unavailable")
    try:
        params, masks = model_from_tensors(model.tensors, spec.masked_names())
    except ProtocolError as exc:
        raise TrainingError(f"cannot rebuild the broadcast model: {exc}", "model_unavailable") from exc
    seed = client_seed(task.seed, task.server_round, client_index)
    started = time.perf_counter()
    trainer = make_local_trainer(spec, train_config(task), kernels, thresholds)
    outcome = trainer.train(params, masks, [data.client_data()], [seed], readjust_fraction(task))[0]
    compute_s = time.perf_counter() - started
    update = update_message(task.run_id, task.server_round, device_id, outcome.params, masks, outcome.masks,
                            outcome.num_samples, outcome.train_loss, compute_s, outcome.mask_changes)
    return dataclasses.replace(update, task_nonce=task.task_nonce)  # binds the update to this task
