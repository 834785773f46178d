"""Loading pickled numpy arrays without letting the pickle run code.

The original's feature files are plain pickled `numpy.ndarray`s (protocol 3 or 4, loaded with
`encoding='bytes'`). A pickle names the callables it calls while it is being read, so a file from a download
could name `os.system`. `load_pickle_array` admits only the few globals that rebuild an ndarray and refuses
every other one before it is imported, let alone called.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# (module, name) as written in the pickle -> the object it means. Nothing else is ever resolved.
_ALLOWED = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _multiarray._reconstruct  # ndarray.__reduce__: empty array to fill
    _ALLOWED[(_module, "scalar")] = _multiarray.scalar  # numpy scalars (and 0-d items)
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _numeric._frombuffer  # protocol-5 arrays: a copy of a byte buffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What protocol-2 pickles written by Python 3 call (`_codecs.encode`) to rebuild array bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED[("_codecs", "encode")] = _latin1_encode


def numpy_scalar_globals() -> list[tuple[object, str]]:
    """The numpy globals above (dtype and scalar constructors, under numpy 1's and 2's module names) as
    (object, "module.name") pairs for `torch.serialization.safe_globals`, plus the dtype classes torch's
    unpickler must accept in a BUILD: what the original's checkpoints pickle for numpy metrics."""
    pairs: list[tuple[object, str]] = [(obj, f"{module}.{name}") for (module, name), obj in _ALLOWED.items()
                                       if module != "_codecs"]  # torch has its own _codecs.encode
    pairs += [(type(np.dtype(code)), f"numpy.dtypes.{type(np.dtype(code)).__name__}")
              for code in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u1", "b1")]
    return pairs


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than a numpy array; nothing it named was imported or called."""


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # like the original: py2-era numpy pickles need it
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused global {module}.{name}; only numpy arrays may be loaded from a "
                f"feature pickle (the file may be corrupt or malicious: re-extract or re-download it)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refused persistent id {pid!r}; only numpy arrays may be "
                                f"loaded")


def load_pickle_array(path: str | os.PathLike) -> np.ndarray:
    """The numpy array pickled in `path`; anything else (code, objects, object arrays) raises an error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature pickle {path} does not exist: run stages.extract_features or check "
                                f"dataset.features")
    with open(path, "rb") as f:
        try:
            array = _ArrayUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # truncated or not a pickle at all
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({type(error).__name__}: {error}); "
                                         f"re-extract or re-download it") from error
    if not isinstance(array, np.ndarray):
        raise UnsafePickleError(f"{path}: holds a {type(array).__name__}, expected a numpy array")
    if array.dtype.hasobject:
        raise UnsafePickleError(f"{path}: holds an object array ({array.dtype}); expected numbers")
    return array
