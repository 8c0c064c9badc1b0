"""The global-model files of runs on disk: durable writes and checkpoint retention.

Layout: ``<models_dir>/<run_id>/round-00012.safetensors`` is the global model after round 12
(``round-00000``: the initial model). A file is written to a temporary file in the same directory,
flushed and fsync'd, renamed over its name (``os.replace``), then the directory is fsync'd
(:func:`inference.onnx_file.write_file_atomically`): after a crash a round's file is whole or absent,
and once :func:`write_round_file` returns it survives a power cut.

Retention (:func:`prune_round_files`) keeps round 0, the run's current round and the last ``keep_last``
rounds; every file of a pruned round (``round-NNNNN.*``, so also files written beside the model for
that round) is removed.
"""

from __future__ import annotations

import re
from pathlib import Path

from inference.onnx_file import write_file_atomically

ROUND_FILE = re.compile(r"^round-(\d{5,})\.")


def round_file(models_dir: Path, run_id: str, server_round: int) -> Path:
    """Where the global model of ``server_round`` of ``run_id`` lives."""
    return models_dir / run_id / f"round-{server_round:05d}.safetensors"


def write_round_file(path: Path, data: bytes) -> None:
    """Write ``data`` at ``path`` atomically and durably (creates the run's directory; ``OSError``)."""
    write_file_atomically(path, data)


def saved_rounds(run_dir: Path) -> list[int]:
    """Rounds with a model file in ``run_dir``, ascending (empty if the directory does not exist)."""
    if not run_dir.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in run_dir.glob("round-*.safetensors")
                  if p.stem.split("-")[1].isdigit())


def describe_rounds(rounds: list[int]) -> str:
    """``[0, 7, 8, 9, 12]`` -> ``"0, 7..9, 12"`` (for error messages)."""
    spans: list[list[int]] = []
    for r in rounds:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans)


def prune_round_files(run_dir: Path, keep_last: int, current_round: int) -> list[int]:
    """Remove the files of rounds other than 0, ``current_round`` and the newest ``keep_last`` saved ones.

    ``keep_last`` 0 keeps everything. Returns the rounds removed (ascending)."""
    if keep_last <= 0:
        return []
    rounds = saved_rounds(run_dir)
    keep = {0, current_round, *rounds[-keep_last:]}
    removed = [r for r in rounds if r not in keep]
    if not removed:
        return []
    for path in run_dir.iterdir():
        match = ROUND_FILE.match(path.name)
        if match is not None and int(match.group(1)) in removed and path.is_file():
            path.unlink(missing_ok=True)
    return removed
