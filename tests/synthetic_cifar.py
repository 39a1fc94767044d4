"""Tiny synthetic CIFAR-10 folders for CLI tests (both official layouts).

Images are learnable: each class has its own mean colour and a bright
horizontal band at a class-dependent row, plus noise.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def make_images(n: int, seed: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """``n`` uint8 images (n, 3, 32, 32) and int labels (n,), classes cycling 0..9."""
    rng = numpy.random.default_rng(seed)
    labels = numpy.arange(n) % 10
    rng.shuffle(labels)
    colours = numpy.random.default_rng(1234).integers(30, 225, size=(10, 3))
    x = rng.normal(0, 25, size=(n, 3, 32, 32)) + colours[labels][:, :, None, None]
    for i, k in enumerate(labels):
        x[i, :, 3 * k:3 * k + 3, :] += 60
    return numpy.clip(x, 0, 255).astype(numpy.uint8), labels.astype(numpy.int64)


def write_cifar(root: "str | Path", n_train: int = 200, n_test: int = 50,
                layout: str = "bin", seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-{bin,py}`` with ``n_train`` training images spread
    over the five batches and ``n_test`` test images; returns ``root``."""
    root = Path(root)
    x, y = make_images(n_train + n_test, seed)
    parts = numpy.array_split(numpy.arange(n_train), 5) + [numpy.arange(n_train,
                                                                        n_train + n_test)]
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    folder = root / f"cifar-10-batches-{layout}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, idx in zip(names, parts):
        if layout == "bin":
            rec = numpy.concatenate([y[idx, None].astype(numpy.uint8),
                                     x[idx].reshape(len(idx), -1)], axis=1)
            rec.tofile(folder / f"{name}.bin")
        else:
            batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y[idx]],
                     b"data": x[idx].reshape(len(idx), -1),
                     b"filenames": [f"{i}.png".encode() for i in idx]}
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f, protocol=2)
    if layout == "bin":
        (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    else:
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f, protocol=2)
    return root
