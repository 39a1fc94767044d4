"""Shared pieces of the CLI commands: errors, data root, CIFAR-10 loading, augmentation,
device resolution."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy

from ..backend import Device, get_device
from ..data import augment as aug
from ..data.datasets import CIFAR10, CorruptDatasetError, DatasetNotFoundError, default_root
from ..data.datasets.cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

__all__ = ["CLIError", "data_root", "load_cifar10", "build_augment", "AUGMENT_CHOICES",
           "resolve_device", "eprint", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD"]

AUGMENT_CHOICES = ("none", "basic", "full")

def _make_script_hint() -> str:
    """A hint to build CIFAR-10 with the workspace's make_cifar10.py, when that script exists
    next to the repository (development checkouts)."""
    script = Path(__file__).resolve().parents[3] / "shared" / "data" / "make_cifar10.py"
    if script.is_file():
        return (f"\nTo build it from the local JPEG archive instead: python3 {script} DIR "
                "(then pass --data-dir DIR).")
    return ""

class CLIError(Exception):
    """A user-facing error: printed as one message (no traceback), exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


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
            + ".\nTo use another folder pass --data-dir DIR or set GPUCONV_DATA=DIR."
            + _make_script_hint()) from None
    except CorruptDatasetError as exc:
        raise CLIError(f"the CIFAR-10 files under {root} are damaged: {exc}\n"
                       "Delete the folder and unpack/download the dataset again.") from None


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


def resolve_device(spec: str | None) -> Device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> Device, as a CLIError when unusable."""
    try:
        return get_device(spec or "auto")
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"--device {spec}: {exc}") from None


def split_indices(n: int, val: int, seed: int, limit: int | None = None
                  ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Deterministic (train, val) index split of ``n`` samples: a permutation from
    ``numpy.random.default_rng(seed)``; the first ``val`` go to validation, the
    rest (at most ``limit`` of them) to training. Both parts are returned sorted
    (the loader shuffles the training part itself)."""
    order = numpy.random.default_rng(seed).permutation(n)
    train = order[val:] if limit is None else order[val:val + limit]
    return numpy.sort(train), numpy.sort(order[:val])
