"""Data sources: read labelled image data from disk (or from a package) into a ``Dataset``.

Formats: standard MNIST-style IDX directories (gzipped or raw), scikit-learn's built-in 8x8
digits (no download), ``.npz`` files with ``x_train, y_train, x_test, y_test`` and the CIFAR-10
"python version" batches. Every failure is a ``DataSourceError`` that names what was expected.
"""

from datasources.dataset import Dataset, DataSourceError
from datasources.loaders import DATASETS, load_dataset

__all__ = ["DATASETS", "DataSourceError", "Dataset", "load_dataset"]
