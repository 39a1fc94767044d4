"""What is benchmarked: framework-neutral workload descriptions and their inputs.

A :class:`Workload` is a list of gpuconv layer specs (``{"type", "config"}``,
see :func:`gpuconv.io.spec.layer_spec`), a per-sample input
shape and a mode. gpuconv builds the layers from the specs with its own
registry, the PyTorch reference translates the same specs to ``torch.nn``,
and both receive the same host inputs from :func:`make_inputs`, so the two
sides always run identical shapes in identical precision.

Modes:

- ``fwd``: forward in training mode (what a training step's forward costs);
- ``fwdbwd``: forward, then backward of a fixed upstream gradient ``dy``
  (input and parameter gradients);
- ``train``: one full training step: zero grads, forward,
  softmax cross-entropy, backward, Adam update;
- ``train-amp``: the training step in float16 mixed precision (gpuconv's
  ``--amp``: float16 compute, float32 master weights, dynamic loss scaling;
  the reference: ``torch.autocast`` + ``torch.amp.GradScaler``). CUDA only:
  NumPy has no float16 BLAS;
- ``eval``: inference forward in eval mode.

A workload may be limited to some devices (``devices``); a run whose devices
are all excluded leaves it out with a note.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy

from .presets import AIRBENCH, SEED_CNN, SEED_CNN_INPUT, preset_specs, seed_cnn_specs
from .stats import conv2d_flops, conv2d_output_size

__all__ = ["MODES", "Workload", "conv_workloads", "layer_workloads", "model_workloads",
           "all_workloads", "select", "make_inputs", "runs_on", "NUM_CLASSES", "TRAIN_MODES"]

MODES = ("fwd", "fwdbwd", "train", "train-amp", "eval")
TRAIN_MODES = ("train", "train-amp")
NUM_CLASSES = 10


@dataclass(frozen=True)
class Workload:
    """One benchmarked computation (the batch size is chosen per run)."""

    name: str
    group: str  # "layer" or "model"
    mode: str
    layers: list = field(compare=False)  # gpuconv layer specs, applied in order
    input_shape: tuple[int, ...]  # one sample, without the batch axis
    output_shape: tuple[int, ...] | None = None  # one sample (needed for fwdbwd's dy)
    flops_per_sample: int | None = None  # floating-point ops per sample (conv rows)
    num_classes: int | None = None  # train modes: label range
    description: str = ""
    source: str = "gpuconv.bench.workloads"
    devices: tuple[str, ...] | None = None  # the devices it runs on (None: all)
    batch_sizes: tuple[int, ...] | None = None  # its own batch sizes (None: the run's)
    max_reps: int | None = None  # at most this many timed repetitions (long steps)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"workload {self.name!r}: mode must be one of {MODES}, "
                             f"got {self.mode!r}")
        if self.mode == "fwdbwd" and self.output_shape is None:
            raise ValueError(f"workload {self.name!r}: fwdbwd needs output_shape")
        if self.mode in TRAIN_MODES and not self.num_classes:
            raise ValueError(f"workload {self.name!r}: {self.mode} needs num_classes")

    def flops(self, batch: int) -> int | None:
        """Floating-point operations of one repetition at ``batch`` (None if not counted)."""
        return None if self.flops_per_sample is None else self.flops_per_sample * batch

    def to_json(self) -> dict:
        return {"name": self.name, "group": self.group, "mode": self.mode,
                "input_shape": list(self.input_shape),
                "output_shape": None if self.output_shape is None else list(self.output_shape),
                "flops_per_sample": self.flops_per_sample, "description": self.description,
                "source": self.source, "devices": None if self.devices is None else
                list(self.devices), "batch_sizes": None if self.batch_sizes is None else
                list(self.batch_sizes), "max_reps": self.max_reps, "layers": self.layers}


# ---- per-layer workloads ---------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    in_channels: int
    out_channels: int
    size: int  # square input H = W
    kernel: int
    stride: int
    padding: "int | str"  # "same" (stride 1, like the seed CNN) or an int
    origin: str  # which preset layer this shape is

    def pad(self) -> int:
        return (self.kernel - 1) // 2 if self.padding == "same" else int(self.padding)

    def out_size(self) -> int:
        return conv2d_output_size(self.size, self.kernel, self.stride, self.pad())


# The seed CNN's three convolutions on CIFAR-10, and the ResNet preset's
# downsampling pair: a stride-2 3x3 conv and its 1x1 stride-2 shortcut.
FULL_CONVS = (
    ConvShape(3, 32, 32, 3, 1, "same", "seed-cnn conv1"),
    ConvShape(32, 64, 16, 3, 1, "same", "seed-cnn conv2"),
    ConvShape(64, 128, 8, 3, 1, "same", "seed-cnn conv3"),
    ConvShape(32, 64, 32, 3, 2, 1, "resnet-small stride-2 conv"),
    ConvShape(32, 64, 32, 1, 2, 0, "resnet-small 1x1 shortcut"),
)
# --tiny: the same layer kinds at a quarter of the size (CI smoke test)
TINY_CONVS = (
    ConvShape(3, 8, 8, 3, 1, "same", "seed-cnn conv1 (tiny)"),
    ConvShape(8, 16, 4, 3, 1, "same", "seed-cnn conv2 (tiny)"),
    ConvShape(16, 32, 2, 3, 1, "same", "seed-cnn conv3 (tiny)"),
    ConvShape(8, 16, 8, 3, 2, 1, "resnet-small stride-2 conv (tiny)"),
    ConvShape(8, 16, 8, 1, 2, 0, "resnet-small 1x1 shortcut (tiny)"),
)


def _conv_spec(s: ConvShape) -> dict:
    return {"type": "Conv2D", "config": {"in_channels": s.in_channels,
                                         "out_channels": s.out_channels,
                                         "kernel_size": [s.kernel, s.kernel],
                                         "stride": [s.stride, s.stride], "padding": s.padding}}


def conv_workloads(tiny: bool = False) -> list[Workload]:
    """Conv2D forward and forward+backward at the seed CNN's and ResNet's shapes."""
    out = []
    for s in TINY_CONVS if tiny else FULL_CONVS:
        o = s.out_size()
        base = (f"conv{s.kernel}x{s.kernel}s{s.stride}_{s.in_channels}-{s.out_channels}"
                f"_{s.size}px")
        for mode in ("fwd", "fwdbwd"):
            flops = conv2d_flops(1, s.in_channels, s.out_channels, (s.kernel, s.kernel), (o, o),
                                 backward=mode == "fwdbwd")
            out.append(Workload(
                name=f"{base}:{mode}", group="layer", mode=mode, layers=[_conv_spec(s)],
                input_shape=(s.in_channels, s.size, s.size),
                output_shape=(s.out_channels, o, o), flops_per_sample=flops,
                description=f"Conv2D {s.in_channels}->{s.out_channels} {s.kernel}x{s.kernel} "
                            f"stride {s.stride} padding {s.padding!r} on {s.size}x{s.size} "
                            f"({s.origin})"))
    return out


def layer_workloads(tiny: bool = False) -> list[Workload]:
    """Conv rows plus MaxPool2D(2), BatchNorm2d (train) and Dense, forward+backward."""
    c, size = (8, 8) if tiny else (32, 32)
    f_in, f_out = (128, 32) if tiny else (2048, 512)
    pool = [{"type": "MaxPool2D", "config": {"kernel_size": [2, 2]}}]
    out = conv_workloads(tiny)
    for mode in ("fwd", "fwdbwd"):
        out.append(Workload(name=f"maxpool2_{c}c_{size}px:{mode}", group="layer", mode=mode,
                            layers=pool, input_shape=(c, size, size),
                            output_shape=(c, size // 2, size // 2),
                            description=f"MaxPool2D(2) on (N, {c}, {size}, {size})"))
    out.append(Workload(name=f"bn2d_{c}c_{size}px:fwdbwd", group="layer", mode="fwdbwd",
                        layers=[{"type": "BatchNorm2d", "config": {"num_features": c}}],
                        input_shape=(c, size, size), output_shape=(c, size, size),
                        description=f"BatchNorm2d({c}) in training mode on "
                                    f"(N, {c}, {size}, {size})"))
    out.append(Workload(name=f"dense_{f_in}-{f_out}:fwdbwd", group="layer", mode="fwdbwd",
                        layers=[{"type": "Dense", "config": {"in_features": f_in,
                                                             "out_features": f_out}}],
                        input_shape=(f_in,), output_shape=(f_out,),
                        description=f"Dense {f_in}->{f_out}"))
    return out


def model_workloads() -> list[Workload]:
    """The seed CNN: one training step (loss + backward + Adam), the same step in mixed
    precision (CUDA only), and eval inference."""
    specs, source = seed_cnn_specs(NUM_CLASSES)
    return [
        Workload(name=f"{SEED_CNN}:train", group="model", mode="train", layers=specs,
                 input_shape=SEED_CNN_INPUT, num_classes=NUM_CLASSES, source=source,
                 description="seed CNN training step: forward, softmax cross-entropy, "
                             "backward, Adam"),
        Workload(name=f"{SEED_CNN}:train-amp", group="model", mode="train-amp", layers=specs,
                 input_shape=SEED_CNN_INPUT, num_classes=NUM_CLASSES, source=source,
                 devices=("cuda",),
                 description="seed CNN training step in float16 mixed precision (float32 "
                             "master weights, dynamic loss scaling); CUDA only"),
        Workload(name=f"{SEED_CNN}:eval", group="model", mode="eval", layers=specs,
                 input_shape=SEED_CNN_INPUT, source=source,
                 description="seed CNN inference: forward in eval mode"),
        *airbench_workloads(),
    ]


AIRBENCH_WIDTHS = (1.0, 0.5)  # the published network and the width of the CPU run
AIRBENCH_BATCHES = (256, 1024)  # airbench trains at 1024


def airbench_workloads() -> list[Workload]:
    """The airbench94 network (``--recipe airbench``) at full and half width: one
    training step at batch 256 and 1024 (the generic train step: softmax cross-entropy
    and Adam; airbench's own Nesterov SGD costs the same few elementwise passes)."""
    out = []
    for width in AIRBENCH_WIDTHS:
        specs, source = preset_specs(AIRBENCH, NUM_CLASSES, width=width)
        out.append(Workload(
            name=f"{AIRBENCH}-w{width:g}:train", group="model", mode="train", layers=specs,
            input_shape=SEED_CNN_INPUT, num_classes=NUM_CLASSES, source=source,
            batch_sizes=AIRBENCH_BATCHES, max_reps=3,
            description=f"airbench94 network at width {width:g} (GELU, frozen whitening "
                        "conv, BatchNorm shifts only): training step at its own batch "
                        "sizes 256 and 1024, at most 3 repetitions"))
    return out


def all_workloads(tiny: bool = False) -> list[Workload]:
    """Every workload: per-layer rows first, then the end-to-end ones.

    ``tiny`` shrinks the per-layer shapes; the seed CNN keeps its CIFAR-10
    shape (only the batch size makes it small); the airbench rows, which run at
    their own large batches, are left out.
    """
    models = model_workloads()
    if tiny:
        models = [w for w in models if w.batch_sizes is None]
    return layer_workloads(tiny) + models


def select(workloads: Sequence[Workload], patterns: Iterable[str] | None) -> list[Workload]:
    """Workloads whose name matches any pattern (a glob if it has ``*?[``, else a substring).

    No patterns selects everything; a pattern matching nothing raises ValueError
    listing the names.
    """
    patterns = [p.strip() for p in (patterns or []) if p.strip()]
    if not patterns:
        return list(workloads)

    def matches(pattern: str, name: str) -> bool:
        if any(ch in pattern for ch in "*?["):
            return fnmatch.fnmatchcase(name, pattern)
        return pattern in name

    for p in patterns:
        if not any(matches(p, w.name) for w in workloads):
            names = ", ".join(w.name for w in workloads)
            raise ValueError(f"--workloads: {p!r} matches no workload; names are: {names}")
    return [w for w in workloads if any(matches(p, w.name) for p in patterns)]


def make_inputs(workload: Workload, batch: int, dtype: str = "float32",
                seed: int = 0) -> dict[str, numpy.ndarray]:
    """Host inputs of one case: ``x``; ``dy`` (fwdbwd); ``labels`` int64 (train)."""
    rng = numpy.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((batch,) + tuple(workload.input_shape)).astype(dtype)}
    if workload.mode == "fwdbwd":
        inputs["dy"] = rng.standard_normal((batch,) + tuple(workload.output_shape)).astype(dtype)
    if workload.mode in TRAIN_MODES:
        inputs["labels"] = rng.integers(0, workload.num_classes, batch).astype(numpy.int64)
    return inputs


def runs_on(workload: Workload, device: str) -> bool:
    """Whether ``workload`` is measured on ``device`` ("cpu" or "cuda")."""
    return workload.devices is None or device in workload.devices
