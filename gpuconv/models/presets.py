"""Model presets: named constructors of ready-to-train CIFAR-10 networks (``gpuconv.models.build_preset``).

Every preset takes 3x32x32 images and returns a :class:`gpuconv.Sequential`
producing ``num_classes`` logits (train with softmax cross-entropy).

- ``seed-cnn`` (default): three conv blocks (32/64/128 channels, 3x3 'same',
  BatchNorm, ReLU, 2x2 max pooling, channel dropout 0.3), then a
  2048-512-256-``num_classes`` MLP with BatchNorm, ReLU and dropout 0.5.
- ``tiny-cnn``: two small conv layers (16, 32 channels) and one Dense layer;
  fast enough to train on a laptop CPU in minutes.
- ``resnet-small``: a conv stem and three residual blocks (32, 64, 128
  channels; stride-2 downsampling with 1x1 conv + BatchNorm shortcuts), global
  average pooling and one Dense layer.
- ``airbench``: Keller Jordan's airbench94 network (94 % on CIFAR-10 in 10
  epochs with its recipe, :mod:`gpuconv.recipes.airbench`): a frozen 2x2
  whitening convolution, three conv groups (64/256/256 channels times
  ``width``) of conv-pool-BN-GELU-conv-BN-GELU and a scaled linear head.
"""
from __future__ import annotations

from typing import Callable

from ..layers import (GELU, BatchNorm1d, BatchNorm2d, Conv2D, Dense, Dropout, Dropout2d,
                      Flatten, GlobalAvgPool2D, Layer, MaxPool2D, Multiply, ReLU, Residual)
from ..layers.init import Dirac, FanInUniform
from .sequential import Sequential

__all__ = ["PRESETS", "PRESET_HELP", "PRESET_HELP_NOTE", "DEFAULT_PRESET", "INPUT_SHAPE",
           "build_preset", "seed_cnn", "tiny_cnn", "resnet_small", "airbench", "AIRBENCH_WIDTHS",
           "airbench_widths"]

INPUT_SHAPE: tuple[int, int, int] = (3, 32, 32)
"""The input shape (C, H, W) every preset expects."""


def seed_cnn(num_classes: int = 10) -> Sequential:
    """The seed CNN: 3 x [conv3x3 same, BN, ReLU, maxpool 2, Dropout2d 0.3] + MLP head."""
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
    return Sequential(layers)


def tiny_cnn(num_classes: int = 10) -> Sequential:
    """A small fast CNN: conv 3->16, ReLU, pool, conv 16->32, ReLU, pool, Dense 2048->K."""
    return Sequential([
        Conv2D(3, 16, 3, padding="same"), ReLU(), MaxPool2D(2),
        Conv2D(16, 32, 3, padding="same"), ReLU(), MaxPool2D(2),
        Flatten(), Dense(32 * 8 * 8, num_classes),
    ])


