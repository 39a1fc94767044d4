"""A strict fake CuPy: a test double that lets the whole suite run "on the GPU" without one.

``fakecupy.xp`` is a module exposing only the names that both NumPy and the
installed ``cupy`` package expose (computed from ``dir(cupy)`` at import;
CuPy imports fine without a GPU). Its arrays are :class:`FakeArray`, a
wrapper around a numpy.ndarray that is *not* an ndarray subclass and, like
``cupy.ndarray``, refuses every implicit host/device mix:

- ``numpy.asarray(fake)`` / ``fake.__array__()`` raise TypeError;
- any operator, ufunc, method or module function that meets a
  ``numpy.ndarray`` (either side, ``out=``, setitem values and indices)
  raises TypeError;
- Python scalars and NumPy scalars (``numpy.generic``) are accepted, as CuPy
  accepts them; ``float(fake)`` / ``int(fake)`` / ``bool(fake)`` work for
  size-1 arrays (CuPy allows these; they synchronise);
- reductions and full integer indexing return 0-d arrays, not scalars;
- ``xp.asarray`` / ``xp.array`` / ``xp.asanyarray`` accept numpy arrays
  (the explicit host->device copy) and always copy them;
- ``xp.random.default_rng(seed)`` returns a generator exposing only the
  methods ``cupy.random.Generator`` has (no permutation, normal, choice,
  shuffle), with CuPy's signatures (``dtype=`` on random, standard_normal
  and uniform).

Devices: the fake has two GPUs (``xp.cuda.runtime.getDeviceCount() == 2``)
and a *current device* per host thread (``xp.cuda.Device(i)`` as a context
manager, as in CuPy). Arrays carry the device they were created on (the
current one; ``from_host(a, index)`` puts them on ``index``) and, like CuPy
without peer access, every operation that launches work on an array of
another device raises ValueError ("The device where the array resides (1)
is different from the current device (0)..."). Views (basic indexing,
reshape, transpose), metadata and host copies (``.get()``, ``float()``,
``repr``) work from any device, as in CuPy. A generator belongs to the
device current at its creation and refuses to draw on another. ``a.data.ptr``
is the address of the array's memory (used by the fake NCCL in tests).

Deliberately stricter than CuPy in one place: CuPy silently copies a
numpy.ndarray used as an *index* (``cupy_arr[numpy_mask]``) to the device;
the fake raises, since such an index is a hidden transfer on every call.

Importing this module registers the backend under the device name
``"fakecupy"`` (``gpuconv.backend.to_device(x, "fakecupy")``,
``layer.to("fakecupy")``).
"""
from __future__ import annotations

import operator
import threading
import types
from typing import Any

import cupy
import numpy

from gpuconv.backend import Backend, register_backend

DEVICE = "fakecupy"

_IMPLICIT_MSG = ("Implicit conversion to a NumPy array is not allowed. "
                 "Please use `.get()` to construct a NumPy array explicitly.")


def _unsupported(obj: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(obj)}: fakecupy (like CuPy) does not mix "
                     "device arrays with numpy.ndarray; transfer explicitly")


DEVICE_COUNT = 2
_local = threading.local()  # the current device, per host thread (as CUDA's)


def current_device_id() -> int:
    return getattr(_local, "device", 0)


def _peer_error(array_device: int) -> ValueError:
    return ValueError(f"The device where the array resides ({array_device}) is different "
                      f"from the current device ({current_device_id()}). Peer access is "
                      "unavailable between these devices.")


class _FakeDevice:
    """Stand-in for ``cupy.cuda.Device``: ``id``, ``use()``, a context manager."""

    def __init__(self, device: "int | None" = None) -> None:
        index = current_device_id() if device is None else int(device)
        if not 0 <= index < DEVICE_COUNT:
            raise RuntimeError(f"CUDA error: invalid device ordinal ({index})")
        self.id = index
        self._previous: list[int] = []

    def use(self) -> None:
        _local.device = self.id

    def synchronize(self) -> None:
        return None

    def __enter__(self) -> "_FakeDevice":
        self._previous.append(current_device_id())
        _local.device = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        _local.device = self._previous.pop()

    def __repr__(self) -> str:
        return f"<FakeCUDA Device {self.id}>"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _FakeDevice) and other.id == self.id

    def __hash__(self) -> int:
        return self.id


