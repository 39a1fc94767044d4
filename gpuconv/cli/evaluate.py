"""``gpuconv evaluate``: the CIFAR-10 test-set report of a saved model.

``gpuconv evaluate PATH`` where PATH is a model file (``model.npz``), a
training checkpoint (``checkpoint.npz``) or a run folder (its ``model.npz``).
Preprocessing (normalisation, class names) comes from the run's
``config.json`` when it sits next to the file, else the CIFAR-10 defaults.
Prints the accuracy, the per-class precision/recall/F1 table and the
confusion matrix (``--json`` prints the report as JSON instead).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..backend import Device
from ..data.datasets import ArrayDataset
from ..data.loader import DataLoader
from ..models import load_model
from ..training.console import terminal_width
from . import argtypes
from . import run_dir as rd
from .common import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DEVICE_ENV, CLIError,
                     load_cifar10, resolve_device)
from .errors import check_writable_folder, without_path, writing_to
from .report import build_report, collect_logits, format_report, plot_confusion

__all__ = ["add_parser", "run", "resolve_model_path", "load_cli_model", "preprocessing"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate", help="report a saved model's CIFAR-10 test-set accuracy",
        description="Evaluate a saved model (model.npz, checkpoint.npz or a run folder) on the "
                    "CIFAR-10 test set: accuracy, per-class precision/recall/F1, confusion "
                    "matrix.")
    p.add_argument("model", metavar="CHECKPOINT_OR_MODEL",
                   help="model.npz, checkpoint.npz or a run folder")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR-10 root; default: the run's data folder if it still exists, "
                        "else $GPUCONV_DATA, else ~/.cache/gpuconv")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (MD5-checked, about 170 MB) into the data root if "
                        "it is missing")
    p.add_argument("--device", default=None,
                   help=f"auto, cpu, cuda or cuda:N (default ${DEVICE_ENV} when set, else auto)")
    p.add_argument("--batch-size", type=argtypes.integer(1), default=256,
                   help="evaluation batch size")
    p.add_argument("--limit", type=argtypes.integer(1), default=None,
                   help="use only the first N test images")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the model's outputs over the image, "
                        "its mirror and one-pixel shifts (6 views, as airbench)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", default=None,
                   help="also write report.json, report.txt and confusion.png into this folder")
    p.set_defaults(func=run)
    return p


def resolve_model_path(path: "str | os.PathLike") -> Path:
    """The model file for PATH: the file itself, or a run folder's model.npz (else its
    checkpoint.npz)."""
    path = Path(path)
    if path.is_dir():
        for name in (rd.MODEL, rd.CHECKPOINT):
            if (path / name).is_file():
                return path / name
        raise CLIError(f"{path} holds neither {rd.MODEL} nor {rd.CHECKPOINT}")
    if not path.exists():
        raise CLIError(f"{path}: no such file or folder")
    if not path.is_file():
        raise CLIError(f"{path}: not a regular file (expected model.npz, checkpoint.npz or "
                       "a run folder)")
    return path


def load_cli_model(path: "str | os.PathLike", device: Device) -> Any:
    """``load_model`` with file problems turned into CLIErrors."""
    try:
        return load_model(path, device=device)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CLIError(f"{path}: cannot load a model: {without_path(str(exc), path)}") from None


def preprocessing(config: dict | None) -> tuple[list[str], tuple, tuple, tuple[int, ...]]:
    """(class names, mean, std, input shape) from a run config, else CIFAR-10 defaults."""
    data = (config or {}).get("data") or {}
    classes = [str(c) for c in data.get("classes") or CIFAR10_CLASSES]
    mean = tuple(float(v) for v in data.get("mean") or CIFAR10_MEAN)
    std = tuple(float(v) for v in data.get("std") or CIFAR10_STD)
    shape = tuple(int(v) for v in data.get("input_shape") or (3, 32, 32))
    return classes, mean, std, shape


def run(args: argparse.Namespace) -> int:
    """Run ``gpuconv evaluate``; returns the exit code."""
    path = resolve_model_path(args.model)
    if args.out:
        check_writable_folder(args.out, "--out")  # before the work, not after it
    device = resolve_device(args.device)
    model = load_cli_model(path, device)
    config = rd.find_config(path)
    classes, mean, std, _ = preprocessing(config)
    data_dir = args.data_dir
    if data_dir is None and config is not None:
        saved = (config.get("data") or {}).get("root")
        if saved and Path(saved).is_dir():
            data_dir = saved
    test = load_cifar10(data_dir, train=False, download=args.download)
    if len(test.classes) != len(classes):
        raise CLIError(f"the model's run has {len(classes)} classes, the test set "
                       f"{len(test.classes)}")
    if args.limit is not None:
        test = ArrayDataset(test.images[:args.limit], test.labels[:args.limit], test.classes)
    loader = DataLoader(test, args.batch_size, shuffle=False, device=device,
                        normalize=(mean, std), dtype=model.dtype or "float32")
    try:
        logits, labels = collect_logits(model, loader, 2 if args.tta else 0)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{path}: the model does not accept CIFAR-10 images: {exc}") from None
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise CLIError(f"{path}: the model outputs shape {logits.shape[1:]}, expected "
                       f"({len(classes)},) class scores")
    report = build_report(logits, labels, classes)
    report["model"] = str(path)
    report["tta"] = 2 if args.tta else 0
    text = format_report(report, f"Test set ({path})")
    if args.out:
        out = Path(args.out)
        with writing_to(out, "--out"):
            out.mkdir(parents=True, exist_ok=True)
            rd.write_json(out / rd.REPORT_JSON, {k: v for k, v in report.items() if k != "text"})
            rd.write_text(out / rd.REPORT_TXT, text)
            plot_confusion(report["confusion_matrix"], classes, out / rd.CONFUSION_PNG,
                           f"Confusion matrix (test accuracy {report['accuracy']:.3f})")
    if args.json:
        print(json.dumps(report, indent=2))
    else:  # report.txt keeps 80 columns; the terminal gets its own width
        print(format_report(report, f"Test set ({path})", width=terminal_width(sys.stdout) - 1),
              end="")
    return 0
