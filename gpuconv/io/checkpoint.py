"""Training checkpoints: everything needed to continue a run bit-identically.

One .npz archive, written atomically (temporary file in the same directory,
fsync, ``os.replace``), with no pickles:

- ``"architecture"``, ``"param/<name>"``, ``"buffer/<name>"``: the model, exactly
  as :func:`gpuconv.io.spec.save_model` writes it (so
  ``load_model`` can also read a checkpoint's model);
- ``"checkpoint"``: JSON (1-D uint8) with ``format``, ``version``, ``epoch``
  (number of completed epochs), ``step`` (optimisation steps done in epoch
  ``epoch + 1``; 0 at an epoch boundary), ``partial`` (the record of that
  partial epoch, see :func:`gpuconv.training.checkpointing.partial_state`,
  or null), ``status``, ``lr``, the optimizer's and scheduler's
  ``state_dict()`` (with every parameter group's settings and lr, see
  :mod:`gpuconv.optim.base`; optimizer states written before parameter groups
  existed still load), ``frozen`` (the names of the parameters that do not
  train, ``requires_grad`` False), the RNG states
  (``gpuconv.backend.get_state()``), the history records and ``extra``
  (loader state, the callbacks' ``state_dict()``s, grad scaler, interruption
  info); arrays inside those trees are stored as ``"state/<i>"`` entries.

``status``: ``"running"`` (written during training: after an epoch, or a
periodic mid-epoch one), ``"interrupted"`` (a stop request: Ctrl-C, SIGTERM,
a callback), ``"finished"`` (``fit`` trained its last epoch) or ``"stopped"``
(``fit`` ended early because ``model.stop_training`` was set, e.g. by early
stopping; resuming trains nothing more).

Versions: 2 (this one) added ``step``, ``partial`` and ``status``. Version 1
files still load: they read as ``step`` 0, no partial epoch, status
``"running"`` (``"interrupted"`` when their ``extra`` says so). A version-1
file written on Ctrl-C inside an epoch holds mid-epoch weights but no
position; resuming it replays that epoch from its first batch, as before.

Note: ``gpuconv.backend.get_state()`` snapshots the host and CPU generators;
CuPy generator states are not part of it. Instead ``fit`` restarts the device
generators at every epoch from ``(seed, epoch)``
(:func:`gpuconv.backend.random.reseed_for_epoch`), so GPU runs that draw
random numbers on the device (dropout) also resume bit-identically from an
end-of-epoch checkpoint.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..backend import get_state
from ..layers.base import Layer
from .npzfile import atomic_savez, json_array, pack_tree, read_json, read_npz, unpack_tree
from .spec import (ARCHITECTURE_KEY, CHECKPOINT_KEY, check_model_arrays, model_arrays,
                            model_spec)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "READABLE_VERSIONS", "STATUSES",
           "Checkpoint", "save_checkpoint",
           "load_checkpoint", "restore_model"]

CHECKPOINT_FORMAT = "gpuconv-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
STATUSES = ("running", "interrupted", "finished", "stopped")
META_KEY = CHECKPOINT_KEY
STATE_PREFIX = "state/"


@dataclass
class Checkpoint:
    """A loaded checkpoint (all arrays on the host). ``arrays`` holds the raw
    entries (model arrays included); ``epoch`` is the number of completed epochs,
    ``step`` the steps done in the next one, ``partial`` its record (or None),
    ``status`` one of :data:`STATUSES`, ``version`` the file's format version."""

    path: str
    epoch: int
    lr: float | None
    optimizer_state: Any
    scheduler_state: Any
    rng_state: dict
    history: list[dict]
    extra: dict
    frozen: list[str]
    arrays: dict[str, numpy.ndarray] = field(repr=False)
    step: int = 0
    partial: dict | None = None
    status: str = "running"
    version: int = CHECKPOINT_VERSION

    @property
    def mid_epoch(self) -> bool:
        """True when the checkpoint was written inside epoch ``epoch + 1``."""
        return self.partial is not None

    def describe(self) -> str:
        """Where training stands, e.g. ``"epoch 3, step 17 (2 epochs completed)"``."""
        done = f"{self.epoch} epoch{'s' if self.epoch != 1 else ''} completed"
        if self.partial is None:
            return done
        where = "validation" if self.partial.get("phase") == "validate" else f"step {self.step}"
        return f"epoch {self.epoch + 1}, {where} ({done})"

    @property
    def architecture(self) -> dict:
        return read_json(self.arrays[ARCHITECTURE_KEY], f"{self.path}: architecture")


