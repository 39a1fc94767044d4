"""Reusable scratch arrays, so hot loops do not allocate fresh memory every step.

On the CPU a fresh large array costs a page fault per 4 KiB on first touch
(the column buffers of a convolution are tens of MB: their first write runs
at half the speed of a write into reused memory). A layer keeps one
:class:`Workspace` and asks it for named buffers; a buffer is reallocated
only when the shape, dtype or array module changes. CuPy has its own memory
pool, where this costs nothing and changes nothing.

Buffers from a workspace are scratch: never return them to a caller.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from ..backend import Array, get_array_module


class Workspace:
    """Named scratch buffers of one owner (a layer)."""

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
        ``fresh`` tells whether it was just allocated.
        """
        shape = tuple(int(s) for s in shape)
        array, old_layout = self._arrays.get(name, (None, None))
        if array is not None and tuple(array.shape) == shape and array.dtype == dtype \
                and get_array_module(array) is xp and old_layout == layout:
            if fill == "zeros":
                array.fill(0)
            return array, False
        array = xp.empty(shape, dtype=dtype) if fill == "empty" else xp.zeros(shape, dtype=dtype)
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


def scratch(workspace: "Workspace | None", name: str, shape: tuple[int, ...], dtype: Any,
            xp: ModuleType, fill: str = "empty", layout: Any = None) -> Array:
    """A buffer from ``workspace``, or a new array when there is none."""
    if workspace is not None:
        return workspace.get(name, shape, dtype, xp, fill, layout)[0]
    shape = tuple(int(s) for s in shape)
    return xp.empty(shape, dtype=dtype) if fill == "empty" else xp.zeros(shape, dtype=dtype)
