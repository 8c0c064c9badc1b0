"""``write_file_durably``: replace a file's content so that a reader, a ``kill -9`` or a power cut sees the
old file or the new one, never a partial one (standard library only; used by ``cloud``, ``edge_agent``
and ``inference``, which share no other package).

The recipe, defined here once: a temporary file in the same directory (``.<name>.<random>.tmp``, created
0600 by ``tempfile.mkstemp``), write, set ``mode``, flush + ``fsync``, ``os.replace`` over the target,
then ``fsync`` of the directory so the rename itself survives a power cut. On any error the temporary
file is removed and the error re-raised; the target is then untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_file_durably"]


def write_file_durably(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably (module docstring), creating the parent directory.

    ``mode``: the file's permission bits (0o600 for secrets); set before the rename, so the file is
    never visible with other bits. Raises ``OSError``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
