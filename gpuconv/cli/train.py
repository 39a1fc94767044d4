"""``gpuconv train``: train a preset CNN on CIFAR-10 into a run folder.

Defaults that just work: ``gpuconv train`` trains the ``seed-cnn`` preset on
CIFAR-10 (45,000 training / 5,000 validation images, the 10,000 test images
for the final report) with Adam (lr 1e-3, weight decay 1e-4), batch 128,
random crop + flip augmentation, ReduceLROnPlateau on the validation loss
and early stopping on the validation accuracy (patience 10, best weights
restored), for up to 30 epochs. ``--amp`` trains in float16 mixed precision
(float32 master weights, dynamic loss scaling; CUDA only, see
:data:`AMP_CPU_MESSAGE`). See :mod:`gpuconv.cli.run_dir` for the files
of the run folder. ``--resume RUN_DIR`` continues an interrupted run exactly
where it stopped (the next batch; on the CPU bit-identical to an
uninterrupted run): Ctrl-C and SIGTERM stop at the next step boundary and
save a checkpoint there, and one is written every ``--checkpoint-every``
(10 minutes by default) so a SIGKILL or a power cut loses at most that much.
Resuming a finished run says so and does nothing; a run that failed (NaN
loss) or saved no checkpoint can be resumed from its last good checkpoint or
started over with ``--overwrite``. Every line printed fits the terminal
(80 columns when not writing to one).

``--nproc N`` trains data-parallel on N processes (relaunched under mpiexec;
see :mod:`gpuconv.cli.parallel`): the settings are checked in this process
first, then every rank runs the command, rank 0 writes the run folder and
prints. Interrupts, periodic checkpoints and ``--resume`` (mid-epoch
included, with any number of ranks) work as in one process.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import math
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import __version__
from ..amp import AMP_CPU_REASON
from ..backend import Device, seed as seed_all
from ..data.datasets import ArrayDataset
from ..data.loader import DataLoader
from .. import distributed as dist
from .. import losses
from ..io.checkpoint import Checkpoint, load_checkpoint
from ..training.callbacks import Callback, EarlyStopping, HistoryLogger, ModelCheckpoint
from ..training.checkpointing import DEFAULT_CHECKPOINT_EVERY, CheckpointEvery
from ..training.console import terminal_width, wrap_text
from ..training.interrupts import TrainingInterrupted, forward_to_sigint
from ..optim import SGD, Adam, AdamW, RMSprop
from ..optim import lr_scheduler as sched
from ..io.checkpoint import restore_model
from ..models import load_model
from ..training.summary import count_parameters
from . import argtypes
from . import parallel
from . import run_dir as rd
from .common import (AUGMENT_CHOICES, CIFAR10_MEAN, CIFAR10_STD, DEVICE_ENV, CLIError,
                     build_augment, device_spec, eprint, load_cifar10, resolve_device,
                     split_indices)
from .errors import (check_writable_folder, no_float_warnings, one_line, without_path,
                     writing_to)
from ..models.presets import (DEFAULT_PRESET, INPUT_SHAPE, PRESET_HELP, PRESET_HELP_NOTE, PRESETS,
                              WIDTH_PRESETS, build_preset)
from .recipe import AIRBENCH_SETTINGS, RECIPES, airbench_run, recipe_settings
from .report import build_report, collect_logits, format_report, write_plots

__all__ = ["add_parser", "run", "DEFAULTS", "RESUME_OVERRIDABLE"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("plateau", "cosine", "onecycle", "step", "none")
MONITORS = ("val_accuracy", "val_loss")

#: Default value of every training setting (what ``config.json["settings"]`` holds).
DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_PRESET,
    "data_dir": None,
    "download": False,
    "epochs": 30,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "momentum": None,          # sgd: 0.9, rmsprop: 0.0
    "label_smoothing": 0.0,
    "schedule": "plateau",
    "step_size": 10,
    "gamma": 0.1,
    "patience": 10,
    "monitor": "val_accuracy",
    "augment": "basic",
    "val_split": 5000,
    "limit": None,
    "test_limit": None,
    "seed": 0,
    "device": "auto",
    "dtype": "float32",
    "amp": False,
    "eval_batch_size": 256,
    "checkpoint_every": DEFAULT_CHECKPOINT_EVERY,
    "recipe": "none",
    "width": 1.0,
    "tta": False,
}

#: Why ``--amp`` is refused on the CPU (the library's reason, :data:`AMP_CPU_REASON`,
#: with the flags to change instead of Python arguments).
AMP_CPU_MESSAGE = f"--amp needs a CUDA device: {AMP_CPU_REASON}. Use --device cuda, or drop --amp."

#: Settings a ``--resume`` may change (everything else comes from the run's config.json).
RESUME_OVERRIDABLE = ("epochs", "data_dir", "download", "device", "eval_batch_size",
                      "checkpoint_every")


#: The validator of every numeric setting: the flag's ``type=`` and the check of the
#: settings a ``--resume`` reads back from config.json.
VALIDATORS: dict[str, Callable[[str], Any]] = {
    "epochs": argtypes.whole_or_real(0),  # a fraction cuts the last epoch short
    "width": argtypes.real(0, low_open=True),
    "batch_size": argtypes.integer(1),
    "lr": argtypes.real(0, low_open=True),
    "weight_decay": argtypes.real(0),
    "momentum": argtypes.real(0, 1, high_open=True),
    "label_smoothing": argtypes.real(0, 1),
    "step_size": argtypes.integer(1),
    "gamma": argtypes.real(0, low_open=True),
    "patience": argtypes.integer(0),
    "val_split": argtypes.count_or_fraction,
    "limit": argtypes.integer(1),
    "test_limit": argtypes.integer(1),
    "seed": argtypes.integer(0, argtypes.SEED_MAX),
    "eval_batch_size": argtypes.integer(1),
}

#: The allowed values of every choice setting (flag ``choices=`` and the resume check).
CHOICES: dict[str, tuple[str, ...]] = {
    "model": tuple(sorted(PRESETS)), "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
    "monitor": MONITORS, "augment": AUGMENT_CHOICES, "dtype": ("float32", "float64"),
    "recipe": RECIPES,
}


def _checkpoint_every(text: str) -> str:
    try:
        return str(CheckpointEvery.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("checkpoint_every: ", "")) from None


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that the epilog keeps its lines (one per preset):
    each is wrapped on its own, continuations indented under its text."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        out = []
        for line in text.splitlines():
            body = line.lstrip()
            lead = len(line) - len(body)
            gap = body.find("  ")  # "name  text": continuations start under the text
            hang = lead + (len(body) - len(body[gap:].lstrip()) if gap > 0 else 2)
            out.append(wrap_text(indent + line, width, " " * (hang - lead)))
        return "\n".join(out)


def presets_help() -> str:
    """The ``--help`` epilog: one line per preset (from ``PRESET_HELP``)."""
    names = sorted(PRESETS)
    column = max(len(n) for n in names) + 2
    lines = ["model presets (--model):"]
    for name in names:
        text = PRESET_HELP.get(name, "no description")
        lines.append(f"  {name:<{column}}{text}")
    lines.append(f"  ({PRESET_HELP_NOTE})")
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a CNN on CIFAR-10 into a run folder",
        description="Train a preset CNN on CIFAR-10. Writes config.json, history.json/.csv, "
                    "model.npz (best), checkpoint.npz (resume), report.json/.txt and plots "
                    "into the run folder.",
        epilog=presets_help(), formatter_class=_HelpFormatter)
    d = DEFAULTS
    g = p.add_argument_group("model and data")
    # metavars instead of {choice,...} lists keep the usage lines inside 60 columns
    g.add_argument("--model", choices=CHOICES["model"], default=None, metavar="PRESET",
                   help=f"model preset: {', '.join(sorted(PRESETS))} (default {d['model']}; "
                        "see the list below)")
    g.add_argument("--data-dir", default=None,
                   help="CIFAR-10 root (holding cifar-10-batches-py/ or -bin/); default "
                        "$GPUCONV_DATA, else ~/.cache/gpuconv")
    g.add_argument("--download", action="store_true", default=None,
                   help="download CIFAR-10 into the data root if it is missing")
    g.add_argument("--augment", choices=CHOICES["augment"], default=None,
                   help="none; basic = random crop (pad 4) + horizontal flip; full = basic + "
                        f"colour jitter, rotation, cutout (default {d['augment']})")
    g.add_argument("--val-split", type=VALIDATORS["val_split"], default=None,
                   help="training images held out for validation: a count or a fraction "
                        f"(default {d['val_split']}; 0 = no validation)")
    g.add_argument("--limit", type=VALIDATORS["limit"], default=None,
                   help="use only N training images (after the validation split)")
    g.add_argument("--test-limit", type=VALIDATORS["test_limit"], default=None,
                   help="report on only the first N test images")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=VALIDATORS["epochs"], default=None,
                   help=f"maximum number of epochs (default {d['epochs']}); a fraction cuts "
                        "the last one short: 9.9 trains 9.9 epochs' worth of batches")
    g.add_argument("--recipe", choices=CHOICES["recipe"], default=None,
                   help="a complete training recipe: airbench = airbench94 (model, optimizer, "
                        "schedule, augmentation, 9.9 epochs, TTA; see README) (default none)")
    g.add_argument("--width", type=VALIDATORS["width"], default=None,
                   help="channel multiplier of presets that have one (airbench; default 1)")
    g.add_argument("--tta", action="store_true", default=None,
                   help="test report with test-time augmentation (mirror + 1-pixel shifts, "
                        "6 views; on with --recipe airbench)")
    g.add_argument("--batch-size", type=VALIDATORS["batch_size"], default=None,
                   help=f"training batch size (default {d['batch_size']})")
    g.add_argument("--optimizer", choices=CHOICES["optimizer"], default=None, metavar="NAME",
                   help=f"optimizer: {', '.join(OPTIMIZERS)} (default {d['optimizer']})")
    g.add_argument("--lr", type=VALIDATORS["lr"], default=None,
                   help=f"learning rate (peak lr for onecycle; default {d['lr']})")
    g.add_argument("--weight-decay", type=VALIDATORS["weight_decay"], default=None,
                   help=f"weight decay (decoupled for adamw; default {d['weight_decay']})")
    g.add_argument("--momentum", type=VALIDATORS["momentum"], default=None,
                   help="momentum for sgd (default 0.9) and rmsprop (default 0)")
    g.add_argument("--label-smoothing", type=VALIDATORS["label_smoothing"], default=None,
                   help=f"label smoothing of the cross-entropy (default {d['label_smoothing']})")
    g.add_argument("--schedule", choices=CHOICES["schedule"], default=None, metavar="NAME",
                   help="lr schedule: plateau = ReduceLROnPlateau(factor 0.5, patience 3, "
                        "min_lr 1e-6) on val_loss; cosine = cosine annealing over the epochs; "
                        "onecycle = one-cycle per batch; step = StepLR(--step-size, --gamma); "
                        f"none (default {d['schedule']})")
    g.add_argument("--step-size", type=VALIDATORS["step_size"], default=None,
                   help=f"epochs per lr step for --schedule step (default {d['step_size']})")
    g.add_argument("--gamma", type=VALIDATORS["gamma"], default=None,
                   help=f"lr factor per step for --schedule step (default {d['gamma']})")
    g.add_argument("--patience", type=VALIDATORS["patience"], default=None,
                   help="early stopping: epochs without improvement of --monitor before "
                        f"stopping (best weights restored); 0 disables (default {d['patience']})")
    g.add_argument("--monitor", choices=CHOICES["monitor"], default=None, metavar="METRIC",
                   help=f"metric for early stopping and the best model: "
                        f"{' or '.join(MONITORS)} (default {d['monitor']})")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None,
                   help=f"auto, cpu, cuda or cuda:N (default ${DEVICE_ENV} when set, else "
                        "auto: CUDA when available)")
    g.add_argument("--dtype", choices=CHOICES["dtype"], default=None,
                   help=f"parameter and input dtype (default {d['dtype']})")
    g.add_argument("--amp", action="store_true", default=None,
                   help="float16 mixed precision with float32 master weights and dynamic "
                        "loss scaling (CUDA devices only)")
    g.add_argument("--seed", type=VALIDATORS["seed"], default=None,
                   help=f"seed of weights, shuffling, augmentation and the validation split "
                        f"(default {d['seed']})")
    g.add_argument("--eval-batch-size", type=VALIDATORS["eval_batch_size"], default=None,
                   help=f"batch size for validation and test (default {d['eval_batch_size']})")
    g.add_argument("--out", default=None,
                   help="run folder (default runs/<timestamp>-<model>)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its checkpoint (with the next "
                        "batch), with its settings "
                        f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)}"
                        " may be changed)")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that holds one, deleting that "
                        "run's files first (nothing else in the folder)")
    g.add_argument("--checkpoint-every", type=_checkpoint_every, default=None,
                   metavar="PERIOD",
                   help="also write the checkpoint every PERIOD of training inside an epoch: "
                        "e.g. 10min, 90s, 2h, 500steps, or off "
                        f"(default {d['checkpoint_every']}; always after each epoch and on "
                        "Ctrl-C/SIGTERM)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress output; only the final summary")
    parallel.add_arguments(g)  # --nproc, --backend (see gpuconv.cli.parallel)
    p.set_defaults(func=run)
    return p


# ---- settings ---------------------------------------------------------------------------
def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (not None)."""
    return {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}


