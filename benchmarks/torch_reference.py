"""PyTorch reference for ``gpuconv bench``: the same workloads in ``torch.nn``.

This file is deliberately *outside* the gpuconv package (gpuconv never
imports a deep-learning library); ``gpuconv bench`` loads it by path (see
:mod:`gpuconv.bench.reference`). It translates each workload's gpuconv layer
specs (``{"type": "Conv2D", "config": {...}}``) into the equivalent
``torch.nn`` modules with the same shapes and dtype, feeds them the very same
host inputs, and times them with the same timers (:mod:`gpuconv.bench.timing`):
``perf_counter`` on the CPU, CUDA events on the GPU.

Modes mirror gpuconv's (see :mod:`gpuconv.bench.workloads`): ``fwd`` runs a
training-mode forward with autograd recording (what gpuconv's forward, which
caches for backward, corresponds to); ``fwdbwd`` also back-propagates the
fixed ``dy`` (the input requires grad, as gpuconv always computes dx);
``train`` is zero_grad + forward + ``cross_entropy`` + backward +
``torch.optim.Adam`` (defaults, lr 1e-3); ``train-amp`` the same step under
``torch.autocast(float16)`` with ``torch.amp.GradScaler``; ``eval`` runs
``model.eval()`` under ``torch.inference_mode()``.

Precision: float32 GEMMs and convolutions run in full float32 (TF32 off)
unless ``CUPY_TF32=1`` is set, in which case TF32 is allowed in PyTorch too,
so both frameworks use the same precision. cuDNN autotuning
(``cudnn.benchmark``) is left at PyTorch's default.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy
import torch

from gpuconv.bench.cases import LEARNING_RATE, Backend, Case
from gpuconv.bench.timing import CpuTimer, EventTimer, NullProbe
from gpuconv.bench.workloads import Workload

__all__ = ["make_backend", "info", "build_module", "TorchCudaProbe"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TF32 = os.environ.get("CUPY_TF32", "0") not in ("", "0")


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """gpuconv's 'same' rule: ceil(size / stride) outputs, odd pixel after (TensorFlow's)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


class _SamePad2d(torch.nn.Module):
    """gpuconv's 'same' padding for strided convolutions (computed from the input size)."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation = kernel, stride, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[2], self.kernel[0], self.stride[0], self.dilation[0])
        left, right = _same_padding(x.shape[3], self.kernel[1], self.stride[1], self.dilation[1])
        return torch.nn.functional.pad(x, (left, right, top, bottom))


class _Multiply(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _GlobalAvgPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _Residual(torch.nn.Module):
    def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _conv(c: dict, dtype: torch.dtype) -> torch.nn.Module:
    kernel, stride = _pair(c["kernel_size"]), _pair(c.get("stride", 1))
    dilation = _pair(c.get("dilation", 1))
    padding = c.get("padding", 0)
    pad_module = None
    if padding == "valid":
        padding = 0
    elif padding == "same":
        if stride != (1, 1):  # torch's 'same' is stride-1 only; pad explicitly like gpuconv
            pad_module, padding = _SamePad2d(kernel, stride, dilation), 0
    else:
        padding = _pair(padding)
    conv = torch.nn.Conv2d(c["in_channels"], c["out_channels"], kernel, stride=stride,
                           padding=padding, dilation=dilation, bias=c.get("bias", True),
                           dtype=dtype)
    return conv if pad_module is None else torch.nn.Sequential(pad_module, conv)


def _pool(cls: type, c: dict) -> torch.nn.Module:
    kernel = _pair(c["kernel_size"])
    stride = _pair(c["stride"]) if c.get("stride") is not None else kernel
    return cls(kernel, stride, _pair(c.get("padding", 0)))


def build_module(spec: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The ``torch.nn`` module of one gpuconv layer spec (containers recursively)."""
    kind, c = spec["type"], spec.get("config", {})
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "Conv2D": lambda: _conv(c, dtype),
        "Dense": lambda: torch.nn.Linear(c["in_features"], c["out_features"],
                                         bias=c.get("bias", True), dtype=dtype),
        "BatchNorm2d": lambda: torch.nn.BatchNorm2d(c["num_features"], c.get("eps", 1e-5),
                                                    c.get("momentum", 0.1), dtype=dtype),
        "BatchNorm1d": lambda: torch.nn.BatchNorm1d(c["num_features"], c.get("eps", 1e-5),
                                                    c.get("momentum", 0.1), dtype=dtype),
        "ReLU": torch.nn.ReLU,
        "GELU": lambda: torch.nn.GELU(approximate=c.get("approximate", "none")),
        "Multiply": lambda: _Multiply(c["scale"]),
        "LeakyReLU": lambda: torch.nn.LeakyReLU(c.get("negative_slope", 0.01)),
        "Sigmoid": torch.nn.Sigmoid,
        "Tanh": torch.nn.Tanh,
        "Softmax": lambda: torch.nn.Softmax(dim=c.get("axis", -1)),
        "MaxPool2D": lambda: _pool(torch.nn.MaxPool2d, c),
        "AvgPool2D": lambda: _pool(torch.nn.AvgPool2d, c),
        "GlobalAvgPool2D": _GlobalAvgPool,
        "Flatten": torch.nn.Flatten,
        "Dropout": lambda: torch.nn.Dropout(c.get("p", 0.5)),
        "Dropout2d": lambda: torch.nn.Dropout2d(c.get("p", 0.5)),
        "Sequential": lambda: build_sequential(c.get("layers", []), dtype),
        "Residual": lambda: _Residual(build_sequential(c.get("body", []), dtype),
                                      build_sequential(c.get("shortcut", []), dtype)),
    }
    if kind not in builders:
        raise NotImplementedError(f"torch reference: no translation for gpuconv layer {kind!r}")
    module = builders[kind]()
    for name in spec.get("frozen", []):  # gpuconv's frozen parameters train neither here
        module.get_parameter(name).requires_grad_(False)
    return module


