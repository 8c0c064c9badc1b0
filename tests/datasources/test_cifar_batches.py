"""CIFAR-10 batches are read without running anything a pickle names."""

import os
import pickle
import warnings

import numpy as np
import pytest
from cifar_batches import write_cifar_dir

from datasources.cifar_batches import UnsafePickleError, load_plain_pickle
from datasources.dataset import DataSourceError
from datasources.loaders import load_dataset


class _RunsCommand:
    """Pickles to a call of ``os.system(command)``, the classic pickle exploit."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsOpen:
    """Pickles to ``builtins.open(path, "w")``: writes a file when loaded by plain pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_plain_batch_loads_like_pickle():
    rng = np.random.default_rng(3)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [1, 2, 3],
             b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"filenames": [b"a.png", b"b.png", b"c.png"]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        raw = pickle.dumps(batch, protocol=protocol)
        loaded = load_plain_pickle(raw)
        reference = pickle.loads(raw)  # the oracle: the standard unpickler on a pickle we made ourselves
        assert loaded.keys() == reference.keys()
        np.testing.assert_array_equal(loaded[b"data"], reference[b"data"])
        assert loaded[b"labels"] == [1, 2, 3] and loaded[b"filenames"] == batch[b"filenames"]


def test_numpy1_module_name_is_accepted():
    """The real CIFAR-10 files were written by numpy 1.x, whose reconstructor lives in ``numpy.core``."""
    raw = pickle.dumps({b"data": np.arange(6, dtype=np.uint8)}, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    legacy = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = load_plain_pickle(legacy)
    np.testing.assert_array_equal(loaded[b"data"], np.arange(6, dtype=np.uint8))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_command_pickle_is_refused_without_side_effect(tmp_path, protocol):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({b"data": _RunsCommand(f"touch {marker}")}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="refusing to load posix.system|refusing to load os.system"):
        load_plain_pickle(raw)
    assert not marker.exists()


def test_open_call_and_object_arrays_are_refused(tmp_path):
    target = tmp_path / "written"
    with pytest.raises(UnsafePickleError, match=r"refusing to load (builtins|io)\.open"):
        load_plain_pickle(pickle.dumps(_CallsOpen(str(target)), protocol=2))
    assert not target.exists()
    objects = np.array([1, "two", None], dtype=object)
    with pytest.raises(UnsafePickleError, match="array of Python objects"):
        load_plain_pickle(pickle.dumps({b"data": objects}, protocol=2))


def test_malicious_cifar_directory_gives_clear_error_and_no_side_effect(tmp_path):
    data_dir = tmp_path / "cifar"
    write_cifar_dir(data_dir)
    assert load_dataset("cifar10", data_dir).x_train.shape == (30, 3, 32, 32)  # the real layout still loads
    marker = tmp_path / "pwned"
    payload = {b"data": _RunsCommand(f"touch {marker}"), b"labels": [0]}
    (data_dir / "data_batch_2").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataSourceError, match=r"data_batch_2: not a CIFAR-10 batch \(refusing to load"):
        load_dataset("cifar10", data_dir)
    assert not marker.exists()


def test_batch_that_is_not_a_dict_is_a_clear_error(tmp_path):
    data_dir = tmp_path / "cifar"
    write_cifar_dir(data_dir)
    (data_dir / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataSourceError, match="test_batch: not a CIFAR-10 batch"):
        load_dataset("cifar10", data_dir)
