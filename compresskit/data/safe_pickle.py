"""Reading data pickles (CIFAR's python-version files) without ever running code from them.

A pickle names Python callables ("globals") that the reader calls to rebuild objects; a crafted
file can name ``os.system`` and so run anything the moment it is read. `load_pickle` reads with an
allow-list instead: the few numpy functions and types that numpy's own pickles of arrays, dtypes
and scalars name (under both numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` module names),
the latin-1 ``_codecs.encode`` that Python 3 uses for ``bytes`` in protocols 0–2, and the
builtin containers ``set``, ``frozenset`` and ``bytearray``. Any other global is refused before it
is imported or called. Dicts, lists, tuples, strings, bytes, numbers, None and booleans need no
global at all.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import numpy as np

from compresskit.errors import CompresskitError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 0–2 pickles of ``bytes`` use it: latin-1 only, so a file
    cannot reach any other codec."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1", errors)


_NUMPY = {
    "_reconstruct": _multiarray._reconstruct,  # ndarray.__reduce__
    "scalar": _multiarray.scalar,  # numpy scalars (np.int64(3), …)
}
ALLOWED: dict[tuple[str, str], object] = {
    **{(module, name): value for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, value in _NUMPY.items()},
    **{(module, "_frombuffer"): _numeric._frombuffer  # ndarray.__reduce_ex__(5)
       for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(module, name): getattr(builtins, name) for module in ("builtins", "__builtin__")
       for name in ("set", "frozenset", "bytearray")},
}  # fmt: skip


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside `ALLOWED`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def load_pickle(path: str | Path, what: str = "data") -> object:
    """The object pickled in `path`, rebuilt from plain data and numpy arrays only.

    Python 2 pickles (CIFAR's) decode their byte strings as latin-1, like ``pickle.load(f,
    encoding="latin1")``. A file that names any global outside `ALLOWED` is refused with a
    `CompresskitError` naming `path` and the global, before that global is imported or called;
    a file that is not a pickle at all is a `CompresskitError` too. `what` names the expected
    kind of file in the messages (e.g. "CIFAR-10").
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise CompresskitError(
            f"{path} is not a plain {what} file: it names the Python global {exc.module}.{exc.name}, "
            "and compresskit only loads numpy arrays and plain data from a pickle, never code."
        ) from None
    except Exception as exc:
        raise CompresskitError(f"{path} could not be read as a {what} file ({exc}).") from None
