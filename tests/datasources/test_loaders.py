import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from cifar_batches import write_cifar_dir

from datasources import DataSourceError, load_dataset
from datasources.idx import MNIST_FILES, parse_idx

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_dir(directory: Path, n_train=30, n_test=10, gz=True) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": np.arange(n_test) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in MNIST_FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_any_standard_idx_directory(tmp_path, gz):
    write_mnist_dir(tmp_path / "m", gz=gz)
    d = load_dataset("mnist", tmp_path / "m")
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.num_classes == 10


@pytest.mark.skipif(not MNIST_DIR.exists(), reason="shared MNIST not present")
def test_real_mnist_class_counts():
    d = load_dataset("mnist", MNIST_DIR)
    assert np.bincount(d.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert len(d.y_test) == 10000


def test_missing_directory_names_the_expected_files(tmp_path):
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path / "nope")


def test_missing_file_is_named(tmp_path):
    write_mnist_dir(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataSourceError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path / "m")


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    write_mnist_dir(tmp_path / "m")
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataSourceError, match="cannot read"):
        load_dataset("mnist", tmp_path / "m")


def test_truncated_idx_payload_is_refused():
    data = idx_bytes(np.zeros((3, 4, 4)))
    with pytest.raises(DataSourceError, match="promises 48 bytes"):
        parse_idx(data[:-5], "x")
    with pytest.raises(DataSourceError, match="not an unsigned-byte IDX"):
        parse_idx(b"\x00\x00\x0d\x03" + data[4:], "x")


def test_mismatched_image_and_label_counts(tmp_path):
    write_mnist_dir(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(29))))
    with pytest.raises(DataSourceError, match="do not match"):
        load_dataset("mnist", tmp_path / "m")


def test_digits_is_built_in_and_stratified():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 8, 8)
    assert len(d.y_train) + len(d.y_test) == 1797
    assert set(np.unique(d.y_test).tolist()) == set(range(10))


def test_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((20, 8, 8, 1)), y_train=np.arange(20) % 4,
             x_test=rng.random((6, 8, 8, 1)), y_test=np.arange(6) % 4)
    d = load_dataset("npz", path)
    assert d.x_train.shape == (20, 1, 8, 8) and d.num_classes == 4
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 8, 8)))
    with pytest.raises(DataSourceError, match="missing arrays"):
        load_dataset("npz", bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataSourceError, match="not a readable .npz"):
        load_dataset("npz", tmp_path / "junk.npz")


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(DataSourceError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DataSourceError, match="needs --data-dir"):
        load_dataset("mnist")


def test_cifar10_python_batches(tmp_path):
    write_cifar_dir(tmp_path / "c")
    d = load_dataset("cifar10", tmp_path / "c")
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(DataSourceError, match="missing CIFAR-10 batches"):
        load_dataset("cifar10", tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataSourceError, match="not a CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path / "c")
