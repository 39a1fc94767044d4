"""``gpuconv train``: train a preset CNN on CIFAR-10 into a run folder.

Defaults that just work: ``gpuconv train`` trains the ``seed-cnn`` preset on
CIFAR-10 (45,000 training / 5,000 validation images, the 10,000 test images
for the final report) with Adam (lr 1e-3, weight decay 1e-4), batch 128,
random crop + flip augmentation, ReduceLROnPlateau on the validation loss
and early stopping on the validation accuracy (patience 10, best weights
restored), for up to 30 epochs. ``--amp`` trains in float16 mixed precision
(float32 master weights, dynamic loss scaling; CUDA only, see
:data:`AMP_CPU_MESSAGE`). See :mod:`gpuconv.cli.run_dir` for the files
of the run folder. ``--resume RUN_DIR`` continues an interrupted run.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..backend import Device, seed as seed_all
from ..data.datasets import ArrayDataset
from ..data.loader import DataLoader
from .. import distributed as dist
from .. import losses
from ..training.callbacks import Callback, EarlyStopping, HistoryLogger, ModelCheckpoint
from ..optim import SGD, Adam, AdamW, RMSprop
from ..optim import lr_scheduler as sched
from ..models import load_model
from ..training.summary import count_parameters
from . import parallel
from . import run_dir as rd
from .common import (AUGMENT_CHOICES, CIFAR10_MEAN, CIFAR10_STD, CLIError, build_augment,
                     eprint, load_cifar10, resolve_device, split_indices)
from ..models.presets import DEFAULT_PRESET, INPUT_SHAPE, PRESETS, build_preset
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
}

#: Why ``--amp`` is refused on the CPU (measured on this project's 2-core Xeon VM,
#: NumPy 2.4 + OpenBLAS: a 512x512 @ 512x512 matmul takes 2.4 ms in float32 and
#: 0.66-1.1 s in float16, about 300-450x slower).
AMP_CPU_MESSAGE = (
    "--amp needs a CUDA device: mixed precision computes the convolutions and dense layers "
    "in float16, and NumPy has no BLAS for float16 (a 512x512 float16 matmul measured "
    "~300x slower than float32 on the CPU). Use --device cuda, or drop --amp.")

#: Settings a ``--resume`` may change (everything else comes from the run's config.json).
RESUME_OVERRIDABLE = ("epochs", "data_dir", "download", "device", "eval_batch_size")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _val_split(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"must be a count (>= 1) or a fraction in [0, 1), "
                                         f"got {text}")
    return int(value) if value >= 1 else value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a CNN on CIFAR-10 into a run folder",
        description="Train a preset CNN on CIFAR-10. Writes config.json, history.json/.csv, "
                    "model.npz (best), checkpoint.npz (resume), report.json/.txt and plots "
                    "into the run folder.")
    d = DEFAULTS
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=sorted(PRESETS), default=None,
                   help=f"model preset (default {d['model']})")
    g.add_argument("--data-dir", default=None,
                   help="CIFAR-10 root (holding cifar-10-batches-py/ or -bin/); default "
                        "$GPUCONV_DATA, else ~/.cache/gpuconv")
    g.add_argument("--download", action="store_true", default=None,
                   help="download CIFAR-10 into the data root if it is missing")
    g.add_argument("--augment", choices=AUGMENT_CHOICES, default=None,
                   help="none; basic = random crop (pad 4) + horizontal flip; full = basic + "
                        f"colour jitter, rotation, cutout (default {d['augment']})")
    g.add_argument("--val-split", type=_val_split, default=None,
                   help="training images held out for validation: a count or a fraction "
                        f"(default {d['val_split']}; 0 = no validation)")
    g.add_argument("--limit", type=_positive_int, default=None,
                   help="use only N training images (after the validation split)")
    g.add_argument("--test-limit", type=_positive_int, default=None,
                   help="report on only the first N test images")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"maximum number of epochs (default {d['epochs']})")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"training batch size (default {d['batch_size']})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"optimizer (default {d['optimizer']})")
    g.add_argument("--lr", type=_non_negative_float, default=None,
                   help=f"learning rate (peak lr for onecycle; default {d['lr']})")
    g.add_argument("--weight-decay", type=_non_negative_float, default=None,
                   help=f"weight decay (decoupled for adamw; default {d['weight_decay']})")
    g.add_argument("--momentum", type=_non_negative_float, default=None,
                   help="momentum for sgd (default 0.9) and rmsprop (default 0)")
    g.add_argument("--label-smoothing", type=_non_negative_float, default=None,
                   help=f"label smoothing of the cross-entropy (default {d['label_smoothing']})")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="lr schedule: plateau = ReduceLROnPlateau(factor 0.5, patience 3, "
                        "min_lr 1e-6) on val_loss; cosine = cosine annealing over the epochs; "
                        "onecycle = one-cycle per batch; step = StepLR(--step-size, --gamma) "
                        f"(default {d['schedule']})")
    g.add_argument("--step-size", type=_positive_int, default=None,
                   help=f"epochs per lr step for --schedule step (default {d['step_size']})")
    g.add_argument("--gamma", type=_non_negative_float, default=None,
                   help=f"lr factor per step for --schedule step (default {d['gamma']})")
    g.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without improvement of --monitor before "
                        f"stopping (best weights restored); 0 disables (default {d['patience']})")
    g.add_argument("--monitor", choices=MONITORS, default=None,
                   help="metric for early stopping and the best model "
                        f"(default {d['monitor']})")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None,
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when available)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help=f"parameter and input dtype (default {d['dtype']})")
    g.add_argument("--amp", action="store_true", default=None,
                   help="float16 mixed precision with float32 master weights and dynamic "
                        "loss scaling (CUDA devices only)")
    g.add_argument("--seed", type=int, default=None,
                   help=f"seed of weights, shuffling, augmentation and the validation split "
                        f"(default {d['seed']})")
    g.add_argument("--eval-batch-size", type=_positive_int, default=None,
                   help=f"batch size for validation and test (default {d['eval_batch_size']})")
    g.add_argument("--out", default=None,
                   help="run folder (default runs/<timestamp>-<model>)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its checkpoint, with its settings "
                        f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)}"
                        " may be changed)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress output; only the final summary")
    parallel.add_arguments(g)  # --nproc, --backend (see gpuconv.cli.parallel)
    p.set_defaults(func=run)
    return p


# ---- settings ---------------------------------------------------------------------------
def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (not None)."""
    return {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], Path, dict | None]:
    """(settings, run folder, previous config or None) for a new or resumed run."""
    given = _given(args)
    if args.resume is None:
        settings = {**DEFAULTS, **given}
        if settings["data_dir"] is not None:
            settings["data_dir"] = str(Path(settings["data_dir"]).expanduser().resolve())
        out = Path(args.out) if args.out else rd.default_run_dir(settings["model"])
        if (out / rd.CONFIG).exists():
            raise CLIError(f"{out} already holds a run (config.json exists); continue it with "
                           f"`gpuconv train --resume {out}` or choose another --out")
        return settings, out, None
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
        raise CLIError(f"--resume {out}: no {rd.CHECKPOINT} there (the run saved no checkpoint "
                       "yet); start a new run instead")
    settings = {**DEFAULTS, **previous.get("settings", {})}
    changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE
                     and v != settings.get(k))
    if changed:
        raise CLIError(f"--resume uses the run's own settings; these differ from it and cannot "
                       f"be changed: {', '.join('--' + k.replace('_', '-') for k in changed)}")
    settings.update({k: v for k, v in given.items() if k in RESUME_OVERRIDABLE})
    return settings, out, previous


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

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the command ------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run ``gpuconv train``; returns the exit code. ``--nproc N`` relaunches under
    mpiexec; under MPI every rank runs this (see :mod:`gpuconv.cli.parallel`)."""
    relaunched = parallel.relaunch_if_asked(args)
    if relaunched is not None:
        return relaunched
    return parallel.guarded(args, "train", _train)


def _train(args: argparse.Namespace, world: Any) -> int:
    settings, out, previous = resolve_settings(args)
    # ---- several ranks: rank 0's run folder, equal settings, one device per rank
    main_rank = world.rank == 0
    if world.size > 1:
        out = Path(world.broadcast_object(str(out)))  # default folder names hold a time
        parallel.check_settings(world, settings, out)
        world.barrier()  # every rank checked the folder before rank 0 writes into it
    comm = dist_init(args, settings) if world.size > 1 else None
    quiet = bool(args.quiet) or not main_rank
    device = comm.device if comm is not None else resolve_device(settings["device"])
    if settings["amp"]:
        if device.kind == "cpu":
            raise CLIError(AMP_CPU_MESSAGE)
        if settings["dtype"] != "float32":
            raise CLIError(f"--amp keeps float32 master weights; it cannot be combined with "
                           f"--dtype {settings['dtype']}")
    if world.rank != 0:
        world.barrier()   # rank 0 loads (and maybe downloads) the data first
    data = _Data(settings)
    if world.size > 1 and world.rank == 0:
        world.barrier()

    seed_all(int(settings["seed"]))
    model = build_preset(settings["model"], num_classes=len(data.classes), dtype=settings["dtype"])
    model.to(device)
    train_loader = _loader(data.train, settings, device, train=True, comm=comm)
    val_loader = None if data.val is None else _loader(data.val, settings, device, train=False,
                                                       comm=comm)
    test_loader = _loader(data.test, settings, device, train=False)
    optimizer = build_optimizer(settings, model)
    scheduler = build_scheduler(settings, optimizer, len(train_loader))
    loss = losses.SoftmaxCrossEntropy(label_smoothing=settings["label_smoothing"])

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
        rd.write_text(out / "summary.txt", model.summary(INPUT_SHAPE, print_fn=None) + "\n")

    monitor = settings["monitor"] if val_loader is not None else settings["monitor"][4:]
    callbacks: list[Callback] = [  # the file writers on rank 0 only
        HistoryLogger(out / rd.HISTORY_JSON, out / rd.HISTORY_CSV),
        ModelCheckpoint(out / rd.MODEL, monitor=monitor, save_best_only=True),
    ] if main_rank else []
    if settings["patience"] > 0:
        callbacks.append(EarlyStopping(monitor=monitor, patience=int(settings["patience"]),
                                       restore_best_weights=True))
    verbose = _verbosity(quiet)
    if not quiet:
        eprint(f"gpuconv {__version__}: training {settings['model']} ({trainable:,} parameters) "
               f"on {device} [{settings['dtype']}{', amp float16' if settings['amp'] else ''}]; {len(data.train)} train / "
               f"{0 if data.val is None else len(data.val)} val / {len(data.test)} test images "
               f"from {data.root}")
        eprint(f"run folder: {out}" + (" (resumed)" if previous is not None else ""))
    checkpoint = out / rd.CHECKPOINT
    start = time.perf_counter()
    try:
        with _sigterm_interrupts():
            history = model.fit(train_loader, settings["epochs"], optimizer, loss,
                                val_data=val_loader, callbacks=callbacks, scheduler=scheduler,
                                verbose=verbose, checkpoint_path=checkpoint,
                                amp=bool(settings["amp"]), comm=comm,
                                resume_from=checkpoint if previous is not None else None)
    except KeyboardInterrupt:
        if not main_rank:
            return 130
        eprint(f"\nInterrupted. Checkpoint saved to {checkpoint} "
               f"({len(getattr(model.history, 'records', []) or [])} epoch(s) completed).\n"
               f"Resume with: gpuconv train --resume {out}")
        return 130
    train_time = time.perf_counter() - start
    if not main_rank:
        return 0  # rank 0 writes the report

    # Final report with the best model (model.npz: best value of the monitored metric).
    if (out / rd.MODEL).is_file():
        model = load_model(out / rd.MODEL, device=device)
    else:
        model.save(out / rd.MODEL)
    logits, labels = collect_logits(model, test_loader)
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
                        "train_time_s": train_time})
    rd.write_json(out / rd.REPORT_JSON, report_json)
    text = format_report(report, f"Test set ({settings['model']}, {out / rd.MODEL})")
    rd.write_text(out / rd.REPORT_TXT, text)
    plots = write_plots(out, rows, report, rd.CURVES_PNG, rd.CONFUSION_PNG)
    if not quiet:
        print(text)
    best_txt = "" if best is None else f", best epoch {best['epoch']} ({key} {best[key]:.4f})"
    print(f"test accuracy {report['accuracy']:.4f} on {report['samples']} images after "
          f"{len(rows)} epoch(s){best_txt}; run folder: {out}"
          + ("" if plots else " (no plots: matplotlib is not installed)"))
    return 0
