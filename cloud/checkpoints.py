"""Per-round run checkpoints: what a restarted coordinator needs to continue a run bit for bit.

Layout under ``<state_dir>/checkpoints/<run_id>/``::

    round-00012.ckpt    after round 12 closed (round-00000: the initial model): safetensors with the
                        global parameters (``param/<name>``, float32), masks (``mask/<name>``, bool),
                        the FedAvgM server momentum (``momentum/<name>``, when the strategy keeps one)
                        and one JSON metadata entry ``checkpoint`` (see :class:`RunCheckpoint`)
    open-round.json     the round opened after the last checkpoint (:class:`OpenRound`): its selection,
                        task nonce and the selection RNG's state after drawing it, so a restarted
                        coordinator reopens the *same* round and agents' late updates for it still count

Every file is written durably (:func:`durable_files.write_file_durably`: temporary file, flush, fsync, ``os.replace``,
fsync of the directory), so after ``kill -9`` or a power cut a file is either the old or the new
version, never a prefix. The last :data:`KEEP_CHECKPOINTS` checkpoints of a run are kept (older ones
are removed once a newer one is durable); the store's per-round model files are separate
(``cloud/store.py``). RNG states are ``np.random.Generator.bit_generator.state`` dicts (JSON; PCG64's
128-bit integers are exact in JSON).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from durable_files import write_file_durably
from feddst_core.strategies import ServerState

CHECKPOINT_DIR = "checkpoints"
OPEN_ROUND_FILE = "open-round.json"
KEEP_CHECKPOINTS = 2
FORMAT_VERSION = 1


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A generator continuing exactly where the one whose ``bit_generator.state`` this is stopped."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


@dataclass
class OpenRound:
    """The round a run had open (selection made, Task published) when its last checkpoint was the one before."""

    server_round: int
    selected: tuple[str, ...]  # device ids, retries' extra devices included
    task_nonce: int
    readjust_fraction: float
    prox_mu: float
    retries: int
    rng_state: dict[str, Any]  # the selection RNG after this round's draws
    target: int = 0  # updates that complete the round (the first selection's size; 0: len(selected))

    def to_json(self) -> bytes:
        return json.dumps({"version": FORMAT_VERSION, **asdict(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> OpenRound:
        raw = json.loads(data)
        raw.pop("version", None)
        raw["selected"] = tuple(raw["selected"])
        return cls(**raw)


@dataclass
class RunCheckpoint:
    """A run after ``server_round`` closed: its global state and every counter the run carries on."""

    run_id: str
    server_round: int
    state: ServerState
    rng_state: dict[str, Any]  # the selection RNG before round server_round + 1's draw
    counters: dict[str, int] = field(default_factory=dict)
    accepted_by_round: dict[int, frozenset[str]] = field(default_factory=dict)
    upload_bytes: int = 0  # cumulative encoded update bytes accepted (the report's upload_bytes)
    download_bytes: int = 0  # cumulative broadcast bytes x devices sent (the report's download_bytes)
    wire_upload_bytes: int = 0  # device-reported MQTT socket bytes, cumulative
    wire_download_bytes: int = 0
    wire_marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def encode(self) -> bytes:
        """safetensors bytes: tensors under ``param/``, ``mask/``, ``momentum/``; the rest as JSON metadata."""
        tensors = {f"param/{n}": t.detach().contiguous() for n, t in self.state.params.items()}
        tensors.update({f"mask/{n}": m.detach().contiguous() for n, m in self.state.masks.items()})
        for n, t in (self.state.momentum or {}).items():
            tensors[f"momentum/{n}"] = t.detach().contiguous()
        meta = {
            "version": FORMAT_VERSION, "run_id": self.run_id, "server_round": self.server_round,
            "mask_version": self.state.mask_version, "has_momentum": self.state.momentum is not None,
            "rng_state": self.rng_state, "counters": dict(self.counters),
            "accepted_by_round": {str(r): sorted(ids) for r, ids in self.accepted_by_round.items()},
            "upload_bytes": self.upload_bytes, "download_bytes": self.download_bytes,
            "wire_upload_bytes": self.wire_upload_bytes, "wire_download_bytes": self.wire_download_bytes,
            "wire_marks": {d: list(v) for d, v in self.wire_marks.items()},
        }
        return save_safetensors(tensors, metadata={"checkpoint": json.dumps(meta)})

    @classmethod
    def decode(cls, data: bytes) -> RunCheckpoint:
        """The inverse of :meth:`encode` (``ValueError`` if the bytes are not a checkpoint)."""
        try:
            meta = json.loads(_safetensors_metadata(data)["checkpoint"])
            tensors = load_safetensors(data)
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a run checkpoint: {exc}") from exc

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        state = ServerState(params=group("param/"), masks=group("mask/"), mask_version=int(meta["mask_version"]),
                            momentum=group("momentum/") if meta["has_momentum"] else None)
        return cls(meta["run_id"], int(meta["server_round"]), state, meta["rng_state"], meta["counters"],
                   {int(r): frozenset(ids) for r, ids in meta["accepted_by_round"].items()},
                   meta["upload_bytes"], meta["download_bytes"], meta["wire_upload_bytes"],
                   meta["wire_download_bytes"], {d: (int(v[0]), int(v[1])) for d, v in meta["wire_marks"].items()})


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    return dict(header.get("__metadata__", {}))


class CheckpointStore:
    """Run checkpoints and open-round records in ``<state_dir>/checkpoints`` (main-loop thread only)."""

    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / CHECKPOINT_DIR

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def path(self, run_id: str, server_round: int) -> Path:
        return self.run_dir(run_id) / f"round-{server_round:05d}.ckpt"

    def rounds(self, run_id: str) -> list[int]:
        """The rounds with a checkpoint, ascending."""
        return sorted(int(p.stem.split("-")[1]) for p in self.run_dir(run_id).glob("round-*.ckpt"))

    def save(self, checkpoint: RunCheckpoint) -> Path:
        """Write durably; then drop the open-round record it supersedes and checkpoints beyond the last
        :data:`KEEP_CHECKPOINTS`."""
        path = self.path(checkpoint.run_id, checkpoint.server_round)
        write_file_durably(path, checkpoint.encode())
        opened = self.open_round(checkpoint.run_id)
        if opened is not None and opened.server_round <= checkpoint.server_round:
            self.clear_open_round(checkpoint.run_id)
        for old in self.rounds(checkpoint.run_id)[:-KEEP_CHECKPOINTS]:
            self.path(checkpoint.run_id, old).unlink(missing_ok=True)
        return path

    def latest(self, run_id: str) -> RunCheckpoint | None:
        """The newest readable checkpoint of the run (None if it has none)."""
        for server_round in reversed(self.rounds(run_id)):
            try:
                return RunCheckpoint.decode(self.path(run_id, server_round).read_bytes())
            except (OSError, ValueError):
                continue  # not expected (writes are atomic); fall back to the previous one
        return None

    def save_open_round(self, run_id: str, opened: OpenRound) -> None:
        write_file_durably(self.run_dir(run_id) / OPEN_ROUND_FILE, opened.to_json())

    def open_round(self, run_id: str) -> OpenRound | None:
        path = self.run_dir(run_id) / OPEN_ROUND_FILE
        try:
            return OpenRound.from_json(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def clear_open_round(self, run_id: str) -> None:
        (self.run_dir(run_id) / OPEN_ROUND_FILE).unlink(missing_ok=True)

    def delete_run(self, run_id: str) -> None:
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