class _FakeStream:
    """``cupy.cuda.get_current_stream()``: a ``ptr`` and ``synchronize()``."""

    ptr = 0

    def synchronize(self) -> None:
        return None


class _FakeMemoryPointer:
    """``cupy.ndarray.data``: ``ptr`` (the address of the first element) and ``device``."""

    def __init__(self, ptr: int, device_id: int) -> None:
        self.ptr = ptr
        self.device_id = device_id
        self.device = _FakeDevice(device_id)


_cuda = types.ModuleType("fakecupy.cuda", "fake of cupy.cuda: devices and streams")
_cuda.Device = _FakeDevice
_cuda.get_current_stream = lambda device=None: _FakeStream()  # noqa: E731
_cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: DEVICE_COUNT,
                                      getDevice=current_device_id)


_POINTER_DEVICES: dict[int, int] = {}  # a.data.ptr -> device, for the fake NCCL's checks


def pointer_device(ptr: int) -> "int | None":
    """The device of the array whose ``.data.ptr`` last was ``ptr`` (None: never seen)."""
    return _POINTER_DEVICES.get(int(ptr))


def _on_current(array: "FakeArray") -> "FakeArray":
    """``array`` if it lives on the current device, else CuPy's peer-access error."""
    if array._dev != current_device_id():
        raise _peer_error(array._dev)
    return array


# ---------------------------------------------------------------------------
# unwrapping / wrapping
# ---------------------------------------------------------------------------

def _unwrap(obj: Any, allow_host: bool = False) -> Any:
    """FakeArray -> its numpy array; numpy.ndarray -> TypeError (unless allow_host)."""
    if isinstance(obj, FakeArray):
        return _on_current(obj)._a
    if isinstance(obj, numpy.ndarray):
        if allow_host:
            return obj
        raise _unsupported(obj)
    if isinstance(obj, (list, tuple)):
        items = [_unwrap(o, allow_host) for o in obj]
        return type(obj)(items) if isinstance(obj, list) else tuple(items)
    return obj


def _wrap(obj: Any) -> Any:
    """numpy.ndarray -> FakeArray; numpy scalar -> 0-d FakeArray; tuples/lists recursively."""
    if isinstance(obj, numpy.ndarray):
        return FakeArray(obj)
    if isinstance(obj, numpy.generic):
        return FakeArray(numpy.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _operand(other: Any) -> Any:
    """An operator's other operand: FakeArray or scalar; ndarray/list/other -> error."""
    if isinstance(other, FakeArray):
        return _on_current(other)._a
    if isinstance(other, (bool, int, float, complex, numpy.generic)):
        return other
    if isinstance(other, numpy.ndarray):
        raise _unsupported(other)
    return None  # not ours: NotImplemented


def _index(key: Any) -> Any:
    """Unwrap an index. numpy.ndarray indices are refused (see module doc)."""
    if isinstance(key, FakeArray):
        return _on_current(key)._a
    if isinstance(key, numpy.ndarray):
        raise TypeError("fakecupy: indexing with a numpy.ndarray is a hidden host->device "
                        "transfer; create the index on the device (xp.asarray) first")
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, list):
        return [_index(k) for k in key]
    if isinstance(key, slice):
        return slice(_index(key.start), _index(key.stop), _index(key.step))
    return key


# ---------------------------------------------------------------------------
# the array
# ---------------------------------------------------------------------------

_BINARY = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
           "and", "or", "xor", "lshift", "rshift"]
_COMPARE = ["lt", "le", "eq", "ne", "gt", "ge"]
_UNARY = ["neg", "pos", "abs", "invert"]

# methods both cupy.ndarray and numpy.ndarray have (plus .get / .set below)
_ARRAY_METHODS = frozenset(
    n for n in set(dir(cupy.ndarray)) & set(dir(numpy.ndarray))
    if not n.startswith("_") and callable(getattr(numpy.ndarray, n, None))
    and not isinstance(getattr(numpy.ndarray, n), (property, types.GetSetDescriptorType)))
_NO_WRAP_METHODS = frozenset({"item", "tolist", "tobytes", "tofile", "dump", "dumps"})
# methods that may return a view: CuPy runs them without a kernel when they do
_VIEW_METHODS = frozenset({"reshape", "view", "transpose", "swapaxes", "squeeze", "ravel",
                           "diagonal"})


