"""Safe .npz archives: atomic writes, pickle-free reads, JSON trees with arrays.

Everything gpuconv writes to disk (models, training checkpoints) is one
``numpy.savez`` archive holding only plain numeric arrays. Structured data
(architectures, optimizer state, histories) is JSON text stored as a 1-D
``uint8`` array, never as an object array, so reading a file can construct
nothing but numbers and strings: :func:`read_npz` opens archives with
``allow_pickle=False`` and refuses every entry that is not a numeric array.

:func:`pack_tree` / :func:`unpack_tree` turn nested dicts/lists/tuples of
scalars and arrays (an optimizer's ``state_dict()``) into a JSON skeleton
plus a flat ``{key: numpy array}`` mapping and back.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Mapping

import numpy
from numpy.lib.npyio import NpzFile

from ..backend import Device, device_of, to_device, to_numpy
from .atomic import atomic_write

__all__ = ["ALLOWED_KINDS", "json_array", "read_json", "atomic_savez", "read_npz",
           "pack_tree", "unpack_tree", "is_array"]

ALLOWED_KINDS = "biuf"
"""dtype kinds an archive may hold: bool, signed/unsigned integers, floats."""


def json_array(obj: Any) -> numpy.ndarray:
    """``obj`` as UTF-8 JSON text in a 1-D uint8 array (NaN/Inf allowed)."""
    text = json.dumps(obj, sort_keys=False, allow_nan=True)
    return numpy.frombuffer(text.encode("utf-8"), dtype=numpy.uint8).copy()


def read_json(array: numpy.ndarray, where: str) -> Any:
    """Decode a :func:`json_array` entry; ValueError naming ``where`` if malformed."""
    if not isinstance(array, numpy.ndarray) or array.dtype != numpy.uint8 or array.ndim != 1:
        raise ValueError(f"{where}: expected JSON text stored as a 1-D uint8 array, got "
                         f"dtype={getattr(array, 'dtype', None)} "
                         f"shape={getattr(array, 'shape', None)}")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: invalid JSON ({exc})") from None


def atomic_savez(path: "str | os.PathLike", arrays: Mapping[str, numpy.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed .npz, atomically.

    The archive is written with :func:`gpuconv.io.atomic.atomic_write`
    (temporary file in the same directory, fsync'ed, moved over ``path`` with
    ``os.replace``): a reader (or a crash) sees either the old file or the
    complete new one.
    ``path`` is used exactly as given (no ``.npz`` suffix is appended); the
    parent directory is created if missing. Only numeric host arrays are
    accepted (TypeError otherwise), so nothing is ever pickled.
    """
    path = os.fspath(path)
    for key, value in arrays.items():
        if not isinstance(value, numpy.ndarray) or value.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"atomic_savez({path!r}): entry {key!r} must be a numeric "
                            f"numpy array, got {type(value).__name__} "
                            f"dtype={getattr(value, 'dtype', None)}")
    atomic_write(path, lambda f: numpy.savez(f, **arrays))


