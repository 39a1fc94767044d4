"""Model files: the architecture document and the arrays of one .npz, safe by construction.

File layout (``numpy.savez``, no pickles anywhere):

- ``"architecture"``: UTF-8 JSON in a 1-D uint8 array::

      {"format": "gpuconv-model", "version": 1, "dtype": "float32",
       "layers": [{"type": "Conv2D", "config": {...}}, ...]}

  A leaf layer with frozen parameters (``Parameter.requires_grad`` False)
  adds ``"frozen": ["weight", ...]``; rebuilding calls ``layer.freeze(...)``.
  ``Residual`` is ``{"type": "Residual", "config": {"body": [...],
  "shortcut": [...]}}`` and a nested ``Sequential`` is
  ``{"type": "Sequential", "config": {"layers": [...]}}``.
- ``"param/<name>"``: every parameter as a host array (``"param/0.weight"``).
- ``"buffer/<name>"``: every buffer (``"buffer/1.running_mean"``).

Loading rebuilds layers only from a fixed registry of known types
(:data:`gpuconv.layers.LAYER_TYPES` plus ``Sequential``) with JSON keyword
arguments, so a crafted file can execute nothing. Unknown types, bad configs,
missing or extra arrays and shape/dtype mismatches raise ValueError naming
the file and the entry. A model saved on one device loads on any other; the
dtype (float32/float64) is kept.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy

from ..backend import to_numpy
from ..containers.sequential import Sequential as _BaseSequential
from ..layers import LAYER_TYPES
from ..layers.base import Layer
from ..layers.residual import Residual
from .npzfile import atomic_savez, json_array, read_npz

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "ARCHITECTURE_KEY", "CHECKPOINT_KEY", "layer_spec",
           "model_spec", "model_arrays", "build_layers", "check_model_spec", "check_model_arrays",
           "save_model", "read_model_file", "registry"]

MODEL_FORMAT = "gpuconv-model"
MODEL_VERSION = 1
ARCHITECTURE_KEY = "architecture"
CHECKPOINT_KEY = "checkpoint"  # the metadata entry of training checkpoints (checkpoint.py)


def registry(sequential: type = _BaseSequential) -> dict[str, type]:
    """Layer types a file may name: ``gpuconv.layers.LAYER_TYPES`` plus ``Sequential``
    (built as ``sequential``: the trainable :class:`gpuconv.Sequential` when
    :mod:`gpuconv.models` rebuilds a model, the plain container otherwise)."""
    types = dict(LAYER_TYPES)
    types["Sequential"] = sequential
    return types


# ---- model -> JSON -------------------------------------------------------------------
def layer_spec(layer: Layer) -> dict:
    """``{"type": name, "config": {...}}`` for one layer (recursing into containers).

    Raises TypeError for layer classes that are not in the registry (custom
    layers cannot be saved by name, so they are refused rather than guessed).
    """
    if isinstance(layer, _BaseSequential):
        return {"type": "Sequential", "config": {"layers": [layer_spec(c) for c in layer]}}
    if isinstance(layer, Residual):
        return {"type": "Residual",
                "config": {"body": [layer_spec(c) for c in layer.body],
                           "shortcut": [layer_spec(c) for c in layer.shortcut]}}
    name = type(layer).__name__
    if LAYER_TYPES.get(name) is not type(layer):
        raise TypeError(f"cannot save layer {layer!r}: {type(layer).__module__}.{name} is not "
                        f"a registered layer type (known: {sorted(registry())})")
    config = layer.config()
    try:
        json.dumps(config, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"cannot save layer {layer!r}: its config is not JSON "
                        f"serialisable ({exc})") from None
    spec = {"type": name, "config": config}
    frozen = layer.frozen_names()
    if frozen:  # omitted when empty: files without frozen parameters are unchanged
        spec["frozen"] = frozen
    return spec


def _model_dtype(model: Layer) -> str:
    dtype = model.dtype
    return numpy.dtype(dtype).name if dtype is not None else "float32"


def model_spec(model: _BaseSequential) -> dict:
    """The architecture document of a Sequential model (see module docstring)."""
    return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "dtype": _model_dtype(model),
            "layers": [layer_spec(layer) for layer in model]}


def model_arrays(model: Layer) -> dict[str, numpy.ndarray]:
    """Host copies of all parameters (``"param/<name>"``) and buffers (``"buffer/<name>"``)."""
    arrays = {f"param/{name}": numpy.ascontiguousarray(to_numpy(p.data))
              for name, p in model.named_parameters()}
    arrays.update({f"buffer/{name}": numpy.ascontiguousarray(to_numpy(b))
                   for name, b in model.named_buffers()})
    return arrays


# ---- JSON -> model -------------------------------------------------------------------
def _build_layer(spec: Any, types: dict[str, type], where: str) -> Layer:
    if not isinstance(spec, dict) or set(spec) - {"type", "config", "frozen"} or "type" not in spec:
        raise ValueError(f"{where}: expected {{'type': ..., 'config': {{...}}}}, got {spec!r:.200}")
    kind, config = spec["type"], spec.get("config", {})
    if not isinstance(kind, str) or kind not in types:
        raise ValueError(f"{where}: unknown layer type {kind!r}; known types: {sorted(types)}")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{where} ({kind}): config must be a JSON object, got {config!r:.200}")
    where = f"{where} ({kind})"
    if kind == "Sequential":
        _only_keys(config, {"layers"}, where)
        return types[kind](_build_list(config.get("layers", []), types, f"{where}.layers"))
    if kind == "Residual":
        _only_keys(config, {"body", "shortcut"}, where)
        body = _build_list(config.get("body", []), types, f"{where}.body")
        shortcut = _build_list(config.get("shortcut", []), types, f"{where}.shortcut")
        try:
            return Residual(body, shortcut or None)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    frozen = spec.get("frozen", [])
    if not isinstance(frozen, list) or not all(isinstance(n, str) for n in frozen):
        raise ValueError(f"{where}: 'frozen' must be a list of parameter names, got {frozen!r:.200}")
    try:
        layer = types[kind](**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: invalid config {config!r:.300}: {exc}") from None
    try:
        return layer.freeze(*frozen) if frozen else layer
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot freeze {frozen}: {exc}") from None


def _only_keys(config: dict, allowed: set, where: str) -> None:
    extra = sorted(set(config) - allowed)
    if extra:
        raise ValueError(f"{where}: unexpected config keys {extra}")


def _build_list(specs: Any, types: dict[str, type], where: str) -> list[Layer]:
    if not isinstance(specs, list):
        raise ValueError(f"{where}: expected a list of layer specs, got {type(specs).__name__}")
    return [_build_layer(s, types, f"{where}[{i}]") for i, s in enumerate(specs)]


def check_model_spec(spec: Any, where: str = "architecture") -> str:
    """Validate the header of an architecture document; return its dtype name."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != MODEL_FORMAT:
        raise ValueError(f"{where}: not a gpuconv model (format {spec.get('format')!r}, "
                         f"expected {MODEL_FORMAT!r})")
    if spec.get("version") != MODEL_VERSION:
        raise ValueError(f"{where}: unsupported model format version {spec.get('version')!r} "
                         f"(this gpuconv reads version {MODEL_VERSION})")
    dtype = spec.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{where}: dtype must be 'float32' or 'float64', got {dtype!r}")
    return dtype


