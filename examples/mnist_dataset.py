"""Load an MNIST-format (IDX) dataset with gpuconv.datasets.MNIST and train on it.

    python examples/mnist_dataset.py [FOLDER]

FOLDER holds the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz), e.g. MNIST or
Fashion-MNIST. Without FOLDER a tiny synthetic IDX dataset (digits drawn as bars)
is written to a temporary folder first, so the example runs offline.
"""
import gzip
import os
import sys
import tempfile
from pathlib import Path

import numpy

import gpuconv
from gpuconv.data import MNIST_MEAN, MNIST_STD, DataLoader
from gpuconv.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU


def write_idx(path: Path, array: numpy.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                     for d in array.shape)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(numpy.uint8).tobytes())


def synthetic_mnist(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """28x28 images where class k is a bright bar at row 2k + 3, plus noise."""
    rng = numpy.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(numpy.uint8)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 3:2 * k + 5, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


if __name__ == "__main__":
    gpuconv.seed(0)
    if len(sys.argv) > 1:
        train = gpuconv.datasets.MNIST(sys.argv[1], train=True)
        test = gpuconv.datasets.MNIST(sys.argv[1], train=False)
    else:
        with tempfile.TemporaryDirectory(prefix="gpuconv-mnist-") as tmp:
            root = synthetic_mnist(Path(tmp))
            print(f"wrote a synthetic IDX dataset to {root}")
            train = gpuconv.datasets.MNIST(root, train=True)   # the arrays live in memory,
            test = gpuconv.datasets.MNIST(root, train=False)   # the folder can go
    print(train, test, sep="\n")

    device = gpuconv.get_device()
    norm = (MNIST_MEAN, MNIST_STD)
    train_loader = DataLoader(train, 64, shuffle=True, device=device, normalize=norm)
    test_loader = DataLoader(test, 256, device=device, normalize=norm)
    model = gpuconv.Sequential([
        Conv2D(1, 8, 3, padding="same"), ReLU(), MaxPool2D(2),
        Conv2D(8, 16, 3, padding="same"), ReLU(), MaxPool2D(2),
        Flatten(), Dense(16 * 7 * 7, len(train.classes)),
    ]).to(device)
    epochs = int(os.environ.get("GPUCONV_EXAMPLE_EPOCHS", "2"))
    model.fit(train_loader, epochs, gpuconv.optim.Adam(model, lr=2e-3),
              gpuconv.losses.SoftmaxCrossEntropy(), verbose=2)
    result = model.evaluate(test_loader)
    print(f"test accuracy {result['accuracy']:.3f} on {result['samples']} images")
