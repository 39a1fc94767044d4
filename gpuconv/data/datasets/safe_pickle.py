"""A restricted unpickler for dataset files (the CIFAR-10 python batches).

A pickle can name any importable callable and have it called while loading
(``os.system``, ``builtins.eval``, ...). Dataset files come from the network,
so :func:`load_pickle` resolves only the few globals needed to rebuild plain
containers and NumPy arrays (``_reconstruct``/``_frombuffer``, ``ndarray``,
``dtype``, ``codecs.encode`` restricted to latin-1 and ``bytes()`` without
arguments) and refuses every other one *before* anything is
called, raising :class:`UnsafePickleError` that names the file.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from typing import Any

import numpy

__all__ = ["UnsafePickleError", "SafeUnpickler", "load_pickle"]

# numpy's array reconstructor, found without importing numpy.core (deprecated
# in NumPy 2) or numpy._core (absent in NumPy 1).
_reconstruct = numpy.ndarray.__reduce__(numpy.zeros(1))[0]
# protocol 5 pickles of arrays use numpy's _frombuffer(buffer, dtype, shape, order)
_frombuffer = numpy.ndarray.__reduce_ex__(numpy.zeros(1), 5)[0]


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``codecs.encode`` as Python 3 pickles of ``bytes`` at protocol <= 2 use it,
    limited to str -> latin-1 bytes (no other codec can be invoked)."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1" \
            or errors != "strict":
        raise UnsafePickleError(
            f"codecs.encode is allowed only as (str, 'latin1'), got ({type(obj).__name__}, "
            f"{encoding!r}, {errors!r})",
            global_name=f"codecs.encode({type(obj).__name__}, {encoding!r}, {errors!r})")
    return obj.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``, as Python 3 pickles ``b""`` at protocol <= 2 (no arguments allowed)."""
    if args:
        raise UnsafePickleError("bytes(...) is allowed only without arguments",
                                global_name=f"bytes() with {len(args)} argument(s)")
    return b""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy", "dtype"): numpy.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referred to a global outside the allow-list, or called an allowed one
    with arguments outside its limits; nothing unsafe was called.

    ``global_name`` is the refused ``module.name``; ``source`` the file, when known.
    """

    def __init__(self, message: str, *, global_name: "str | None" = None,
                 source: "str | None" = None) -> None:
        super().__init__(message)
        self.global_name = global_name
        self.source = source


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only allow-listed globals
    (NumPy array reconstruction and latin-1 ``codecs.encode``)."""

    def __init__(self, file: Any, *, source: str = "<pickle>", encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name} from a dataset "
                "pickle (only NumPy arrays and plain containers are allowed); the file is "
                "not a genuine dataset file, delete it and download it again",
                global_name=f"{module}.{name}", source=self.source) from None


def load_pickle(path: "str | os.PathLike[str]", encoding: str = "latin1") -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`.

    Raises :class:`UnsafePickleError` for forbidden globals and
    ``pickle.UnpicklingError`` naming the file for truncated or malformed data.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return SafeUnpickler(io.BytesIO(data), source=path, encoding=encoding).load()
    except UnsafePickleError as exc:
        if exc.source is not None:
            raise
        raise UnsafePickleError(f"{path}: {exc}", global_name=exc.global_name,
                                source=path) from None
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, ...
        raise pickle.UnpicklingError(
            f"{path}: not a readable pickle, the file is truncated or corrupt "
            f"({type(exc).__name__}: {exc})") from exc
