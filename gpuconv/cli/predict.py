"""``gpuconv predict``: top-k classes of image files with a saved model.

``gpuconv predict MODEL IMAGE...``: MODEL is a model file, a checkpoint or a
run folder. IMAGEs are PNG/JPEG files (read with Pillow, converted to RGB and
resized to the model's input size, 32x32 for the presets) or ``.npy`` arrays:
one image ``(3, H, W)`` / ``(H, W, 3)`` or a batch ``(N, 3, H, W)``; integer
arrays hold 0..255 pixels, float arrays [0, 1] pixels (values outside the
range, NaN and Inf are refused, not guessed at). Images are normalised as in
training (the run's ``config.json``, else the CIFAR-10 statistics). Every
conversion (grayscale or RGBA to RGB, resizing, with whether the aspect ratio
was kept) is reported on stderr as a ``note:`` line and in ``--json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy

from ..backend import to_device, to_numpy
from . import argtypes
from . import run_dir as rd
from .common import DEVICE_ENV, CLIError, eprint, resolve_device
from .evaluate import load_cli_model, preprocessing, resolve_model_path

__all__ = ["add_parser", "run", "load_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``predict`` subcommand."""
    p = subparsers.add_parser(
        "predict", help="classify images (PNG/JPEG or .npy) with a saved model",
        description="Print the top-k classes and probabilities of each image.")
    p.add_argument("model", metavar="MODEL", help="model.npz, checkpoint.npz or a run folder")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="PNG/JPEG files (needs Pillow) or .npy arrays (3,H,W), (H,W,3) or "
                        "(N,3,H,W), integer 0..255 or float 0..1")
    p.add_argument("--top-k", type=argtypes.integer(1), default=3,
                   help="classes to show per image (default 3)")
    p.add_argument("--device", default=None,
                   help=f"auto, cpu, cuda or cuda:N (default ${DEVICE_ENV} when set, else auto)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=run)
    return p


#: How far float pixels may stray outside [0, 1] before they are refused (rounding
#: of a float32 image scaled by 1/255 stays far inside this).
FLOAT_TOLERANCE = 1e-3


def _to_chw(array: numpy.ndarray, where: str, notes: list[str]) -> numpy.ndarray:
    """(3, H, W), (1, H, W), (H, W, 3) or (H, W, 1) -> float64 (3, H, W) pixels
    in [0, 1]. Integer pixels must lie in 0..255, float pixels in [0, 1]; NaN/Inf and
    anything out of range are refused (a float image holding 0..255 values would
    otherwise be classified as if it were saturated white)."""
    if array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(2, 0, 1)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise CLIError(f"{where}: expected an image of shape (3, H, W) or (H, W, 3), got "
                       f"{array.shape}")
    if array.dtype == numpy.bool_ or not (numpy.issubdtype(array.dtype, numpy.integer)
                                          or numpy.issubdtype(array.dtype, numpy.floating)):
        raise CLIError(f"{where}: expected integer (0..255) or float (0..1) pixels, got "
                       f"{array.dtype}")
    if numpy.issubdtype(array.dtype, numpy.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise CLIError(f"{where}: integer pixels must lie in 0..255, found "
                           f"{array.min()}..{array.max()}")
        out = array.astype(numpy.float64) / 255.0
    else:
        out = array.astype(numpy.float64)
        bad = int(numpy.count_nonzero(~numpy.isfinite(out)))
        if bad:
            raise CLIError(f"{where}: {bad} pixel value(s) are NaN or infinite")
        low, high = (float(out.min()), float(out.max())) if out.size else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            hint = (" (it looks like 0..255 pixels: divide by 255 or save it as uint8)"
                    if low >= 0 and high <= 255 else "")
            raise CLIError(f"{where}: float pixels must lie in [0, 1], found "
                           f"{low:g}..{high:g}{hint}")
        out = numpy.clip(out, 0.0, 1.0)
    if out.shape[0] == 1:
        out = numpy.repeat(out, 3, axis=0)
        notes.append("grayscale, repeated into 3 channels")
    return out


def _resize_note(old: tuple[int, int], new: tuple[int, int]) -> str:
    """What a resize did, in words (width x height), and whether it kept the aspect."""
    (oh, ow), (nh, nw) = old, new
    kept = oh * nw == ow * nh
    return (f"resized {ow}x{oh} to {nw}x{nh}"
            + ("" if kept else " (aspect ratio not kept: stretched)"))


def _read_image_file(path: Path, size: tuple[int, int], notes: list[str]) -> numpy.ndarray:
    try:
        from PIL import Image  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise CLIError(f"{path}: reading {path.suffix} images needs Pillow "
                       "(pip install pillow, or gpuconv[images]); .npy arrays work without "
                       "it") from None
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                notes.append(f"converted {img.mode} to RGB"
                             + (" (transparency dropped)" if "A" in img.mode
                                or "transparency" in img.info else ""))
                img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                notes.append(_resize_note((img.size[1], img.size[0]), size))
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return numpy.asarray(img, dtype=numpy.uint8)
    except OSError as exc:
        raise CLIError(f"{path}: cannot read the image ({exc})") from None


def _resize(chw: numpy.ndarray, size: tuple[int, int], where: str,
            notes: list[str]) -> numpy.ndarray:
    if chw.shape[1:] == size:
        return chw
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:
        raise CLIError(f"{where}: the array is {chw.shape[1]}x{chw.shape[2]}, the model needs "
                       f"{size[0]}x{size[1]}; resizing needs Pillow") from None
    notes.append(_resize_note(chw.shape[1:], size))
    hwc = (numpy.clip(chw, 0, 1) * 255).round().astype(numpy.uint8).transpose(1, 2, 0)
    img = Image.fromarray(hwc).resize((size[1], size[0]), Image.BILINEAR)
    return numpy.asarray(img, dtype=numpy.float64).transpose(2, 0, 1) / 255.0


def _read_npy(path: Path) -> numpy.ndarray:
    """A ``.npy`` file's array, read without unpickling; CLIError naming the file for
    anything else (NumPy would advise loading a random or pickled file with
    ``allow_pickle=True``, and return an .npz archive as a mapping)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        found = ("an .npz archive" if magic.startswith(b"PK") else
                 "a Python pickle; it was not unpickled" if magic[:1] == b"\x80" else
                 "an empty file" if not magic else "unknown content")
        raise CLIError(f"{path}: not a .npy array file ({found}); give .npy arrays or "
                       "PNG/JPEG images")
    try:
        array = numpy.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc):
            raise CLIError(f"{path}: holds Python objects, not pixel values; refused (not "
                           "unpickled)") from None
        raise CLIError(f"{path}: not a readable .npy array ({exc})") from None
    except OSError as exc:
        raise CLIError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, numpy.ndarray):
        raise CLIError(f"{path}: not a .npy array file")
    return array


def _check_input(path: Path) -> None:
    if path.is_dir():
        raise CLIError(f"{path}: is a folder; give image files or .npy arrays")
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if not path.is_file():
        raise CLIError(f"{path}: not a regular file")


def load_images(paths: list[str], size: tuple[int, int] = (32, 32),
                notes: "dict[str, list[str]] | None" = None
                ) -> tuple[list[str], numpy.ndarray]:
    """(names, float64 (N, 3, H, W) pixels in [0, 1]) for image files and .npy arrays.

    ``notes``, when given, receives per image name what was done to it
    (colour conversion, resizing) so that the caller can say so.
    """
    names: list[str] = []
    images: list[numpy.ndarray] = []
    notes = {} if notes is None else notes
    for name in paths:
        path = Path(name)
        _check_input(path)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            array = _read_npy(path)
            if array.ndim == 4:
                for i, item in enumerate(array):
                    key = f"{name}[{i}]"
                    done = notes.setdefault(key, [])
                    images.append(_resize(_to_chw(item, f"{path}[{i}]", done), size,
                                          str(path), done))
                    names.append(key)
                continue
            done = notes.setdefault(name, [])
            images.append(_resize(_to_chw(array, str(path), done), size, str(path), done))
        elif suffix in IMAGE_SUFFIXES:
            done = notes.setdefault(name, [])
            images.append(_to_chw(_read_image_file(path, size, done), str(path), done))
        else:
            raise CLIError(f"{path}: unsupported file type {path.suffix!r}; give PNG/JPEG "
                           "images or .npy arrays")
        names.append(name)
    return names, numpy.stack(images)


def _softmax(logits: numpy.ndarray) -> numpy.ndarray:
    e = numpy.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run(args: argparse.Namespace) -> int:
    """Run ``gpuconv predict``; returns the exit code."""
    path = resolve_model_path(args.model)
    classes, mean, std, shape = preprocessing(rd.find_config(path))
    notes: dict[str, list[str]] = {}
    names, pixels = load_images(args.images, (shape[1], shape[2]), notes)
    for name in names:
        if notes.get(name):
            eprint(f"note: {name}: {'; '.join(notes[name])}")
    device = resolve_device(args.device)
    model = load_cli_model(path, device)
    x = (pixels - numpy.asarray(mean)[:, None, None]) / numpy.asarray(std)[:, None, None]
    x = to_device(x.astype(model.dtype or numpy.float32), device)
    try:
        logits = to_numpy(model.predict(x)).astype(numpy.float64)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{path}: the model does not accept these images: {exc}") from None
    if logits.ndim != 2:
        raise CLIError(f"{path}: expected class scores (N, K) from the model, got {logits.shape}")
    if logits.shape[1] != len(classes):
        classes = [str(i) for i in range(logits.shape[1])]
    probs = _softmax(logits)
    k = min(args.top_k, probs.shape[1])
    results = []
    for name, p in zip(names, probs):
        top = numpy.argsort(-p, kind="stable")[:k]
        results.append({"image": name, "top": [{"class": classes[i], "index": int(i),
                                                "probability": float(p[i])} for i in top],
                        "notes": notes.get(name, [])})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(n) for n in names)
        for r in results:
            preds = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
            print(f"{r['image']:<{width}}  {preds}")
    return 0