def build_sequential(specs: list, dtype: torch.dtype) -> torch.nn.Sequential:
    """``torch.nn.Sequential`` of a list of gpuconv layer specs (empty: the identity)."""
    return torch.nn.Sequential(*[build_module(s, dtype) for s in specs])


def _step_function(workload: Workload, model: torch.nn.Module,
                   arrays: dict[str, torch.Tensor]) -> Callable[[], Any]:
    x = arrays["x"]
    if workload.mode == "eval":
        model.eval()

        def infer() -> Any:
            with torch.inference_mode():
                return model(x)
        return infer
    model.train()
    if workload.mode == "fwd":
        return lambda: model(x)
    if workload.mode == "fwdbwd":
        x.requires_grad_(True)  # gpuconv always computes dx
        dy = arrays["dy"]

        def forward_backward() -> Any:
            x.grad = None  # dx is written fresh, as gpuconv returns it (no accumulation)
            model(x).backward(dy)
        return forward_backward
    labels = arrays["labels"]
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    if workload.mode == "train-amp":  # PyTorch's recipe: autocast + GradScaler
        device_type = x.device.type
        scaler = torch.amp.GradScaler(device_type)

        def amp_train_step() -> Any:
            optimizer.zero_grad()
            with torch.autocast(device_type, dtype=torch.float16):
                logits = model(x)
            scaler.scale(torch.nn.functional.cross_entropy(logits.float(), labels)).backward()
            scaler.step(optimizer)
            scaler.update()
        return amp_train_step

    def train_step() -> Any:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
    return train_step


class TorchCudaProbe:
    """Peak bytes of PyTorch's CUDA caching allocator (``max_memory_allocated``) above
    what was allocated at ``start``."""

    method = "torch.cuda.max_memory_allocated"

    def __init__(self) -> None:
        self._base = 0

    def start(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self._base = torch.cuda.memory_allocated()

    def stop(self) -> int | None:
        torch.cuda.synchronize()
        return max(int(torch.cuda.max_memory_allocated()) - self._base, 0)


def _cuda_timer() -> EventTimer:
    return EventTimer(lambda: torch.cuda.Event(enable_timing=True),
                      lambda start, end: start.elapsed_time(end), torch.cuda.synchronize)


def _build_case(workload: Workload, inputs: dict[str, numpy.ndarray], device: str,
                dtype: str) -> Case:
    torch.manual_seed(0)
    model = build_sequential(workload.layers, _DTYPES[dtype]).to(device)
    arrays = {k: torch.from_numpy(numpy.ascontiguousarray(v)).to(device)
              for k, v in inputs.items()}
    timer = _cuda_timer() if device == "cuda" else CpuTimer()
    return Case(_step_function(workload, model, arrays), timer, {"model": model, **arrays})


def _configure_precision() -> None:
    torch.backends.cuda.matmul.allow_tf32 = _TF32
    torch.backends.cudnn.allow_tf32 = _TF32


def make_backend(device: str, dtype: str = "float32") -> Backend | None:
    """The PyTorch backend on ``device`` ("cpu" or "cuda"); None where torch cannot run."""
    if device == "cuda" and not torch.cuda.is_available():
        return None
    if device not in ("cpu", "cuda"):
        raise ValueError(f"torch reference: unknown device {device!r}")
    _configure_precision()
    return Backend(f"torch-{device}", "torch", device,
                   lambda workload, inputs: _build_case(workload, inputs, device, dtype),
                   TorchCudaProbe if device == "cuda" else NullProbe)


def info() -> dict:
    """Versions and settings of the PyTorch side (for the JSON report)."""
    data: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "tf32": _TF32,
    }
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if capability is not None:
        data["cpu_capability"] = capability()
    if torch.cuda.is_available():
        data["cuda_device"] = torch.cuda.get_device_name(0)
        data["cuda_version"] = torch.version.cuda
        data["cudnn"] = torch.backends.cudnn.version()
        data["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return data
