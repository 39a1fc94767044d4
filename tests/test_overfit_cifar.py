"""A small CNN must be able to memorise 256 real CIFAR-10 images (>= 95 % train accuracy).

This is the classic sanity check of a training engine: with enough capacity
and no regularisation, loss, backward pass and optimizer together must drive
the training error to ~0 within a bounded number of steps (measured: 97.7 % after
11 epochs = 44 steps on the CPU; the bound is 240 steps). Runs on the CPU
and on the strict fake CuPy. Skipped when the shared CIFAR-10 is unavailable.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from cifar_cache import cifar10_root
from gpuconv.data import CIFAR10, CIFAR10_MEAN, CIFAR10_STD
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.optim import Adam
from gpuconv.training.callbacks import Callback
from gpuconv.training.loop import ArrayBatches

MAX_EPOCHS = 60  # 4 steps each: at most 240 optimizer steps


def small_cnn() -> gpuconv.Sequential:
    return gpuconv.Sequential([
        Conv2D(3, 16, 3, padding="same"), BatchNorm2d(16), ReLU(), MaxPool2D(2),
        Conv2D(16, 32, 3, padding="same"), BatchNorm2d(32), ReLU(), MaxPool2D(2),
        Flatten(), Dense(32 * 8 * 8, 10),
    ])


@pytest.fixture(scope="module")
def images_256():
    data = CIFAR10(cifar10_root(), train=True)
    x = data.images[:256].astype(np.float32) / 255
    x = (x - np.asarray(CIFAR10_MEAN, np.float32)[:, None, None]) \
        / np.asarray(CIFAR10_STD, np.float32)[:, None, None]
    return x, data.labels[:256]


@pytest.mark.parametrize("device", ["cpu", "fakecupy"])
def test_small_cnn_memorises_256_real_images(images_256, device):
    x, y = images_256
    assert len(np.unique(y)) == 10
    gpuconv.seed(0)
    model = small_cnn().to(device)
    optimizer = Adam(model.parameters(), lr=3e-3)
    loss = SoftmaxCrossEntropy()
    batches = ArrayBatches(x, y, batch_size=64, shuffle=True, seed=0)
    history = model.fit(batches, epochs=MAX_EPOCHS, optimizer=optimizer, loss=loss, verbose=0,
                        callbacks=[_StopAt(0.95, x, y)])
    result = model.evaluate(ArrayBatches(x, y, batch_size=256, shuffle=False))
    epochs = len(history.records)
    print(f"{device}: train accuracy {result['accuracy']:.3f} after {epochs} epochs")
    assert result["accuracy"] >= 0.95, f"train accuracy {result['accuracy']:.3f} after {epochs} epochs"
    assert history.records[-1]["loss"] < 0.5 * history.records[0]["loss"]


class _StopAt(Callback):
    """Stop once the eval-mode accuracy on the training images reaches ``target``."""

    def __init__(self, target: float, x, y) -> None:
        super().__init__()
        self.target, self.data = target, ArrayBatches(x, y, batch_size=256, shuffle=False)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.model.evaluate(self.data)["accuracy"] >= self.target:
            self.model.stop_training = True
