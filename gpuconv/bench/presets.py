"""The seed CNN the end-to-end workloads train: the CLI's ``seed-cnn`` preset.

The architecture comes from :func:`gpuconv.cli.presets.build_preset` when the
CLI is installed (so the benchmark always measures what ``gpuconv train``
trains); otherwise from :func:`fallback_seed_cnn`, a copy of that preset's
layer list. Either way it is returned as JSON layer specs
(:func:`gpuconv.training.serialization.layer_spec`), which both gpuconv and
the PyTorch reference build from.
"""
from __future__ import annotations

from ..layers import (BatchNorm1d, BatchNorm2d, Conv2D, Dense, Dropout, Dropout2d, Flatten,
                      Layer, MaxPool2D, ReLU)
from ..training.serialization import layer_spec

__all__ = ["SEED_CNN", "SEED_CNN_INPUT", "fallback_seed_cnn", "seed_cnn_specs"]

SEED_CNN = "seed-cnn"
SEED_CNN_INPUT: tuple[int, int, int] = (3, 32, 32)


def fallback_seed_cnn(num_classes: int = 10) -> list[Layer]:
    """The ``seed-cnn`` preset's layers, for installs without ``gpuconv.cli``."""
    layers: list[Layer] = []
    in_channels = 3
    for channels in (32, 64, 128):
        layers += [Conv2D(in_channels, channels, 3, padding="same"), BatchNorm2d(channels),
                   ReLU(), MaxPool2D(2), Dropout2d(0.3)]
        in_channels = channels
    layers += [Flatten(),
               Dense(128 * 4 * 4, 512), BatchNorm1d(512), ReLU(), Dropout(0.5),
               Dense(512, 256), BatchNorm1d(256), ReLU(), Dropout(0.5),
               Dense(256, num_classes)]
    return layers


def seed_cnn_specs(num_classes: int = 10) -> tuple[list[dict], str]:
    """``(layer specs, source)`` of the seed CNN; ``source`` names where it came from."""
    try:
        from ..cli.presets import build_preset  # noqa: PLC0415 - optional sibling package
    except ImportError:
        layers, source = fallback_seed_cnn(num_classes), "gpuconv.bench.presets (fallback)"
    else:
        layers, source = list(build_preset(SEED_CNN, num_classes)), "gpuconv.cli.presets"
    return [layer_spec(layer) for layer in layers], source
