"""Trainable models: :class:`Sequential` (fit/evaluate/predict/summary/save),
:func:`load_model`, and the CIFAR-10 presets (``build_preset("seed-cnn")``,
:data:`PRESETS`)."""
from .presets import DEFAULT_PRESET, INPUT_SHAPE, PRESETS, build_preset, resnet_small, seed_cnn, \
    tiny_cnn
from .sequential import Sequential
from .serialization import build_model, load_model, model_from_arrays

__all__ = ["Sequential", "load_model", "build_model", "model_from_arrays", "PRESETS",
           "DEFAULT_PRESET", "INPUT_SHAPE", "build_preset", "seed_cnn", "tiny_cnn", "resnet_small"]
