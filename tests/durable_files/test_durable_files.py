"""durable_files.write_file_durably: content, mode, replacement, and nothing left behind on an error."""

from __future__ import annotations

import os
import stat

import pytest

from durable_files import write_file_durably


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_the_bytes_with_the_mode_and_creates_the_directory(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "model.onnx"
    write_file_durably(target, b"\x00first\xff")
    assert target.read_bytes() == b"\x00first\xff" and _mode(target) == 0o644
    secret = tmp_path / "key.pem"
    write_file_durably(secret, b"private", mode=0o600)
    assert secret.read_bytes() == b"private" and _mode(secret) == 0o600


def test_replaces_an_existing_file_and_leaves_only_it(tmp_path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old content, longer than the new one")
    os.chmod(target, 0o600)
    write_file_durably(target, b"new", mode=0o640)
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_replace_removes_the_temporary_file_and_keeps_the_target(tmp_path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()  # os.replace of a file over a directory fails (IsADirectoryError)
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_file_durably(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]  # no .occupied.*.tmp left
    assert (target / "inside").read_bytes() == b"kept"


def test_a_failed_write_removes_the_temporary_file(tmp_path) -> None:
    with pytest.raises(TypeError):
        write_file_durably(tmp_path / "f", "text, not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
