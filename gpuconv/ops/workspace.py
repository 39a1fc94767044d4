"""Reusable scratch arrays, so hot loops do not allocate fresh memory every step.

On the CPU a fresh large array costs a page fault per 4 KiB on first touch
(the column buffers of a convolution are tens of MB: their first write runs
at half the speed of a write into reused memory). A layer keeps one
:class:`Workspace` and asks it for named buffers; a buffer is reallocated
only when the shape, dtype or array module changes.

Only NumPy buffers are kept (:func:`keeps_buffers`). On CuPy a workspace
hands out a new array on every call and keeps nothing: its memory pool gives
a just-freed block back at the cost of a lookup, while buffers kept per layer
would all stay allocated together: the sum over the layers of buffers used
only within one forward or one backward call (im2col's padded input, the
GEMM's output, dy as a matrix, the column gradient, col2im's padded sum).
For seed-cnn at batch 128 (float32, CUDA's whole-batch GEMMs) that is
159 MiB held, where the largest single call, the second conv's backward, uses
55 MiB. What backward needs (a convolution's columns) the layer keeps itself,
in its cache.

Buffers from a workspace are scratch: never return them to a caller.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from ..backend import Array, backend_of_module, get_array_module


def keeps_buffers(xp: ModuleType) -> bool:
    """Whether a :class:`Workspace` keeps buffers of array module ``xp`` from call to call:
    on the CPU (NumPy) only; elsewhere (CuPy) the device's memory pool recycles them."""
    return backend_of_module(xp).name == "cpu"


def _new(shape: tuple[int, ...], dtype: Any, xp: ModuleType, fill: str) -> Array:
    return xp.empty(shape, dtype=dtype) if fill == "empty" else xp.zeros(shape, dtype=dtype)


class Workspace:
    """Named scratch buffers of one owner (a layer), kept on the CPU only."""

    def __init__(self) -> None:
        self._arrays: dict[str, tuple[Array, Any]] = {}
        self._children: dict[str, "Workspace"] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any, xp: ModuleType,
            fill: str = "empty", layout: Any = None) -> tuple[Array, bool]:
        """``(array, fresh)``: buffer ``name`` of ``shape``/``dtype`` on ``xp``.

        ``fill``: ``"empty"`` (contents undefined), ``"zeros"`` (zeroed on every
        call) or ``"zeros_once"`` (zeroed when allocated; afterwards it keeps
        whatever the owner left in it -- for buffers whose zero border the owner
        never writes). ``layout``: any hashable describing how the owner uses
        the buffer beyond its shape (a padded image's height, width and
        padding); a different layout reallocates, so a zero border written for
        one geometry is never reused for another of the same size.
        ``fresh`` tells whether it was just allocated: always off the CPU
        (:func:`keeps_buffers`), where nothing is kept and every ``fill`` but
        ``"empty"`` gives zeros.
        """
        shape = tuple(int(s) for s in shape)
        if not keeps_buffers(xp):
            self._arrays.pop(name, None)  # a buffer kept on the CPU before a move to the GPU
            return _new(shape, dtype, xp, fill), True
        array, old_layout = self._arrays.get(name, (None, None))
        if array is not None and tuple(array.shape) == shape and array.dtype == dtype \
                and get_array_module(array) is xp and old_layout == layout:
            if fill == "zeros":
                array.fill(0)
            return array, False
        array = _new(shape, dtype, xp, fill)
        self._arrays[name] = (array, layout)
        return array, True

    def child(self, name: str) -> "Workspace":
        """A named sub-workspace (its own buffer names), created on first use: e.g. one
        per batch-chunk size, so a smaller last chunk never reallocates the others."""
        found = self._children.get(name)
        if found is None:
            found = self._children[name] = Workspace()
        return found

    def clear(self) -> None:
        self._arrays.clear()
        self._children.clear()

    def arrays(self) -> list[Array]:
        """The buffers kept here and in the sub-workspaces (for accounting, e.g. held bytes)."""
        kept = [array for array, _ in self._arrays.values()]
        for child in self._children.values():
            kept += child.arrays()
        return kept


def scratch(workspace: "Workspace | None", name: str, shape: tuple[int, ...], dtype: Any,
            xp: ModuleType, fill: str = "empty", layout: Any = None) -> Array:
    """A buffer from ``workspace``, or a new array when there is none."""
    if workspace is not None:
        return workspace.get(name, shape, dtype, xp, fill, layout)[0]
    return _new(tuple(int(s) for s in shape), dtype, xp, fill)