def _check_saved_settings(settings: dict, where: Path) -> None:
    """Refuse a resumed run whose config.json holds a setting no flag could have set."""
    for name, parse in VALIDATORS.items():
        if settings.get(name) is not None:
            try:
                settings[name] = argtypes.check_value(name, settings[name], parse)
            except ValueError as exc:
                raise CLIError(f"--resume: {where}: {exc}") from None
    recipe = AIRBENCH_SETTINGS if settings.get("recipe") == "airbench" else {}
    for name, allowed in CHOICES.items():
        if name in recipe:  # the recipe's own pieces ("schedule": "airbench", ...)
            allowed = (*allowed, recipe[name])
        if settings.get(name) not in allowed:
            raise CLIError(f"--resume: {where}: setting {name!r} is {settings.get(name)!r}, "
                           f"expected one of {', '.join(allowed)}")


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], Path, dict | None]:
    """(settings, run folder, previous config or None) for a new or resumed run.

    The device: ``--device``, else ``$GPUCONV_DEVICE``, else (new run) auto or
    (resumed run) the run's own setting.
    """
    given = _given(args)
    if "device" not in given and device_spec(None)[0] != "auto":
        given["device"] = device_spec(None)[0]
    if args.resume is None:
        settings = recipe_settings(DEFAULTS, given)
        if settings["width"] != 1.0 and settings["model"] not in WIDTH_PRESETS:
            raise CLIError(f"--width {settings['width']:g}: the {settings['model']} preset has no "
                           f"width multiplier (only {', '.join(WIDTH_PRESETS)} has one); drop "
                           "--width")
        if settings["data_dir"] is not None:
            settings["data_dir"] = str(Path(settings["data_dir"]).expanduser().resolve())
        out = Path(args.out) if args.out else rd.default_run_dir(settings["model"])
        if (out / rd.CONFIG).exists() and not getattr(args, "overwrite", False):
            raise CLIError(_occupied(out))
        return settings, out, None
    if getattr(args, "overwrite", False):
        raise CLIError("--overwrite starts a new run; it cannot be combined with --resume")
    out = Path(args.resume)
    if args.out and Path(args.out).resolve() != out.resolve():
        raise CLIError("--resume continues the run in its own folder; do not combine it with "
                       "a different --out")
    try:
        previous = rd.read_config(out)
    except FileNotFoundError:
        raise CLIError(f"--resume {out}: no {rd.CONFIG} there; not a gpuconv run folder") from None
    except ValueError as exc:
        raise CLIError(f"--resume {out}: {exc}") from None
    if not (out / rd.CHECKPOINT).is_file():
        raise CLIError(_message(
            f"--resume {out}: no {rd.CHECKPOINT} there: the run stopped or failed before "
            "its first checkpoint. Start it over in the same folder (its files are deleted) "
            "with:", _Command(_restart_command(out, previous))))
    saved = previous.get("settings", {})
    if not isinstance(saved, dict):
        raise CLIError(f"--resume: {out / rd.CONFIG}: 'settings' is not a JSON object")
    settings = {**DEFAULTS, **saved}
    _check_saved_settings(settings, out / rd.CONFIG)
    changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE
                     and v != settings.get(k))
    if changed:
        raise CLIError(f"--resume uses the run's own settings; these differ from it and cannot "
                       f"be changed: {', '.join('--' + k.replace('_', '-') for k in changed)}")
    settings.update({k: v for k, v in given.items() if k in RESUME_OVERRIDABLE})
    return settings, out, previous