def read_npz(path: "str | os.PathLike", what: str = "archive") -> dict[str, numpy.ndarray]:
    """Read every entry of an .npz archive safely; returns ``{name: numpy array}``.

    Uses ``numpy.load(allow_pickle=False)``: pickled payloads and object
    arrays are never unpickled. Raises FileNotFoundError if ``path`` does not
    exist and ValueError naming the file (and entry) for anything that is
    not an .npz of plain numeric arrays (a pickle, a bare .npy, an object or
    structured array, a non-.npy member).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not a gpuconv {what} file")
    with open(path, "rb") as f:
        magic = f.read(6)
    # Check the format first: for anything else numpy.load guesses "a pickle" and
    # advises allow_pickle=True, which is wrong for a damaged file and unsafe.
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path}: a single .npy array, not an .npz archive; not a gpuconv "
                         f"{what} file")
    if magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ValueError(f"{path}: a Python pickle, not a gpuconv {what} file; refused "
                         "(it was not unpickled)")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise ValueError(f"{path}: not a gpuconv {what} file (not an .npz archive: "
                         f"{'empty' if not magic else 'unknown content'})")
    try:
        archive = numpy.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled file, or an unreadable header
        raise ValueError(f"{path}: refused to load {what}: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz {what}, the file is truncated or "
                         f"corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, NpzFile):
        raise ValueError(f"{path}: not an .npz {what} (found a single "
                         f"{type(archive).__name__})")
    out: dict[str, numpy.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                value = archive[key]
            except ValueError as exc:  # object arrays need pickle: refused
                if "allow_pickle" in str(exc):  # NumPy's words advise unpickling it
                    raise ValueError(f"{path}: entry {key!r} holds Python objects (a "
                                     f"pickle), refused (not unpickled); not a gpuconv "
                                     f"{what} file") from None
                raise ValueError(f"{path}: entry {key!r} refused: {exc}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ValueError(f"{path}: entry {key!r} is unreadable "
                                 f"({type(exc).__name__}: {exc})") from None
            if not isinstance(value, numpy.ndarray):
                raise ValueError(f"{path}: entry {key!r} is not a .npy array "
                                 f"({type(value).__name__}); refused")
            if value.dtype.kind not in ALLOWED_KINDS or value.dtype.names is not None:
                raise ValueError(f"{path}: entry {key!r} has dtype {value.dtype}; only "
                                 "bool, integer and floating arrays are allowed")
            out[key] = value
    return out


def is_array(obj: Any) -> bool:
    """True for numpy arrays and arrays of any registered device backend."""
    if isinstance(obj, numpy.ndarray):
        return True
    if not (hasattr(obj, "shape") and hasattr(obj, "dtype")) or isinstance(obj, numpy.generic):
        return False
    try:
        device_of(obj)
    except TypeError:
        return False
    return True


def _plain_key(key: Any) -> bool:
    return isinstance(key, str) and not key.startswith("__")


def pack_tree(obj: Any, prefix: str, arrays: dict[str, numpy.ndarray], path: str = "") -> Any:
    """JSON-able skeleton of ``obj``; its arrays go into ``arrays`` as host copies.

    Supports None, bool, int, float, str, numpy scalars (stored as Python
    numbers), numpy/device arrays (stored as ``{"__array__": key}`` with the
    array under ``arrays[key]``, keys ``prefix + "0"``, ``prefix + "1"``, ...),
    lists, tuples (``{"__tuple__": [...]}``) and dicts (with non-string or
    ``"__"``-prefixed keys as ``{"__items__": [[k, v], ...]}``). Anything else
    raises TypeError naming its position in the tree.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, numpy.generic) and obj.dtype.kind in ALLOWED_KINDS:
        return obj.item()
    if is_array(obj):
        host = numpy.ascontiguousarray(to_numpy(obj))
        if host.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot store array of dtype {host.dtype} at {path or '<root>'}")
        key = f"{prefix}{len(arrays)}"
        while key in arrays:
            key += "_"
        arrays[key] = host
        return {"__array__": key}
    if isinstance(obj, (list, tuple)):
        items = [pack_tree(v, prefix, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(_plain_key(k) for k in obj):
            return {k: pack_tree(v, prefix, arrays, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[pack_tree(k, prefix, arrays, f"{path}<key>"),
                               pack_tree(v, prefix, arrays, f"{path}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} at {path or '<root>'}: only "
                    "numbers, strings, None, arrays, lists, tuples and dicts are supported")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def unpack_tree(obj: Any, arrays: Mapping[str, numpy.ndarray],
                device: "str | Device | None" = None, where: str = "archive") -> Any:
    """Inverse of :func:`pack_tree`; arrays are moved to ``device`` (None: keep on host)."""
    if isinstance(obj, list):
        return [unpack_tree(v, arrays, device, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__array__"}:
        key = obj["__array__"]
        if not isinstance(key, str) or key not in arrays:
            raise ValueError(f"{where}: refers to array entry {key!r}, which is missing")
        value = arrays[key]
        return value if device is None else to_device(value, device)
    if set(obj) == {"__tuple__"}:
        return tuple(unpack_tree(v, arrays, device, where) for v in obj["__tuple__"])
    if set(obj) == {"__items__"}:
        return {_hashable(unpack_tree(k, arrays, device, where)):
                unpack_tree(v, arrays, device, where) for k, v in obj["__items__"]}
    return {k: unpack_tree(v, arrays, device, where) for k, v in obj.items()}
