"""Shared pieces of the CLI commands: errors, data root, CIFAR-10 loading, augmentation,
device resolution."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy

from ..backend import Device, DeviceUnavailableError, get_device
from ..data import augment as aug
from ..data.datasets import CIFAR10, CorruptDatasetError, DatasetNotFoundError, default_root
from ..data.datasets.cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from .errors import CLIError, one_line

__all__ = ["CLIError", "data_root", "load_cifar10", "build_augment", "AUGMENT_CHOICES",
           "device_spec", "resolve_device", "eprint", "CIFAR10_CLASSES", "CIFAR10_MEAN",
           "CIFAR10_STD", "DEVICE_ENV"]

#: The environment variable that picks the device when ``--device`` is not given.
DEVICE_ENV = "GPUCONV_DEVICE"

AUGMENT_CHOICES = ("none", "basic", "full")

def eprint(*args: Any) -> None:
    """print to stderr, flushed."""
    print(*args, file=sys.stderr, flush=True)


def data_root(data_dir: "str | os.PathLike | None") -> Path:
    """``--data-dir``, else ``$GPUCONV_DATA``, else ``~/.cache/gpuconv``."""
    return Path(data_dir).expanduser() if data_dir else default_root()


def load_cifar10(data_dir: "str | os.PathLike | None", train: bool,
                 download: bool = False) -> CIFAR10:
    """Load CIFAR-10 (train or test split), turning a missing/corrupt dataset into a
    :class:`CLIError` that says where the files go."""
    root = data_root(data_dir)
    try:
        return CIFAR10(root, train=train, download=download)
    except DatasetNotFoundError as exc:
        detail = str(exc).split(" Download ")[0].split("\n")[0]
        raise CLIError(
            f"{detail}\n"
            f"Put CIFAR-10 there: download {CIFAR10.url} (MD5 {CIFAR10.md5}) and unpack it "
            f"so that {root / 'cifar-10-batches-py' / 'data_batch_1'} exists (the binary "
            f"version, {root / 'cifar-10-batches-bin' / 'data_batch_1.bin'}, works too)"
            + ("" if download else ", or rerun with --download to fetch it (about 170 MB)")
            + ".\nTo use another folder pass --data-dir DIR or set GPUCONV_DATA=DIR.") from None
    except (CorruptDatasetError, pickle.UnpicklingError) as exc:
        # UnpicklingError: a py-layout batch that is truncated, random bytes or a
        # pickle calling a forbidden global (refused before anything ran)
        detail = one_line(str(exc))
        advice = "" if "again" in detail else (
            "; delete its folder and unpack the official archive again (or rerun with "
            "--download)")
        raise CLIError(f"CIFAR-10 is damaged: {detail}{advice}") from None


def build_augment(kind: str, image_size: int = 32) -> "aug.Augmentation | None":
    """``none``: no augmentation; ``basic``: random crop (pad 4) + horizontal flip;
    ``full``: colour jitter, rotation (10 degrees), crop, flip and cutout (8x8)."""
    if kind == "none":
        return None
    if kind == "basic":
        return aug.Compose([aug.RandomCrop(image_size, 4), aug.RandomHorizontalFlip()])
    if kind == "full":
        return aug.Compose([aug.ColorJitter(0.2, 0.2, 0.2), aug.RandomRotation(10.0),
                            aug.RandomCrop(image_size, 4), aug.RandomHorizontalFlip(),
                            aug.Cutout(8)])
    raise CLIError(f"unknown --augment {kind!r}; choose one of {', '.join(AUGMENT_CHOICES)}")


def device_spec(flag: str | None) -> tuple[str, str]:
    """(device spec, where it came from): ``--device`` when given, else
    ``$GPUCONV_DEVICE`` when set, else ``auto``."""
    if flag:
        return flag, f"--device {flag}"
    env = os.environ.get(DEVICE_ENV, "").strip()
    if env:
        return env, f"{DEVICE_ENV}={env}"
    return "auto", "--device auto"


def resolve_device(spec: str | None, source: str | None = None) -> Device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> Device, as a CLIError when unusable.

    ``spec`` None: :func:`device_spec` (``$GPUCONV_DEVICE``, else auto).
    ``source`` names the flag or variable in messages (default ``--device SPEC``).
    """
    if spec is None:
        spec, source = device_spec(None)
    source = source or f"--device {spec}"
    try:
        return get_device(spec)
    except DeviceUnavailableError as exc:
        raise CLIError(f"{source}: CUDA is not usable here ({exc.reason}); use --device "
                       "cpu, or install gpuconv[cuda12] (or [cuda13]) on a machine with an "
                       "NVIDIA GPU") from None
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"{source}: {exc}") from None


def split_indices(n: int, val: int, seed: int, limit: int | None = None
                  ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Deterministic (train, val) index split of ``n`` samples: a permutation from
    ``numpy.random.default_rng(seed)``; the first ``val`` go to validation, the
    rest (at most ``limit`` of them) to training. Both parts are returned sorted
    (the loader shuffles the training part itself)."""
    order = numpy.random.default_rng(seed).permutation(n)
    train = order[val:] if limit is None else order[val:val + limit]
    return numpy.sort(train), numpy.sort(order[:val])
