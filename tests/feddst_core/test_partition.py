import numpy as np
import pytest

from feddst_core.partition import PartitionError, make_partition


def labels(per_class=100, classes=10, seed=0):
    y = np.repeat(np.arange(classes), per_class)
    return np.random.default_rng(seed).permutation(y)


def test_pathological_paper_shape():
    y_train, y_test = labels(200), labels(50, seed=1)
    p = make_partition("pathological", y_train, y_test, 40, seed=0, classes_per_client=2, samples_per_class=20)
    assert p.num_clients == 40
    used = np.concatenate(p.train)
    assert len(used) == len(set(used.tolist())) == 40 * 2 * 20, "no image is shared"
    for train, test in zip(p.train, p.test, strict=True):
        classes, counts = np.unique(y_train[train], return_counts=True)
        assert len(classes) == 2 and counts.tolist() == [20, 20]
        assert set(np.unique(y_test[test]).tolist()) == set(classes.tolist())
        assert len(test) == 100  # every test image of its two classes


def test_pathological_uses_classes_evenly():
    y = labels(500)
    p = make_partition("pathological", y, y, 100, seed=3, classes_per_client=2, samples_per_class=5)
    per_class = np.bincount(np.concatenate([np.unique(y[t]) for t in p.train]), minlength=10)
    assert per_class.max() - per_class.min() <= 2


def test_unsatisfiable_pathological_partition_says_why():
    y = labels(30)
    with pytest.raises(PartitionError, match="needs .* images but has 30"):
        make_partition("pathological", y, y, 20, seed=0, classes_per_client=2, samples_per_class=20)


def test_same_seed_same_partition_other_seed_other_partition():
    y = labels(300)
    a = make_partition("dirichlet", y, y, 10, seed=1, beta=0.3)
    b = make_partition("dirichlet", y, y, 10, seed=1, beta=0.3)
    c = make_partition("dirichlet", y, y, 10, seed=2, beta=0.3)
    assert all(np.array_equal(x, z) for x, z in zip(a.train, b.train, strict=True))
    assert any(not np.array_equal(x, z) for x, z in zip(a.train, c.train, strict=True))


def test_dirichlet_covers_all_images_and_is_skewed():
    y = labels(300)
    p = make_partition("dirichlet", y, y, 10, seed=0, beta=0.1)
    assert sorted(np.concatenate(p.train).tolist()) == list(range(len(y)))
    dominant = [np.bincount(y[t], minlength=10).max() / len(t) for t in p.train]
    assert np.mean(dominant) > 0.4
    assert all(len(t) > 0 for t in p.test)


def test_iid_is_balanced():
    y = labels(100)
    p = make_partition("iid", y, y, 10, seed=0)
    assert [len(t) for t in p.train] == [100] * 10


@pytest.mark.parametrize("kind, kwargs, message", [
    ("zipf", {}, "unknown partition"),
    ("dirichlet", {"beta": 0.0}, "beta must be"),
    ("pathological", {"classes_per_client": 11}, "classes per client"),
])
def test_bad_partition_arguments(kind, kwargs, message):
    y = labels(100)
    with pytest.raises(PartitionError, match=message):
        make_partition(kind, y, y, 5, seed=0, **kwargs)