# ---- messages (each line fits the terminal; commands stay whole on lines of their own) ----
class _Command(str):
    """A command line in a message: printed on its own line, indented, never broken."""


def _message(*parts: str, width: int | None = None, first_indent: int = 0) -> str:
    """Prose parts wrapped to the terminal width (stderr's), :class:`_Command` parts on
    their own lines. ``first_indent``: columns a prefix will take on the first line
    (``gpuconv train: error: ``)."""
    width = width or terminal_width(sys.stderr)
    lines: list[str] = []
    for part in parts:
        if isinstance(part, _Command):
            lines.append(f"    {part}")
            continue
        pad = "\0" * first_indent if not lines else ""
        lines += wrap_text(pad + part, width - 1).replace("\0", "").splitlines()
    return "\n".join(lines)


def _error(*parts: str) -> str:
    """A CLIError message: the top-level printer puts ``gpuconv train: error: `` first."""
    return _message(*parts, first_indent=len("gpuconv train: error: "))


def _restart_command(out: Path, config: dict | None) -> str:
    """The run's own command line with ``--overwrite`` (and its ``--out``)."""
    command = list((config or {}).get("command") or ["gpuconv", "train"])
    command = [str(c) for c in command if c not in ("--overwrite",)]
    if "--out" not in command and not any(c.startswith("--out=") for c in command):
        command += ["--out", str(out)]
    return shlex.join(command + ["--overwrite"])