def _is_basic_index(key: Any) -> bool:
    """True for keys that select a view (ints, slices, None, Ellipsis, tuples of them)."""
    parts = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, slice) and
               all(isinstance(v, (int, type(None))) for v in (k.start, k.stop, k.step))
               or isinstance(k, int) and not isinstance(k, bool) for k in parts)


class FakeArray:
    """A 'device' array: a numpy array behind CuPy's strict interface."""

    __slots__ = ("_a", "_dev")
    __array_priority__ = 100  # like cupy: numpy defers binary operators to us

    def __init__(self, array: numpy.ndarray, device: "int | None" = None) -> None:
        if not isinstance(array, numpy.ndarray):
            raise TypeError(f"FakeArray wraps a numpy.ndarray, got {type(array)}")
        object.__setattr__(self, "_a", array)
        object.__setattr__(self, "_dev", current_device_id() if device is None else device)

    def _view(self, array: numpy.ndarray) -> "FakeArray":
        """A view of this array: same device, no kernel, allowed from any device."""
        return FakeArray(array, self._dev)

    # ---- explicit transfers ------------------------------------------------
    def get(self, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> numpy.ndarray:
        """Copy to the host as a numpy.ndarray (like cupy.ndarray.get)."""
        if out is not None:
            if not isinstance(out, numpy.ndarray):
                raise TypeError("out must be a numpy.ndarray")
            out[...] = self._a
            return out
        return numpy.array(self._a, copy=True, order=order)

    def set(self, arr: numpy.ndarray, stream: Any = None) -> None:
        """Copy a host array into this array (like cupy.ndarray.set)."""
        if not isinstance(arr, numpy.ndarray):
            raise TypeError("set expects a numpy.ndarray")
        if arr.shape != self._a.shape:
            raise ValueError("Shape mismatch")
        self._a[...] = arr

    @property
    def data(self) -> _FakeMemoryPointer:
        ptr = self._a.__array_interface__["data"][0]
        _POINTER_DEVICES[ptr] = self._dev
        return _FakeMemoryPointer(ptr, self._dev)

    def __array__(self, *args: Any, **kwargs: Any) -> numpy.ndarray:
        raise TypeError(_IMPLICIT_MSG)

    # ---- numpy protocols (as cupy.ndarray implements them) -------------------
    def __array_ufunc__(self, ufunc: numpy.ufunc, method: str, *inputs: Any, **kwargs: Any):
        fake_ufunc = getattr(xp, ufunc.__name__, None)
        if not isinstance(fake_ufunc, FakeUfunc):
            return NotImplemented
        if method == "__call__":
            return fake_ufunc(*inputs, **kwargs)
        return getattr(fake_ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any):
        module = xp
        for part in func.__module__.split(".")[1:]:
            if part.startswith("_"):
                continue
            module = getattr(module, part, None)
            if module is None:
                return NotImplemented
        fake_func = getattr(module, func.__name__, None)
        if fake_func is None or fake_func is func:
            return NotImplemented
        return fake_func(*args, **kwargs)

    # ---- attributes ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: Any) -> None:
        self._a.shape = value

    @property
    def dtype(self) -> numpy.dtype:
        return self._a.dtype

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def itemsize(self) -> int:
        return self._a.itemsize

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    @property
    def strides(self) -> tuple[int, ...]:
        return self._a.strides

    @property
    def flags(self):
        return self._a.flags

    @property
    def base(self) -> "FakeArray | None":
        return None if self._a.base is None or not isinstance(self._a.base, numpy.ndarray) \
            else self._view(self._a.base)

    @property
    def T(self) -> "FakeArray":
        return self._view(self._a.T)

    @property
    def mT(self) -> "FakeArray":
        return self._view(self._a.mT)

    @property
    def real(self) -> "FakeArray":
        return self._view(self._a.real)

    @property
    def imag(self) -> "FakeArray":
        return self._view(self._a.imag)

    @property
    def device(self) -> _FakeDevice:
        return _FakeDevice(self._dev)

    def __getattr__(self, name: str) -> Any:
        if name in _ARRAY_METHODS:
            method = getattr(self._a, name)
            wrap = name not in _NO_WRAP_METHODS
            view = name in _VIEW_METHODS or not wrap

            def call(*args: Any, **kwargs: Any) -> Any:
                if not view:
                    _on_current(self)
                result = method(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
                if result is self._a:
                    return self
                out = kwargs.get("out")
                if isinstance(out, FakeArray) and result is out._a:
                    return out
                if view and isinstance(result, numpy.ndarray) and \
                        numpy.shares_memory(result, self._a):
                    return self._view(result)
                return _wrap(result) if wrap else result

            call.__name__ = name
            return call
        raise AttributeError(f"'fakecupy.ndarray' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "shape":
            self._a.shape = value
            return
        raise AttributeError(f"'fakecupy.ndarray' attributes are read-only ({name!r})")

    def __dir__(self) -> list[str]:
        return sorted(set(object.__dir__(self)) | _ARRAY_METHODS)

    # ---- python protocol ------------------------------------------------------
    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        for i in range(len(self._a)):
            yield self[i]

    def __bool__(self) -> bool:
        return bool(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __index__(self) -> int:
        return operator.index(self._a[()]) if self._a.ndim == 0 else operator.index(self._a)

    def __repr__(self) -> str:
        return "fake" + repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a[()] if self._a.ndim == 0 else self._a, spec)

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> "FakeArray":
        return FakeArray(_on_current(self)._a.copy())

    def __deepcopy__(self, memo: Any) -> "FakeArray":
        return FakeArray(self._a.copy(), self._dev)

    def __reduce__(self):
        return (FakeArray, (self._a, self._dev))

    # ---- indexing ---------------------------------------------------------------
    def __getitem__(self, key: Any) -> "FakeArray":
        if _is_basic_index(key):  # a view: no kernel, any current device (as CuPy)
            result = self._a[key]
            return self._view(result) if isinstance(result, numpy.ndarray) else \
                self._view(numpy.asarray(result))
        return _wrap(_on_current(self)._a[_index(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, numpy.ndarray):
            raise _unsupported(value)
        _on_current(self)
        if isinstance(value, FakeArray):
            value = _on_current(value)._a
        self._a[_index(key)] = value


def _make_binary(name: str):
    op = getattr(operator, name if name not in ("and", "or") else name + "_")
    iop = getattr(operator, "i" + name)

    def forward(self: FakeArray, other: Any) -> Any:
        o = _operand(other)
        if o is None:
            return NotImplemented
        return _wrap(op(_on_current(self)._a, o))

    def reflected(self: FakeArray, other: Any) -> Any:
        o = _operand(other)
        if o is None:
            return NotImplemented
        return _wrap(op(o, _on_current(self)._a))

    def inplace(self: FakeArray, other: Any) -> FakeArray:
        o = _operand(other)
        if o is None:
            return NotImplemented
        iop(_on_current(self)._a, o)  # numpy updates self._a in place
        return self

    return forward, reflected, inplace


for _name in _BINARY:
    _f, _r, _i = _make_binary(_name)
    setattr(FakeArray, f"__{_name}__", _f)
    setattr(FakeArray, f"__r{_name}__", _r)
    setattr(FakeArray, f"__i{_name}__", _i)


def _make_compare(name: str):
    op = getattr(operator, name)

    def compare(self: FakeArray, other: Any) -> Any:
        o = _operand(other)
        if o is None:
            return NotImplemented
        return _wrap(op(_on_current(self)._a, o))

    return compare


for _name in _COMPARE:
    setattr(FakeArray, f"__{_name}__", _make_compare(_name))


def _make_unary(name: str):
    op = getattr(operator, name)

    def unary(self: FakeArray) -> FakeArray:
        return _wrap(op(_on_current(self)._a))

    return unary


for _name in _UNARY:
    setattr(FakeArray, f"__{_name}__", _make_unary(_name))


def _divmod(self: FakeArray, other: Any) -> Any:
    o = _operand(other)
    if o is None:
        return NotImplemented
    return _wrap(divmod(_on_current(self)._a, o))


FakeArray.__divmod__ = _divmod  # type: ignore[attr-defined]
FakeArray.__name__ = "ndarray"
FakeArray.__qualname__ = "ndarray"
FakeArray.__module__ = "fakecupy"


# ---------------------------------------------------------------------------
# ufuncs and module functions
# ---------------------------------------------------------------------------

def _call_numpy(fn: Any, args: tuple, kwargs: dict, allow_host: bool = False) -> Any:
    out = kwargs.get("out")
    raw_args = _unwrap(args, allow_host)
    raw_kwargs = {k: _unwrap(v, allow_host) for k, v in kwargs.items()}
    result = fn(*raw_args, **raw_kwargs)
    if isinstance(out, FakeArray) and result is out._a:
        return out
    if isinstance(out, tuple) and isinstance(result, tuple):
        return tuple(o if isinstance(o, FakeArray) and r is o._a else _wrap(r)
                     for o, r in zip(out, result))
    return _wrap(result)


class FakeUfunc:
    """A numpy ufunc behind the strict boundary (call, reduce, accumulate, outer, at)."""

    def __init__(self, ufunc: numpy.ufunc) -> None:
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__
        self.nin, self.nout, self.nargs = ufunc.nin, ufunc.nout, ufunc.nargs
        self.types = ufunc.types

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call_numpy(self._ufunc, args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return _call_numpy(self._ufunc.reduce, args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return _call_numpy(self._ufunc.accumulate, args, kwargs)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return _call_numpy(self._ufunc.reduceat, args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return _call_numpy(self._ufunc.outer, args, kwargs)

    def at(self, a: Any, indices: Any, b: Any = None) -> None:
        if not isinstance(a, FakeArray):
            raise _unsupported(a)
        _on_current(a)
        args = (_index(indices),) if b is None else (_index(indices), _unwrap(b))
        self._ufunc.at(a._a, *args)

    def __repr__(self) -> str:
        return f"<fakecupy ufunc {self.__name__}>"


# functions whose results are metadata, not arrays: never wrap numpy scalars they return
_META = frozenset({
    "dtype", "finfo", "iinfo", "result_type", "promote_types", "can_cast", "issubdtype",
    "isdtype", "min_scalar_type", "common_type", "isscalar", "ndim", "shape", "size",
    "typename", "mintypecode", "iterable", "isfortran", "may_share_memory", "shares_memory",
    "broadcast_shapes", "base_repr", "binary_repr", "array2string", "array_repr", "array_str",
    "format_float_positional", "format_float_scientific", "get_printoptions",
    "set_printoptions", "printoptions", "show_config", "iscomplexobj", "isrealobj",
})
# functions returning Python bools in NumPy but 0-d arrays in CuPy
_BOOL_TO_ARRAY = frozenset({"allclose", "array_equal", "array_equiv"})
# the explicit host->device transfer: numpy arrays accepted (and copied)
_FROM_HOST = frozenset({"asarray", "array", "asanyarray"})


def _wrap_function(name: str, fn: Any) -> Any:
    if name in _FROM_HOST:
        def from_host(a: Any, *args: Any, **kwargs: Any) -> FakeArray:
            if isinstance(a, numpy.ndarray):  # transfer: always a fresh copy
                a = numpy.array(a, copy=True)
            elif isinstance(a, FakeArray):
                result = fn(a._a, *_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
                if result is a._a:
                    return a
                _on_current(a)  # a dtype change is a kernel on a's device
                return FakeArray(numpy.asarray(result))
            result = fn(_unwrap(a, allow_host=True), *_unwrap(args),
                        **{k: _unwrap(v) for k, v in kwargs.items()})
            return FakeArray(numpy.asarray(result))
        from_host.__name__ = name
        return from_host

    def function(*args: Any, **kwargs: Any) -> Any:
        if name in _META:
            return fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        result = _call_numpy(fn, args, kwargs)
        if name in _BOOL_TO_ARRAY and isinstance(result, bool):
            return FakeArray(numpy.asarray(result))
        return result

    function.__name__ = name
    function.__doc__ = f"fakecupy wrapper of numpy.{name}"
    return function


class _Indexer:
    """Wraps numpy's index-trick objects (mgrid, ogrid, r_, c_) to return FakeArrays."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._obj[_unwrap(key)])


# ---------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------

_GENERATOR_METHODS = frozenset(
    n for n in dir(cupy.random.Generator)
    if not n.startswith("_") and hasattr(numpy.random.Generator, n))


class FakeGenerator:
    """numpy.random.Generator restricted to cupy.random.Generator's methods and signatures."""

    __slots__ = ("_gen", "_dev")

    def __init__(self, seed: Any = None) -> None:
        object.__setattr__(self, "_gen", numpy.random.default_rng(_unwrap(seed)))
        object.__setattr__(self, "_dev", current_device_id())  # its state lives there

    def _here(self) -> numpy.random.Generator:
        if self._dev != current_device_id():
            raise _peer_error(self._dev)
        return self._gen

    def random(self, size: Any = None, dtype: Any = numpy.float64, out: Any = None) -> Any:
        return self._fill(self._here().random(size=size, dtype=dtype), out)

    def standard_normal(self, size: Any = None, dtype: Any = numpy.float64, out: Any = None) -> Any:
        return self._fill(self._here().standard_normal(size=size, dtype=dtype), out)

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None,
                dtype: Any = numpy.float64) -> Any:
        low, high = _unwrap(low), _unwrap(high)
        return _wrap(self._here().uniform(low, high, size).astype(dtype, copy=False))

    def integers(self, low: Any, high: Any = None, size: Any = None, dtype: Any = numpy.int64,
                 endpoint: bool = False) -> Any:
        return _wrap(self._here().integers(_unwrap(low), _unwrap(high), size, dtype=dtype,
                                        endpoint=endpoint))

    @staticmethod
    def _fill(result: Any, out: Any) -> Any:
        if out is None:
            return _wrap(result)
        if not isinstance(out, FakeArray):
            raise _unsupported(out)
        _on_current(out)._a[...] = result
        return out

    def __getattr__(self, name: str) -> Any:
        if name in _GENERATOR_METHODS:
            method = getattr(self._gen, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                self._here()
                return _call_numpy(method, args, kwargs)

            call.__name__ = name
            return call
        raise AttributeError(f"'cupy.random.Generator' (fake) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(_GENERATOR_METHODS)


# ---------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------

def _build_module(name: str, np_mod: types.ModuleType, cp_mod: types.ModuleType,
                  depth: int = 0) -> types.ModuleType:
    mod = types.ModuleType(name, f"fake of {cp_mod.__name__} (names also in {np_mod.__name__})")
    allowed = sorted(n for n in set(dir(cp_mod)) & set(dir(np_mod)) if not n.startswith("_"))
    for attr in allowed:
        obj = getattr(np_mod, attr)
        cp_obj = getattr(cp_mod, attr)
        if isinstance(obj, numpy.ufunc):
            value: Any = FakeUfunc(obj)
        elif isinstance(obj, types.ModuleType):
            if depth >= 1 or not isinstance(cp_obj, types.ModuleType) or \
                    attr in ("typing", "lib", "exceptions", "random"):
                if attr == "exceptions":
                    value = obj
                else:
                    continue
            else:
                value = _build_module(f"{name}.{attr}", obj, cp_obj, depth + 1)
        elif isinstance(obj, type):
            value = obj  # dtype classes (float32, ...), finfo, dtype: shared with numpy
        elif attr in ("mgrid", "ogrid", "r_", "c_"):
            value = _Indexer(obj)
        elif callable(obj):
            value = _wrap_function(attr, obj)
        else:
            value = obj  # constants: pi, e, inf, nan, newaxis, s_, index_exp
        setattr(mod, attr, value)
    return mod


xp = _build_module("fakecupy", numpy, cupy)
xp.ndarray = FakeArray
xp.ufunc = FakeUfunc

random = _build_module("fakecupy.random", numpy.random, cupy.random)
for _attr in ("Generator", "default_rng", "BitGenerator", "RandomState"):
    if hasattr(random, _attr):
        delattr(random, _attr)
random.Generator = FakeGenerator
random.default_rng = lambda seed=None: FakeGenerator(seed)  # noqa: E731
xp.random = random
xp.cuda = _cuda

ALLOWED_NAMES = frozenset(n for n in vars(xp) if not n.startswith("_"))


def from_host(a: numpy.ndarray, index: int = 0) -> FakeArray:
    """The backend's host->device transfer to fake GPU ``index``: always a copy."""
    if not isinstance(a, numpy.ndarray):
        raise TypeError(f"from_host expects a numpy.ndarray, got {type(a)}")
    _FakeDevice(index)  # the index must exist
    return FakeArray(numpy.array(a, copy=True, order="C"), index)


BACKEND = Backend(name=DEVICE, xp=xp, array_type=FakeArray,
                  to_host=lambda a: a.get(), from_host=from_host,
                  device_index=lambda a: a._dev, device_context=_FakeDevice,
                  current_index=current_device_id)


def register() -> None:
    """(Re-)register the backend; idempotent."""
    register_backend(BACKEND)


register()
