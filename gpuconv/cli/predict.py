"""``gpuconv predict``: top-k classes of image files with a saved model.

``gpuconv predict MODEL IMAGE...``: MODEL is a model file, a checkpoint or a
run folder. IMAGEs are PNG/JPEG files (read with Pillow, converted to RGB and
resized to the model's input size, 32x32 for the presets) or ``.npy`` arrays:
one image ``(3, H, W)`` / ``(H, W, 3)`` or a batch ``(N, 3, H, W)``; uint8
arrays hold 0..255 pixels, float arrays [0, 1] pixels. Images are normalised
as in training (the run's ``config.json``, else the CIFAR-10 statistics).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy

from ..backend import to_device, to_numpy
from . import run_dir as rd
from .common import CLIError, resolve_device
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
                        "(N,3,H,W), uint8 0..255 or float 0..1")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=run)
    return p


def _to_chw(array: numpy.ndarray, where: str) -> numpy.ndarray:
    """(3, H, W) or (H, W, 3) -> float64 (3, H, W) pixels in [0, 1]."""
    if array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(2, 0, 1)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise CLIError(f"{where}: expected an image of shape (3, H, W) or (H, W, 3), got "
                       f"{array.shape}")
    if array.dtype == numpy.uint8:
        out = array.astype(numpy.float64) / 255.0
    elif numpy.issubdtype(array.dtype, numpy.floating):
        out = array.astype(numpy.float64)
    else:
        raise CLIError(f"{where}: expected uint8 (0..255) or float (0..1) pixels, got "
                       f"{array.dtype}")
    if out.shape[0] == 1:
        out = numpy.repeat(out, 3, axis=0)
    return out


def _read_image_file(path: Path, size: tuple[int, int]) -> numpy.ndarray:
    try:
        from PIL import Image  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise CLIError(f"{path}: reading {path.suffix} images needs Pillow "
                       "(pip install pillow, or gpuconv[images]); .npy arrays work without "
                       "it") from None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return numpy.asarray(img, dtype=numpy.uint8)
    except OSError as exc:
        raise CLIError(f"{path}: cannot read the image ({exc})") from None


def _resize(chw: numpy.ndarray, size: tuple[int, int], where: str) -> numpy.ndarray:
    if chw.shape[1:] == size:
        return chw
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:
        raise CLIError(f"{where}: the array is {chw.shape[1]}x{chw.shape[2]}, the model needs "
                       f"{size[0]}x{size[1]}; resizing needs Pillow") from None
    hwc = (numpy.clip(chw, 0, 1) * 255).round().astype(numpy.uint8).transpose(1, 2, 0)
    img = Image.fromarray(hwc).resize((size[1], size[0]), Image.BILINEAR)
    return numpy.asarray(img, dtype=numpy.float64).transpose(2, 0, 1) / 255.0


def load_images(paths: list[str], size: tuple[int, int] = (32, 32)
                ) -> tuple[list[str], numpy.ndarray]:
    """(names, float64 (N, 3, H, W) pixels in [0, 1]) for image files and .npy arrays."""
    names: list[str] = []
    images: list[numpy.ndarray] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise CLIError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                array = numpy.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CLIError(f"{path}: not a readable .npy array ({exc})") from None
            if array.ndim == 4:
                for i, item in enumerate(array):
                    images.append(_resize(_to_chw(item, f"{path}[{i}]"), size, str(path)))
                    names.append(f"{name}[{i}]")
                continue
            images.append(_resize(_to_chw(array, str(path)), size, str(path)))
        elif suffix in IMAGE_SUFFIXES:
            images.append(_to_chw(_read_image_file(path, size), str(path)))
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
    if args.top_k < 1:
        raise CLIError("--top-k must be >= 1")
    path = resolve_model_path(args.model)
    classes, mean, std, shape = preprocessing(rd.find_config(path))
    names, pixels = load_images(args.images, (shape[1], shape[2]))
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
                                                "probability": float(p[i])} for i in top]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(n) for n in names)
        for r in results:
            preds = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
            print(f"{r['image']:<{width}}  {preds}")
    return 0