#: What :func:`load_checkpoint` raises for a missing, unreadable or damaged file.
_CHECKPOINT_ERRORS = (OSError, ValueError, KeyError, TypeError)


def _read_checkpoint(path: Path) -> Checkpoint | None:
    try:
        return load_checkpoint(path)
    except _CHECKPOINT_ERRORS:
        return None


def _finished(out: Path, settings: dict) -> str | None:
    """Why the run in ``out`` has nothing left to do (None when it has): its checkpoint
    ended the run (the last epoch, or early stopping) and its final report exists."""
    ckpt = _read_checkpoint(out / rd.CHECKPOINT)
    if ckpt is None or not (out / rd.REPORT_JSON).is_file():
        return None
    stopped = ckpt.status == "stopped"
    if not stopped and (ckpt.partial is not None or ckpt.status == "interrupted"
                        or ckpt.epoch < settings["epochs"]):
        return None
    try:
        accuracy = float(json.loads((out / rd.REPORT_JSON).read_text())["accuracy"])
        result = f"test accuracy {accuracy:.4f}"
    except (OSError, ValueError, KeyError, TypeError):
        result = "its report"
    how = "early stopping ended it" if stopped else "all epochs done"
    text = (f"The run in {out} is finished: {ckpt.epoch} epoch(s), {how}; {result} (see "
            f"{out / rd.REPORT_TXT}). Nothing to do.")
    width = terminal_width(sys.stdout)
    if stopped:
        return _message(text, width=width)
    return _message(text + " To train it for more epochs:",
                    _Command(f"gpuconv train --resume {out} --epochs {ckpt.epoch + 10}"),
                    width=width)


