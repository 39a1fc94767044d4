"""The run folder of ``gpuconv train``: file names, config.json and machine info.

A run folder holds::

    config.json      all settings, gpuconv version, device, machine info
    history.json     per-epoch logs (loss, accuracy, val_loss, val_accuracy, lr, time,
    history.csv      images_per_s), rewritten after every epoch
    model.npz        the best model so far (gpuconv.load_model)
    checkpoint.npz   the training checkpoint (every epoch, every --checkpoint-every,
                     on Ctrl-C/SIGTERM; --resume continues from it exactly)
    report.json      final test-set report (accuracy, loss, confusion matrix, per class)
    report.txt       the same as text
    curves.png       learning curves (when matplotlib is installed)
    confusion.png    confusion matrix plot (when matplotlib is installed)
    summary.txt      the model's layer table

``gpuconv train --overwrite`` deletes exactly these files (and temporary files
an interrupted atomic write left behind) before starting a new run; anything
else in the folder stays.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import numpy

from ..backend import Device
from ..io.atomic import atomic_write_text

__all__ = ["CONFIG", "HISTORY_JSON", "HISTORY_CSV", "MODEL", "CHECKPOINT", "REPORT_JSON",
           "REPORT_TXT", "CURVES_PNG", "CONFUSION_PNG", "SUMMARY_TXT", "RUN_FILES",
           "default_run_dir", "machine_info", "write_json", "read_config", "find_config",
           "remove_run_files"]

CONFIG = "config.json"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
MODEL = "model.npz"
CHECKPOINT = "checkpoint.npz"
REPORT_JSON = "report.json"
REPORT_TXT = "report.txt"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
SUMMARY_TXT = "summary.txt"
RUN_FILES = (CONFIG, HISTORY_JSON, HISTORY_CSV, MODEL, CHECKPOINT, REPORT_JSON, REPORT_TXT,
             CURVES_PNG, CONFUSION_PNG, SUMMARY_TXT)
"""Every file ``gpuconv train`` writes into a run folder."""


def default_run_dir(model: str, base: "str | os.PathLike" = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<model>`` (a numeric suffix is added if it exists)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{stamp}-{model}"
    k = 1
    while path.exists():
        k += 1
        path = Path(base) / f"{stamp}-{model}-{k}"
    return path


def machine_info(device: Device) -> dict[str, Any]:
    """Host, Python and library versions, CPU count and (on CUDA) the GPU's name."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "device": str(device),
    }
    if device.kind == "cuda":
        try:
            xp = device.xp
            info["cupy"] = xp.__version__
            props = xp.cuda.runtime.getDeviceProperties(device.index)
            name = props.get("name", b"")
            info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            info["gpu_memory_bytes"] = int(props.get("totalGlobalMem", 0))
            info["cuda_runtime"] = int(xp.cuda.runtime.runtimeGetVersion())
        except Exception as exc:  # informative only; never fail a run for it
            info["gpu_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _default(obj: Any) -> Any:
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, numpy.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: "str | os.PathLike", data: Any) -> None:
    """Write ``data`` as indented JSON atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def write_text(path: "str | os.PathLike", text: str) -> None:
    """Write ``text`` atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, text)


def read_config(run_dir: "str | os.PathLike") -> dict:
    """The ``config.json`` of a run folder (FileNotFoundError/ValueError if absent/bad)."""
    path = Path(run_dir) / CONFIG
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def remove_run_files(run_dir: "str | os.PathLike") -> list[str]:
    """Delete the :data:`RUN_FILES` of a run folder and the ``.<name>.*.tmp`` files an
    interrupted atomic write of one of them left; returns the names deleted."""
    folder = Path(run_dir)
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        name = path.name
        leftover = name.startswith(".") and name.endswith(".tmp") and any(
            name.startswith(f".{known}.") for known in RUN_FILES)
        if path.is_file() and (name in RUN_FILES or leftover):
            path.unlink()
            removed.append(name)
    return removed


def find_config(model_path: "str | os.PathLike") -> dict | None:
    """The run config next to a model/checkpoint file (or inside a run folder), if any."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    try:
        return read_config(folder)
    except (OSError, ValueError):
        return None
