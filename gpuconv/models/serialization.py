"""Rebuild trainable models from files: :func:`build_model` and :func:`load_model`.

The file format itself (architecture document, ``param/``/``buffer/``
entries, validation) lives in :mod:`gpuconv.io.spec`, which knows layers and
arrays but not the trainable model class; this module adds the one step that
needs it: building a :class:`gpuconv.Sequential` from the document.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy

from ..backend import Device, get_device
from ..io.spec import ARCHITECTURE_KEY, build_layers, check_model_arrays, check_model_spec, \
    read_model_file
from ..io.npzfile import read_json
from .sequential import Sequential

__all__ = ["build_model", "model_from_arrays", "load_model"]


def build_model(spec: Any, where: str = "architecture") -> Sequential:
    """Rebuild a :class:`Sequential` from :func:`gpuconv.io.spec.model_spec` output
    (weights freshly initialised, cast to the document's dtype; the CPU
    generator is advanced by the initialisers)."""
    dtype = check_model_spec(spec, where)
    return Sequential(build_layers(spec, where, sequential=Sequential)).astype(dtype)


def model_from_arrays(arrays: Mapping[str, numpy.ndarray], where: str,
                      device: "str | Device | None" = None,
                      ignore: tuple[str, ...] = ()) -> Sequential:
    """Build, validate and fill a model from archive entries (``architecture``,
    ``param/...``, ``buffer/...``)."""
    if ARCHITECTURE_KEY not in arrays:
        raise ValueError(f"{where}: no {ARCHITECTURE_KEY!r} entry; not a gpuconv model file")
    spec = read_json(arrays[ARCHITECTURE_KEY], f"{where}: entry {ARCHITECTURE_KEY!r}")
    model = build_model(spec, where)
    state = check_model_arrays(model, arrays, where, ignore)
    model.load_state_dict(state)
    return model.to(get_device("cpu") if device is None else device)


def load_model(path: "str | os.PathLike", device: "str | Device | None" = None) -> Sequential:
    """Load a model written by :func:`gpuconv.io.spec.save_model` (or
    ``Sequential.save``), or the model inside a training checkpoint
    (:func:`gpuconv.io.checkpoint.save_checkpoint`).

    ``device``: where to put it ("cpu", "cuda", a Device, ...); None means the
    CPU, where freshly built models live. The dtype saved is kept. Raises
    FileNotFoundError for a missing file and ValueError naming the file and
    entry for anything unexpected (pickles/object arrays, unknown layer types,
    bad configs, missing/extra arrays, shape or dtype mismatches).
    """
    path = os.fspath(path)
    return model_from_arrays(read_model_file(path), path, device)
