"""Reading CIFAR-10's "python version" batches without executing anything they contain.

The batches are pickles (a dict of ``b"data"``: a uint8 array (N, 3072), ``b"labels"``: a list of ints,
plus names and file names). ``pickle.load`` on a file from elsewhere is code execution: a pickle may name
any importable callable (``os.system``) and call it. :class:`PlainDataUnpickler` admits only what a
numpy array's pickle needs (``numpy``'s array reconstructor, ``ndarray`` and ``dtype``), refuses every
other global and every object array, so a loaded batch holds only plain arrays, lists, dicts, bytes,
strings and numbers. Anything else raises :class:`UnsafePickleError` before it is built.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

# The globals a pickled numpy array refers to (numpy 1.x writes numpy.core, numpy 2.x numpy._core), and the
# one Python 3 uses for bytes in protocols 0-2 (``_codecs.encode(text, "latin1")``, wrapped below).
ALLOWED_GLOBALS = frozenset({
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something other than plain data; nothing it names was called."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, scalars and non-object numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only plain arrays, lists, dicts, "
                                    "strings and numbers are accepted")
        if name == "dtype":
            return _plain_dtype
        if name == "encode":
            return _latin1_bytes
        if name == "_frombuffer":
            return _plain_frombuffer
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def _plain_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` for the unpickler, refusing object dtypes (their items would be arbitrary objects)."""
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise UnsafePickleError("refusing a numpy array of Python objects")
    return dtype


def _plain_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's protocol-5 array reconstructor, for non-object dtypes only."""
    plain = _plain_dtype(dtype)
    array = np.frombuffer(buf, dtype=plain).reshape(shape, order="F" if order == "F" else "C")
    return array.copy()


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes: text to latin-1, nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise UnsafePickleError("refusing a codec call other than latin-1 text to bytes")
    return text.encode("latin1")


def load_plain_pickle(fh: BinaryIO | bytes) -> Any:
    """Load one pickle of plain data (Python 2 pickles' str as bytes, as CIFAR-10 needs)."""
    stream = io.BytesIO(fh) if isinstance(fh, bytes) else fh
    return PlainDataUnpickler(stream, encoding="bytes").load()
