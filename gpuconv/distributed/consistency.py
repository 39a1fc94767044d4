"""Refuse to train when the ranks were started differently.

Ranks launched with different settings or code (a stale install on one
host, a typo in one of several command lines) would otherwise train
silently different replicas or deadlock in a collective of another size.
:func:`check_same` compares a hash of a settings dict across ranks (one tiny
allgather) and, only when the hashes differ, gathers the dicts themselves to
name what differs. :func:`source_hash` fingerprints gpuconv's own code.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .comm import Communicator

__all__ = ["SettingsMismatch", "check_same", "settings_hash", "source_hash", "code_identity"]

_PACKAGE = Path(__file__).resolve().parent.parent
_source_hash: str | None = None


class SettingsMismatch(RuntimeError):
    """The ranks were started with different settings or code versions."""


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k in sorted(value, key=str):
            out.update(_flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def settings_hash(settings: dict) -> str:
    """SHA-256 of ``settings`` as canonical JSON (keys sorted; non-JSON values via str)."""
    return hashlib.sha256(json.dumps(_flatten(settings), sort_keys=True).encode()).hexdigest()


def source_hash() -> str:
    """SHA-256 over the paths and bytes of every ``gpuconv/**/*.py`` (cached; ~100 files)."""
    global _source_hash
    if _source_hash is None:
        h = hashlib.sha256()
        for path in sorted(_PACKAGE.rglob("*.py")):
            h.update(path.relative_to(_PACKAGE).as_posix().encode())
            h.update(path.read_bytes())
        _source_hash = h.hexdigest()[:16]
    return _source_hash


def code_identity() -> dict[str, str]:
    """``{"gpuconv_version", "gpuconv_source"}`` of this process."""
    version = getattr(sys.modules.get("gpuconv"), "__version__", "unknown")
    return {"gpuconv_version": str(version), "gpuconv_source": source_hash()}


def check_same(comm: Communicator, settings: dict, what: str = "settings") -> None:
    """SettingsMismatch on every rank unless ``settings`` is the same on all of them.

    The message names each differing key with rank 0's value and the others'
    (the same message on every rank, so it can be printed by any one of them).
    """
    if comm.size == 1:
        return
    hashes = comm.allgather_object(settings_hash(settings))
    if len(set(hashes)) == 1:
        return
    flats = comm.allgather_object(_flatten(settings))
    keys = sorted(set().union(*flats))
    lines = []
    for key in keys:
        values = [f.get(key, "<missing>") for f in flats]
        if len(set(values)) > 1:
            others = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values)
                               if r and v != values[0])
            lines.append(f"{key} (rank 0: {values[0]}; {others})")
    raise SettingsMismatch(f"the {comm.size} ranks were started with different {what}: "
                           + "; ".join(lines)
                           + ". Start every rank with the same command and gpuconv install.")