def _occupied(out: Path) -> str:
    """Why a new run cannot go into ``out``, and the ways on."""
    path = out / rd.CHECKPOINT
    try:
        ckpt = load_checkpoint(path) if path.exists() else None
    except _CHECKPOINT_ERRORS as exc:
        return _error(f"{out} already holds a run whose checkpoint {path} is damaged or "
                      f"unreadable ({without_path(one_line(str(exc)), path)}), so the run "
                      "cannot be resumed. Start it over there with --overwrite (its files "
                      "are deleted), or choose another --out.")
    if ckpt is None:
        return _error(f"{out} already holds a run, which saved no checkpoint (it stopped or "
                      "failed before its first one). Start it over there with --overwrite "
                      "(its files are deleted), or choose another --out.")
    state = "a finished run" if ckpt.status in ("finished", "stopped") else \
        f"a run ({ckpt.describe()})"
    return _error(f"{out} already holds {state}. Continue it with:",
                  _Command(f"gpuconv train --resume {out}"),
                  "or start it over there with --overwrite (its files are deleted), or "
                  "choose another --out.")


# ---- building blocks --------------------------------------------------------------------
def build_optimizer(settings: dict, model: Any) -> Any:
    """The optimizer named by ``settings['optimizer']`` over ``model``'s parameters."""
    name, lr, wd = settings["optimizer"], settings["lr"], settings["weight_decay"]
    momentum = settings["momentum"]
    if name == "adam":
        return Adam(model, lr=lr, weight_decay=wd)
    if name == "adamw":
        return AdamW(model, lr=lr, weight_decay=wd)
    if name == "sgd":
        return SGD(model, lr=lr, momentum=0.9 if momentum is None else momentum, weight_decay=wd)
    if name == "rmsprop":
        return RMSprop(model, lr=lr, weight_decay=wd,
                       momentum=0.0 if momentum is None else momentum)
    raise CLIError(f"unknown optimizer {name!r}")


def build_scheduler(settings: dict, optimizer: Any, steps_per_epoch: int) -> Any:
    """The lr scheduler named by ``settings['schedule']`` (None for 'none')."""
    name, epochs = settings["schedule"], settings["epochs"]
    if name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=3,
                                       min_lr=1e-6)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=settings["lr"], epochs=epochs,
                                steps_per_epoch=steps_per_epoch)
    if name == "step":
        return sched.StepLR(optimizer, step_size=settings["step_size"], gamma=settings["gamma"])
    if name == "none":
        return None
    raise CLIError(f"unknown schedule {name!r}")


class _Data:
    """The train/val/test datasets of a run."""

    def __init__(self, settings: dict) -> None:
        full = load_cifar10(settings["data_dir"], train=True, download=settings["download"])
        test = load_cifar10(settings["data_dir"], train=False, download=False)
        n = len(full)
        split = settings["val_split"]
        n_val = int(round(split * n)) if isinstance(split, float) and split < 1 else int(split)
        if n_val >= n:
            raise CLIError(f"--val-split {split}: the training set has only {n} images; "
                           "hold out fewer for validation")
        train_idx, val_idx = split_indices(n, n_val, settings["seed"], settings["limit"])
        self.classes = list(full.classes)
        self.train = ArrayDataset(full.images[train_idx], full.labels[train_idx], self.classes)
        self.val = ArrayDataset(full.images[val_idx], full.labels[val_idx], self.classes) \
            if n_val else None
        limit = settings["test_limit"]
        self.test = test if limit is None else ArrayDataset(test.images[:limit],
                                                            test.labels[:limit], self.classes)
        self.root = str(full.root)
        self.layout = full.layout

    def describe(self) -> dict:
        return {"root": self.root, "layout": self.layout, "train": len(self.train),
                "val": 0 if self.val is None else len(self.val), "test": len(self.test),
                "classes": self.classes, "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD),
                "input_shape": list(INPUT_SHAPE)}


def _loader(dataset: Any, settings: dict, device: Device, train: bool,
            comm: Any = None) -> DataLoader:
    batch = settings["batch_size"] if train else settings["eval_batch_size"]
    return DataLoader(dataset, batch, shuffle=train,
                      drop_last=train and len(dataset) > batch,
                      seed=settings["seed"], device=device,
                      normalize=(CIFAR10_MEAN, CIFAR10_STD),
                      augment=build_augment(settings["augment"]) if train else None,
                      dtype=settings["dtype"], comm=comm)


def dist_init(args: argparse.Namespace, settings: dict) -> Any:
    """The communicator of this rank, on its device (one GPU per rank on a host)."""
    try:
        return dist.init(getattr(args, "backend", "auto") or "auto", settings["device"])
    except (RuntimeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _check_global_batches(settings: dict, size: int, validation: bool) -> None:
    """With ``size`` ranks the batch sizes are global and split evenly: they must divide."""
    for name in ("batch_size", "eval_batch_size") if validation else ("batch_size",):
        if settings[name] % size:
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"{flag} {settings[name]} is the global batch of the {size} ranks "
                           f"and must divide by {size}; use a multiple of {size}")


