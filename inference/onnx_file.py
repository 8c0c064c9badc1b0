"""Writing a model file so that readers never see half of it (torch-free)."""

from __future__ import annotations

from pathlib import Path

from durable_files import write_file_durably


def write_file_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`durable_files.write_file_durably`, mode 0644 (a model file is
    for local applications to read): a reader (or a crash) sees the old file or the new one, never a
    partial one. Creates the parent directory. Raises ``OSError``."""
    write_file_durably(path, data, mode=0o644)