def save_checkpoint(path: "str | os.PathLike", model: Layer, optimizer: Any = None,
                    scheduler: Any = None, epoch: int = 0, history: Any = None,
                    extra: dict | None = None, *, partial: dict | None = None,
                    status: str = "running") -> None:
    """Write a training checkpoint to ``path`` atomically (``path`` used as given).

    ``epoch``: number of completed epochs (training resumes at ``epoch + 1``).
    ``partial``: the record of epoch ``epoch + 1`` when written inside it
    (:func:`gpuconv.training.checkpointing.partial_state`; its ``step`` becomes
    the checkpoint's ``step``), else None. ``status``: see the module doc.
    ``optimizer``/``scheduler``: objects with ``state_dict()`` (or None).
    ``history``: a :class:`~gpuconv.training.callbacks.History`, a list of
    per-epoch dicts, or None. ``extra``: a dict of JSON-able values and
    arrays (e.g. ``{"loader": loader.state_dict()}``). RNG states are taken
    from ``gpuconv.backend.get_state()`` at the time of the call.
    """
    if status not in STATUSES:
        raise ValueError(f"save_checkpoint: status must be one of {STATUSES}, got {status!r}")
    if partial is not None and int(partial.get("epoch", epoch + 1)) != int(epoch) + 1:
        raise ValueError(f"save_checkpoint: partial epoch {partial.get('epoch')} does not "
                         f"follow the {epoch} completed")
    arrays = model_arrays(model)
    arrays[ARCHITECTURE_KEY] = json_array(model_spec(model))
    records = getattr(history, "records", history) or []
    state_arrays: dict[str, numpy.ndarray] = {}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "step": 0 if partial is None else int(partial["step"]),
        "partial": pack_tree(None if partial is None else dict(partial), STATE_PREFIX,
                             state_arrays, "partial"),
        "status": status,
        "frozen": model.frozen_names(),
        "lr": None if optimizer is None or getattr(optimizer, "lr", None) is None
        else float(optimizer.lr),
        "optimizer": pack_tree(None if optimizer is None else optimizer.state_dict(),
                               STATE_PREFIX, state_arrays, "optimizer"),
        "scheduler": pack_tree(None if scheduler is None else scheduler.state_dict(),
                               STATE_PREFIX, state_arrays, "scheduler"),
        "rng": pack_tree(get_state(), STATE_PREFIX, state_arrays, "rng"),
        "history": pack_tree(list(records), STATE_PREFIX, state_arrays, "history"),
        "extra": pack_tree(dict(extra or {}), STATE_PREFIX, state_arrays, "extra"),
    }
    arrays.update(state_arrays)
    arrays[META_KEY] = json_array(meta)
    atomic_savez(path, arrays)


def load_checkpoint(path: "str | os.PathLike") -> Checkpoint:
    """Read a checkpoint safely (no pickles). All arrays stay host numpy arrays
    (``optimizer.load_state_dict`` and ``model.load_state_dict`` move them to
    the parameters' devices). Raises FileNotFoundError or ValueError naming
    the file and entry."""
    path = os.fspath(path)
    arrays = read_npz(path, "checkpoint")
    if META_KEY not in arrays:
        raise ValueError(f"{path}: no {META_KEY!r} entry; not a gpuconv training checkpoint")
    meta = read_json(arrays[META_KEY], f"{path}: entry {META_KEY!r}")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a gpuconv training checkpoint (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: unsupported checkpoint version {version!r} (this gpuconv "
                         f"reads versions {', '.join(map(str, READABLE_VERSIONS))}; the file "
                         "may come from a newer gpuconv)")
    allowed = {ARCHITECTURE_KEY, META_KEY}
    extra_keys = sorted(k for k in arrays if k not in allowed
                        and not k.startswith(("param/", "buffer/", STATE_PREFIX)))
    if extra_keys:
        raise ValueError(f"{path}: unexpected entries {extra_keys} in a checkpoint")
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] < 0:
        raise ValueError(f"{path}: invalid epoch {meta.get('epoch')!r}")

    frozen = meta.get("frozen") or []
    if not isinstance(frozen, list) or not all(isinstance(n, str) for n in frozen):
        raise ValueError(f"{path}: invalid 'frozen' entry {frozen!r:.200}")

    def unpack(key: str) -> Any:
        return unpack_tree(meta.get(key), arrays, None, f"{path}: {key}")

    extra = unpack("extra") or {}
    if version == 1:  # no position: an end-of-epoch state (see the module doc)
        step, partial = 0, None
        status = "interrupted" if extra.get("interrupted") else "running"
    else:
        step, partial, status = meta.get("step"), unpack("partial"), meta.get("status")
        if status not in STATUSES:
            raise ValueError(f"{path}: invalid status {status!r}")
        if not isinstance(step, int) or step < 0 or (partial is None and step != 0):
            raise ValueError(f"{path}: invalid step {step!r}")
        if partial is not None and (not isinstance(partial, dict)
                                    or partial.get("epoch") != meta["epoch"] + 1
                                    or partial.get("step") != step):
            raise ValueError(f"{path}: the partial epoch {partial!r} does not match epoch "
                             f"{meta['epoch']} + step {step}")
    return Checkpoint(path=path, epoch=meta["epoch"], lr=meta.get("lr"),
                      optimizer_state=unpack("optimizer"), scheduler_state=unpack("scheduler"),
                      rng_state=unpack("rng"), history=unpack("history") or [],
                      extra=extra, frozen=list(frozen), arrays=arrays, step=step,
                      partial=partial, status=status, version=version)


def restore_model(checkpoint: Checkpoint, model: Layer) -> None:
    """Copy the checkpoint's parameters and buffers into ``model`` (any device).

    The architecture must match: parameter/buffer names, shapes and dtypes are
    checked (ValueError naming the checkpoint file and entry otherwise).
    """
    saved = _without_frozen(checkpoint.architecture.get("layers"))
    current = _without_frozen(json.loads(json.dumps(model_spec(model)["layers"])))
    if saved != current:
        raise ValueError(f"{checkpoint.path}: the checkpoint's architecture differs from "
                         "the model's; build the same model to resume")
    state = check_model_arrays(model, checkpoint.arrays, checkpoint.path)
    model.load_state_dict(state)
    # which parameters train is training state (FreezeAfter changes it mid-run)
    model.unfreeze()
    if checkpoint.frozen:
        model.freeze(*checkpoint.frozen)


def _without_frozen(spec: Any) -> Any:
    """The architecture with the ``frozen`` lists left out (compared separately)."""
    if isinstance(spec, list):
        return [_without_frozen(s) for s in spec]
    if isinstance(spec, dict):
        return {k: _without_frozen(v) for k, v in spec.items() if k != "frozen"}
    return spec