def _verbosity(quiet: bool) -> int:
    if quiet:
        return 0
    return 1 if sys.stderr.isatty() else 2


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM (``kill PID``) like Ctrl-C while training, so a checkpoint is saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    # whatever SIGINT does: a stop at the next step boundary inside fit, else
    # KeyboardInterrupt (see gpuconv.training.interrupts)
    previous = signal.signal(signal.SIGTERM, forward_to_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the command ------------------------------------------------------------------------
def _device_source(args: argparse.Namespace, settings: dict) -> str:
    """Where the device setting came from, for messages."""
    if getattr(args, "device", None):
        return f"--device {args.device}"
    spec, source = device_spec(None)
    return source if spec == settings["device"] else f"--device {settings['device']}"


def _check_resume_checkpoint(out: Path) -> Any:
    """The run's checkpoint, read before anything is written (a damaged one is refused
    with the run folder untouched)."""
    path = out / rd.CHECKPOINT
    try:
        return load_checkpoint(path)
    except _CHECKPOINT_ERRORS as exc:
        raise CLIError(f"--resume {out}: {path} is damaged or not a gpuconv checkpoint "
                       f"({without_path(str(exc), path)}); the run cannot be continued, "
                       "start a new one") from None


def run(args: argparse.Namespace) -> int:
    """Run ``gpuconv train``; returns the exit code. ``--nproc N`` checks the settings
    here, then relaunches under mpiexec; under MPI every rank runs :func:`_rank`
    (see :mod:`gpuconv.cli.parallel`)."""
    run_start = time.perf_counter()
    with no_float_warnings():  # a diverging run: gpuconv's message, not NumPy's warnings
        return _run(args, run_start)


def _run(args: argparse.Namespace, run_start: float) -> int:
    if parallel.relaunch_wanted(args):
        settings, out, previous = resolve_settings(args)  # user errors before any launch
        check_writable_folder(out, "--out" if previous is None else "--resume")
        _check_global_batches(settings, args.nproc, validation=settings["val_split"] != 0)
        relaunched = parallel.relaunch_if_asked(args)
        if relaunched is not None:
            return relaunched
    return parallel.guarded(args, "train",
                            lambda args, world: _rank(args, world, run_start))


def _rank(args: argparse.Namespace, world: Any, run_start: float) -> int:
    """The command on one rank (the only one without MPI)."""
    settings, out, previous = resolve_settings(args)
    if world.size > 1:  # rank 0's run folder (default names hold a time), equal settings
        out = Path(world.broadcast_object(str(out)))
        parallel.check_settings(world, settings, out)
    flag = "--out" if previous is None else "--resume"
    check_writable_folder(out, flag)  # before any work: nothing is created yet
    if world.size > 1:
        world.barrier()  # every rank checked the folder before rank 0 writes into it
    with writing_to(out, flag):
        return _train(args, settings, out, previous, run_start, world)


def _train(args: argparse.Namespace, settings: dict, out: Path, previous: dict | None,
           run_start: float, world: Any = None) -> int:
    world = world if world is not None else dist.SingleProcess()
    main_rank = world.rank == 0
    quiet = bool(args.quiet) or not main_rank
    if previous is not None:
        finished = _finished(out, settings)
        if finished is not None:  # no second test evaluation, no new config entry
            if main_rank:
                print(finished)
            return 0
    comm = None
    if world.size > 1:
        with contextlib.redirect_stderr(io.StringIO()) if not main_rank else \
                contextlib.nullcontext():  # the device notice once, from rank 0
            comm = dist_init(args, settings)
    device = comm.device if comm is not None else \
        resolve_device(settings["device"], _device_source(args, settings))
    if comm is not None:
        _check_global_batches(settings, comm.size, validation=settings["val_split"] != 0)
    if settings["amp"]:
        if device.kind == "cpu":
            raise CLIError(AMP_CPU_MESSAGE)
        if settings["dtype"] != "float32":
            raise CLIError(f"--amp keeps float32 master weights; it cannot be combined with "
                           f"--dtype {settings['dtype']}")
    saved = None if previous is None else _check_resume_checkpoint(out)
    if world.rank != 0:
        world.barrier()   # rank 0 loads (and maybe downloads) the data first
    data = _Data(settings)
    if world.size > 1 and world.rank == 0:
        world.barrier()

    seed_all(int(settings["seed"]))
    recipe_callbacks: list[Callback] = []
    if settings["recipe"] == "airbench":
        parts = airbench_run(settings, data, device, comm)
        model, optimizer, scheduler, loss = parts.model, parts.optimizer, parts.scheduler, \
            parts.loss
        train_loader, val_loader, test_loader = parts.train_loader, parts.val_loader, \
            parts.test_loader
        recipe_callbacks, epochs, max_steps, tta = parts.callbacks, parts.epochs, \
            parts.max_steps, parts.tta
    else:
        model = build_preset(settings["model"], num_classes=len(data.classes),
                             dtype=settings["dtype"], width=settings["width"])
        model.to(device)
        train_loader = _loader(data.train, settings, device, train=True, comm=comm)
        val_loader = None if data.val is None else _loader(data.val, settings, device,
                                                           train=False, comm=comm)
        test_loader = _loader(data.test, settings, device, train=False)
        try:  # the library validates its arguments; the flags were checked already
            optimizer = build_optimizer(settings, model)
            scheduler = build_scheduler(settings, optimizer, len(train_loader))
            loss = losses.SoftmaxCrossEntropy(label_smoothing=settings["label_smoothing"])
        except ValueError as exc:
            raise CLIError(f"invalid training settings: {exc}") from None
        epochs = math.ceil(settings["epochs"])
        max_steps = None if epochs == settings["epochs"] else \
            math.ceil(settings["epochs"] * len(train_loader))
        tta = 2 if settings["tta"] else 0
    if saved is not None:
        try:  # fit restores it again; this only checks it fits, before anything is written
            restore_model(saved, model)
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"--resume {out}: {out / rd.CHECKPOINT} does not fit the run's "
                           f"model ({exc})") from None

    if main_rank and previous is None and getattr(args, "overwrite", False) and \
            (out / rd.CONFIG).exists():
        removed = rd.remove_run_files(out)  # only now: data and settings were fine
        if not quiet:
            eprint(_message(f"--overwrite: deleted the previous run's files in {out}: "
                            f"{', '.join(removed)}"))
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    trainable, buffers = count_parameters(model)
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    if previous is None:
        command = getattr(args, "argv", sys.argv)
        config = {"gpuconv_version": __version__, "created": now, "command": command,
                  "settings": settings, "device": str(device),
                  "machine": rd.machine_info(device), "data": data.describe(),
                  "model": {"preset": settings["model"], "parameters": trainable,
                            "buffers": buffers, "architecture": model.config()}}
    else:
        config = dict(previous)
        config["settings"] = settings
        config["device"] = str(device)
        config.setdefault("resumed", []).append(
            {"time": now, "command": getattr(args, "argv", sys.argv), "device": str(device),
             "machine": rd.machine_info(device), "gpuconv_version": __version__})
    config["distributed"] = parallel.describe(comm or world)
    if previous is not None:
        config["resumed"][-1]["distributed"] = config["distributed"]
    if main_rank:
        rd.write_json(out / rd.CONFIG, config)
    if previous is None and main_rank:
        rd.write_text(out / rd.SUMMARY_TXT, model.summary(INPUT_SHAPE, print_fn=None) + "\n")

    monitor = settings["monitor"] if val_loader is not None else settings["monitor"][4:]
    callbacks: list[Callback] = list(recipe_callbacks)  # they change the model: every rank
    if main_rank:  # the file writers on rank 0 only
        callbacks.append(HistoryLogger(out / rd.HISTORY_JSON, out / rd.HISTORY_CSV))
        if not recipe_callbacks:  # a recipe's model is the final one (lookahead writes it)
            callbacks.append(ModelCheckpoint(out / rd.MODEL, monitor=monitor,
                                             save_best_only=True))
    if settings["patience"] > 0:
        callbacks.append(EarlyStopping(monitor=monitor, patience=int(settings["patience"]),
                                       restore_best_weights=True))
    verbose = _verbosity(quiet)
    checkpoint = out / rd.CHECKPOINT
    if not quiet:
        amp = ", amp float16" if settings["amp"] else ""
        ranks = "" if comm is None else f" x {comm.size} ranks ({comm.backend})"
        val = 0 if data.val is None else len(data.val)
        resumed = ""
        if previous is not None:
            ckpt = _read_checkpoint(checkpoint)
            resumed = f" (resumed at {ckpt.describe()})" if ckpt is not None else " (resumed)"
        eprint(_message(
            f"gpuconv {__version__}: training {settings['model']} ({trainable:,} parameters) "
            f"on {device}{ranks} [{settings['dtype']}{amp}]; {len(data.train)} train / "
            f"{val} val / {len(data.test)} test images from {data.root}",
            f"run folder: {out}{resumed}"))
    start = time.perf_counter()
    try:
        with _sigterm_interrupts():
            history = model.fit(train_loader, epochs, optimizer, loss, max_steps=max_steps,
                                val_data=val_loader, callbacks=callbacks, scheduler=scheduler,
                                verbose=verbose, checkpoint_path=checkpoint,
                                checkpoint_every=settings["checkpoint_every"],
                                amp=bool(settings["amp"]), comm=comm,
                                resume_from=checkpoint if previous is not None else None)
    except TrainingInterrupted as exc:
        if main_rank:
            eprint(_interrupted_message(exc, out, len(train_loader)))
        if world.size > 1 and exc.reason != "hard":  # every rank stopped at this step
            world.barrier()  # rank 0's message is out before the job ends
            return parallel.AgreedExit(130)
        return 130
    except FloatingPointError as exc:
        raise CLIError(_failed_message(exc, out, config)) from None  # the settings' doing: exit 2
    train_time = time.perf_counter() - start
    if not main_rank:
        return 0  # rank 0 writes the report

    # Final report with the best model (model.npz: best value of the monitored metric),
    # or a recipe's final model
    if (out / rd.MODEL).is_file() and not recipe_callbacks:
        model = load_model(out / rd.MODEL, device=device)
    else:
        model.save(out / rd.MODEL)
    logits, labels = collect_logits(model, test_loader, tta)
    report = build_report(logits, labels, data.classes)
    rows = [{k: r.get(k) for k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                   "lr", "time", "images_per_s")} for r in history.records]
    best = None
    key = monitor
    scored = [r for r in rows if r.get(key) is not None]
    if scored:
        best = (max if "acc" in key else min)(scored, key=lambda r: r[key])
    report_json = {k: v for k, v in report.items() if k != "text"}
    report_json.update({"model": str(out / rd.MODEL), "epochs_trained": len(rows),
                        "best_epoch": None if best is None else best["epoch"],
                        "monitor": key, "best_value": None if best is None else best[key],
                        "train_time_s": train_time, "tta": tta})
    if tta:  # the plain accuracy next to the TTA one
        plain_logits, _ = collect_logits(model, test_loader)
        report_json["accuracy_without_tta"] = float((plain_logits.argmax(1) == labels).mean())
    # this session's whole command: data loading, training and the test report
    report_json["session_time_s"] = time.perf_counter() - run_start
    rd.write_json(out / rd.REPORT_JSON, report_json)
    text = format_report(report, f"Test set ({settings['model']}, {out / rd.MODEL})")
    rd.write_text(out / rd.REPORT_TXT, text)
    plots = write_plots(out, rows, report, rd.CURVES_PNG, rd.CONFUSION_PNG)
    width = terminal_width(sys.stdout)
    if not quiet:
        print(format_report(report, f"Test set ({settings['model']}, {out / rd.MODEL})",
                            width=width - 1))
    best_txt = "" if best is None else f", best epoch {best['epoch']} ({key} {best[key]:.4f})"
    tta_txt = f" with TTA ({report_json['accuracy_without_tta']:.4f} without)" if tta else ""
    print(wrap_text(f"test accuracy {report['accuracy']:.4f}{tta_txt} on {report['samples']} images "
                    f"after {len(rows)} epoch(s){best_txt}; run folder: {out}"
                    + ("" if plots else " (no plots: matplotlib is not installed)"), width - 1))
    return 0


