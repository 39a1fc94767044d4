"""The networks the end-to-end workloads train: the CLI's ``seed-cnn`` and ``airbench`` presets.

The architecture comes from :func:`gpuconv.models.presets.build_preset` (the CLI
is part of every install, and bench and cli are peers), so the benchmark
always measures what ``gpuconv train`` trains. It is returned as JSON layer
specs (:func:`gpuconv.io.spec.layer_spec`), which both
gpuconv and the PyTorch reference build from.
"""
from __future__ import annotations

from ..models.presets import INPUT_SHAPE, build_preset
from ..io.spec import layer_spec

__all__ = ["SEED_CNN", "SEED_CNN_INPUT", "seed_cnn_specs", "AIRBENCH", "preset_specs"]

SEED_CNN = "seed-cnn"
SEED_CNN_INPUT: tuple[int, int, int] = INPUT_SHAPE
AIRBENCH = "airbench"


def seed_cnn_specs(num_classes: int = 10) -> tuple[list[dict], str]:
    """``(layer specs, source)`` of the seed CNN; ``source`` names where it came from."""
    return preset_specs(SEED_CNN, num_classes)


def preset_specs(name: str, num_classes: int = 10, width: float = 1.0) -> tuple[list[dict], str]:
    """``(layer specs, source)`` of preset ``name`` (``width`` for airbench)."""
    layers = list(build_preset(name, num_classes, width=width))
    return [layer_spec(layer) for layer in layers], "gpuconv.models.presets"
