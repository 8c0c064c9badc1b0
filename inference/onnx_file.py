"""Writing a model file so that readers never see half of it (torch-free)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a temporary file in the same directory, fsync, rename over ``path``,
    fsync the directory. A reader (or a crash) sees the old file or the new one, never a partial one.
    Creates the parent directory. Raises ``OSError``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a model file is for local applications to read
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