def _interrupted_message(exc: TrainingInterrupted, out: Path, steps: int) -> str:
    """What was saved (or not) when training stopped on a signal, and how to go on."""
    if exc.phase == "validate":
        where = f"epoch {exc.epoch} (during validation)"
    elif exc.phase == "epoch end":
        where = f"the end of epoch {exc.epoch}"
    else:
        where = f"epoch {exc.epoch}, step {exc.step}/{steps}"
    if exc.saved:
        return "\n" + _message(f"Interrupted ({exc.reason}) at {where}; checkpoint saved to "
                               f"{exc.checkpoint}. Resume with:",
                               _Command(f"gpuconv train --resume {out}"))
    ckpt = _read_checkpoint(out / rd.CHECKPOINT)
    if ckpt is None:
        return "\n" + _message(f"Stopped at once at {where}, before any checkpoint. Start "
                               f"the run over with --overwrite, e.g.:",
                               _Command(_restart_command(out, rd.find_config(out))))
    return "\n" + _message(f"Stopped at once at {where} (a second interrupt): nothing saved "
                           f"now; the latest checkpoint is from {ckpt.describe()}. Resume "
                           "from it with:", _Command(f"gpuconv train --resume {out}"))


def _failed_message(exc: FloatingPointError, out: Path, config: dict) -> str:
    """A failed run (NaN/Inf loss or weights): its last good checkpoint and the ways on."""
    ckpt = _read_checkpoint(out / rd.CHECKPOINT)
    # fit's own message ends in advice for Python callers (nan_policy=...): keep the cause
    what = str(exc).split(";")[0].removeprefix("fit: ")
    parts: list[str] = [f"training failed: {what}"]
    if ckpt is not None:
        parts += [f"The run folder keeps its last good checkpoint ({ckpt.describe()}). "
                  "Resume from it with:", _Command(f"gpuconv train --resume {out}"),
                  "(with the same settings the CPU repeats the same steps, so this helps "
                  "when the cause was transient), or start the run over with other settings, "
                  "e.g. a lower --lr (the run's files are deleted):"]
    else:
        parts += ["No checkpoint was written before the failure. Start the run over with "
                  "other settings, e.g. a lower --lr (the run's files are deleted):"]
    parts.append(_Command(_restart_command(out, config)))
    return _error(*parts)