def _res_block(in_channels: int, out_channels: int, stride: int) -> Residual:
    """Two 3x3 conv + BN (ReLU between); 1x1 strided conv + BN shortcut when the shape changes."""
    body = [Conv2D(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            BatchNorm2d(out_channels), ReLU(),
            Conv2D(out_channels, out_channels, 3, padding=1, bias=False),
            BatchNorm2d(out_channels)]
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = [Conv2D(in_channels, out_channels, 1, stride=stride, bias=False),
                    BatchNorm2d(out_channels)]
    return Residual(body, shortcut)


def resnet_small(num_classes: int = 10) -> Sequential:
    """Stem conv 3->32 + BN + ReLU, residual blocks at 32/64/128 channels (the last two
    downsample by 2), global average pooling, Dense 128->K."""
    layers: list[Layer] = [Conv2D(3, 32, 3, padding=1, bias=False), BatchNorm2d(32), ReLU()]
    in_channels = 32
    for channels, stride in ((32, 1), (64, 2), (128, 2)):
        layers += [_res_block(in_channels, channels, stride), ReLU()]
        in_channels = channels
    layers += [GlobalAvgPool2D(), Dense(128, num_classes)]
    return Sequential(layers)


AIRBENCH_WIDTHS = (64, 256, 256)


def airbench_widths(width: float) -> tuple[int, int, int]:
    """The three conv-group widths of :func:`airbench` for multiplier ``width``."""
    if not (isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0):
        raise ValueError(f"airbench: width must be a positive number, got {width!r}")
    return tuple(max(1, round(w * width)) for w in AIRBENCH_WIDTHS)  # type: ignore[return-value]


def _airbench_norm(channels: int) -> BatchNorm2d:
    # airbench: eps 1e-12, running-stat momentum 0.4 (its 0.6 in the EMA convention),
    # the scale fixed at 1 and only the shift trained
    return BatchNorm2d(channels, eps=1e-12, momentum=0.4).freeze("weight")


def _airbench_conv(in_channels: int, out_channels: int) -> Conv2D:
    # PyTorch's default init, then identity filters for the first in_channels outputs
    return Conv2D(in_channels, out_channels, 3, padding="same", bias=False,
                  weight_init=Dirac(FanInUniform()))


def airbench(num_classes: int = 10, width: float = 1.0) -> Sequential:
    """airbench94's network for 3x32x32 inputs, conv-group widths 64/256/256 x ``width``.

    Layer 0 is the 2x2 whitening convolution (3 -> 24 channels, no padding, with
    bias): its weight is frozen and meant to be set from the training data
    (:func:`gpuconv.init.patch_whitening`; :mod:`gpuconv.recipes.airbench` does
    it). Output: ``num_classes`` logits, already multiplied by 1/9.
    """
    widths = airbench_widths(width)
    whiten = Conv2D(3, 24, 2, padding=0, bias=True, weight_init=Dirac(FanInUniform()))
    layers: list[Layer] = [whiten.freeze("weight"), GELU()]
    in_channels = 24
    for channels in widths:
        layers += [_airbench_conv(in_channels, channels), MaxPool2D(2), _airbench_norm(channels),
                   GELU(), _airbench_conv(channels, channels), _airbench_norm(channels), GELU()]
        in_channels = channels
    layers += [MaxPool2D(3), Flatten(),
               Dense(in_channels, num_classes, bias=False, weight_init=FanInUniform()),
               Multiply(1 / 9)]
    return Sequential(layers)


PRESETS: dict[str, Callable[..., Sequential]] = {
    "seed-cnn": seed_cnn,
    "tiny-cnn": tiny_cnn,
    "resnet-small": resnet_small,
    "airbench": airbench,
}
WIDTH_PRESETS = ("airbench",)  # presets that take a width multiplier
DEFAULT_PRESET = "seed-cnn"

# ---- one line of help per preset --------------------------------------------------------
# Shown by ``gpuconv train --help``. Each line gives the size, the CIFAR-10 test accuracy
# reached and the time per epoch on a CPU -- measured figures only; write "not measured"
# for what nobody has measured. A new preset adds its line here (tests/test_output_width.py
# checks that every preset has one, with its true parameter count, and that it fits).
PRESET_HELP: dict[str, str] = {
    # docs/cifar10-seed-cnn-45ep: 75.05 % test after 45 cosine epochs (median epoch 134 s
    # at that commit). Epoch times of seed-cnn, tiny-cnn and resnet-small: commit f3a67dd,
    # GPUCONV_NUM_THREADS=1 on the 2-core VM while other jobs ran (load average 3):
    # `gpuconv train --epochs 1 --model M` took 85 s (seed-cnn) and 22 s (tiny-cnn) for
    # 45,000 + 5,000 images; resnet-small trained 144 images/s (--limit 9000), 45,000 in
    # ~5.2 min + 11 s of validation
    "seed-cnn": "1.28M params; 75% test acc. after 45 epochs; ~85 s/epoch",
    # `gpuconv train --model tiny-cnn --epochs 10` (defaults otherwise), same machine:
    # 65.92 % test, epochs of 21-25 s
    "tiny-cnn": "25.6k params; 66% test acc. after 10 epochs; ~22 s/epoch",
    "resnet-small": "309k params; accuracy not measured; ~5.5 min/epoch",
    # docs/cifar10-airbench: --recipe airbench (its own recipe: 50,000 images, batch 1024),
    # 90.53 % with TTA after 9.9 epochs, epochs 3-10 of 219-291 s, median 266 s (c4c3389);
    # width 0.5 (docs/cifar10-airbench-cpu): 88.53 %, 1356 s of training (33f3092)
    "airbench": "1.97M params; recipe: 90.5% test after 10 epochs; ~270 s/epoch",
}
PRESET_HELP_NOTE = ("per epoch: 45,000 training + 5,000 validation images, batch 128 "
                    "(airbench: its recipe's 50,000 at batch 1024), on a 2-core Xeon VM "
                    "like that of docs/bench-cpu.json")


def build_preset(name: str, num_classes: int = 10, dtype: str = "float32",
                 width: float = 1.0) -> Sequential:
    """Build preset ``name`` (see :data:`PRESETS`) with parameters in ``dtype`` (on the CPU).

    ``width`` multiplies the channel counts of presets that have one
    (``airbench``); other presets accept only 1.0."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PRESETS)}") from None
    if name in WIDTH_PRESETS:
        model = factory(num_classes, width=width)
    elif width != 1.0:
        raise ValueError(f"model {name!r} has no width multiplier (only {', '.join(WIDTH_PRESETS)}"
                         f" has one), got width {width!r}")
    else:
        model = factory(num_classes)
    if str(dtype) != "float32":
        model.astype(dtype)
    return model
