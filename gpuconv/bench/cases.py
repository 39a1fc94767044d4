"""Benchmarked backends and their cases; the gpuconv side (NumPy and CuPy).

A :class:`Backend` is one implementation on one device ("gpuconv-numpy" on
the CPU, "torch-cuda", ...). ``build(workload, inputs)`` returns a
:class:`Case`: a zero-argument ``step`` that runs one repetition of the
workload on device-resident data, plus the timer that times it. The PyTorch
reference (``benchmarks/torch_reference.py``) returns the same objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy

from ..backend import get_device, seed, to_device
from ..layers import no_grad
from ..amp import GradScaler, enable_mixed_precision, scaled_backward_step
from ..losses import SoftmaxCrossEntropy
from ..optim import Adam
from ..io.spec import MODEL_FORMAT, MODEL_VERSION
from ..models import build_model
from .timing import (CpuTimer, CupyUsedBytesProbe, MemoryProbe, NullProbe, Timer,
                     TracemallocProbe, cupy_event_timer)
from .workloads import Workload

__all__ = ["Case", "Backend", "gpuconv_backend", "build_gpuconv_case", "LEARNING_RATE"]

LEARNING_RATE = 1e-3  # Adam's lr in train mode (both frameworks)


@dataclass
class Case:
    """One workload at one batch size, ready to run: ``timer.measure(step)`` -> seconds."""

    step: Callable[[], Any]
    timer: Timer
    state: dict = field(default_factory=dict)  # keeps models/arrays alive; for inspection


@dataclass
class Backend:
    """One benchmarked implementation on one device."""

    name: str  # e.g. "gpuconv-numpy", "torch-cpu"
    framework: str  # "gpuconv" or "torch"
    device: str  # "cpu" or "cuda"
    build: Callable[[Workload, dict[str, numpy.ndarray]], Case]
    memory_probe: Callable[[], MemoryProbe] = NullProbe


def _step_function(workload: Workload, model: Any, arrays: dict[str, Any],
                   after_backward: Callable[[], Any] | None = None) -> Callable[[], Any]:
    x = arrays["x"]
    if workload.mode == "eval":  # like torch.inference_mode in the reference
        model.eval()

        def infer() -> Any:
            with no_grad():
                return model.forward(x)
        return infer
    model.train()
    if workload.mode == "fwd":
        return lambda: model.forward(x)
    if workload.mode == "fwdbwd":
        dy = arrays["dy"]

        def forward_backward() -> Any:
            model.forward(x)
            return model.backward(dy)
        return forward_backward
    labels = arrays["labels"]
    loss = SoftmaxCrossEntropy()
    optimizer = Adam(model.parameters(), lr=LEARNING_RATE)
    if workload.mode == "train-amp":  # as fit(amp=True)
        enable_mixed_precision(model, "float16")
        scaler = GradScaler()
        params = model.parameters()
        master_dtype = params[0].data.dtype

        def amp_train_step() -> Any:
            optimizer.zero_grad()
            pred = model.forward(x)
            loss.forward(pred.astype(master_dtype), labels)  # the loss in float32
            scaled_backward_step(model, optimizer, loss, pred, scaler, params)
        return amp_train_step

    def train_step() -> Any:
        optimizer.zero_grad()
        loss.forward(model.forward(x), labels)
        model.backward_params(loss.backward())  # as fit(): no input gradient
        if after_backward is not None:
            after_backward()
        optimizer.step()
    return train_step


def build_gpuconv_case(workload: Workload, inputs: dict[str, numpy.ndarray], device: str,
                       timer: Timer, dtype: str = "float32",
                       gradient_hook: Callable[[Any], Callable[[], Any]] | None = None) -> Case:
    """Build the workload's layers with gpuconv on ``device`` and copy the inputs there.

    ``gradient_hook(model)``, in ``train`` mode, returns a call that the step makes
    between the backward pass and the optimizer step (the gradient allreduce of
    ``gpuconv bench --nproc``)."""
    seed(0)
    model = build_model({"format": MODEL_FORMAT, "version": MODEL_VERSION, "dtype": dtype,
                         "layers": workload.layers}, where=f"workload {workload.name}")
    model.to(device)
    # own copies, so the memory probe counts the inputs on every device alike
    arrays = {k: to_device(numpy.array(v, copy=True), device) for k, v in inputs.items()}
    after_backward = None if gradient_hook is None else gradient_hook(model)
    return Case(_step_function(workload, model, arrays, after_backward), timer,
                {"model": model, **arrays})


def gpuconv_backend(device: str, dtype: str = "float32") -> Backend:
    """gpuconv on the CPU ("gpuconv-numpy") or on CUDA ("gpuconv-cupy")."""
    if device == "cpu":
        return Backend("gpuconv-numpy", "gpuconv", "cpu",
                       lambda w, inputs: build_gpuconv_case(w, inputs, "cpu", CpuTimer(), dtype),
                       TracemallocProbe)
    if device != "cuda":
        raise ValueError(f"unknown benchmark device {device!r}; expected 'cpu' or 'cuda'")
    cupy = get_device("cuda").xp
    return Backend("gpuconv-cupy", "gpuconv", "cuda",
                   lambda w, inputs: build_gpuconv_case(w, inputs, "cuda",
                                                        cupy_event_timer(cupy), dtype),
                   lambda: CupyUsedBytesProbe(cupy))