def build_layers(spec: Any, where: str = "architecture",
                 sequential: type = _BaseSequential) -> list[Layer]:
    """The top-level layers of a :func:`model_spec` document (weights freshly
    initialised; the CPU generator is advanced by the initialisers). Nested
    ``Sequential`` entries are built as ``sequential``."""
    check_model_spec(spec, where)
    return _build_list(spec.get("layers"), registry(sequential), f"{where}: layers")


def check_model_arrays(model: Layer, arrays: Mapping[str, numpy.ndarray], where: str,
                       ignore: tuple[str, ...] = ()) -> dict[str, numpy.ndarray]:
    """Validate ``param/``/``buffer/`` entries against ``model``; return its state dict.

    Every parameter and buffer must be present with the model's shape and
    dtype, and no other ``param/``/``buffer/`` entry may exist (keys listed in
    ``ignore`` and keys without those prefixes are skipped). Raises ValueError
    naming ``where`` and the entries.
    """
    expected = {f"param/{n}": p.data for n, p in model.named_parameters()}
    expected.update({f"buffer/{n}": b for n, b in model.named_buffers()})
    present = {k for k in arrays if k.startswith(("param/", "buffer/")) and k not in ignore}
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise ValueError(f"{where}: arrays do not match the architecture: missing "
                         f"{missing}, unexpected {extra}")
    state = {}
    for key, current in expected.items():
        value = arrays[key]
        if tuple(value.shape) != tuple(current.shape):
            raise ValueError(f"{where}: entry {key!r} has shape {tuple(value.shape)} but the "
                             f"architecture needs {tuple(current.shape)}")
        if value.dtype != current.dtype:
            raise ValueError(f"{where}: entry {key!r} has dtype {value.dtype} but the model "
                             f"is {current.dtype}")
        state[key.split("/", 1)[1]] = value
    return state


# ---- public API ----------------------------------------------------------------------
def save_model(model: _BaseSequential, path: "str | os.PathLike") -> None:
    """Write ``model`` (architecture, parameters, buffers) to ``path`` atomically.

    ``path`` is used as given (``.npz`` is recommended but not appended).
    Works from any device: arrays are copied to the host first.
    """
    arrays = model_arrays(model)
    arrays[ARCHITECTURE_KEY] = json_array(model_spec(model))
    atomic_savez(path, arrays)


def read_model_file(path: "str | os.PathLike") -> dict[str, numpy.ndarray]:
    """The entries of a model file written by :func:`save_model` (or of a training
    checkpoint, which holds the model too), checked for foreign entries.

    Raises FileNotFoundError for a missing file and ValueError naming the file
    for anything that is not a gpuconv model (pickles/object arrays, unknown
    entries, no architecture).
    """
    path = os.fspath(path)
    arrays = read_npz(path, "model")
    # a training checkpoint holds the model too, plus its "checkpoint"/"state/" entries
    is_checkpoint = CHECKPOINT_KEY in arrays
    extra = sorted(k for k in arrays
                   if k != ARCHITECTURE_KEY and not k.startswith(("param/", "buffer/"))
                   and not (is_checkpoint and (k == CHECKPOINT_KEY or k.startswith("state/"))))
    if extra:
        raise ValueError(f"{path}: unexpected entries {extra} in a model file")
    if ARCHITECTURE_KEY not in arrays:
        raise ValueError(f"{path}: no {ARCHITECTURE_KEY!r} entry; not a gpuconv model file")
    return arrays
