#!/usr/bin/env python3
"""Where one training step of the seed CNN spends its time, gpuconv next to PyTorch.

    python benchmarks/profile_step.py [--batch 128] [--steps 10] [--json OUT.json]

gpuconv side: every layer's forward and backward timed separately (median
over ``--steps`` steps after warm-up), and for each convolution the time of
its three GEMMs alone (``W @ cols``, ``dY @ cols.T``, ``W.T @ dY``), run in
isolation at the exact shapes the layer uses, with the GFLOP/s they reach.
PyTorch side (when torch is installed): ``torch.profiler`` self-CPU time per
aten op over the same number of steps, grouped into the same classes
(convolution forward/backward, BatchNorm, ReLU, pooling, ...).

This is a development tool for the CPU path (it is how the figures in the
issue notes were taken); ``gpuconv bench`` is the benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # the checkout's gpuconv

from gpuconv.backend import keep_freed_memory, own_cpu_threads  # noqa: E402
from gpuconv.bench.presets import seed_cnn_specs  # noqa: E402
from gpuconv.models.presets import build_preset  # noqa: E402
from gpuconv.ops.conv import SavedInput, resolve_method  # noqa: E402
from gpuconv.ops.conv import _columns as conv_columns  # noqa: E402
from gpuconv.losses import SoftmaxCrossEntropy  # noqa: E402
from gpuconv.optim import Adam  # noqa: E402

# aten op name -> class, for PyTorch's profile (self CPU time)
TORCH_CLASSES = {
    "aten::mkldnn_convolution": "conv forward", "aten::convolution_backward": "conv backward",
    "aten::native_batch_norm": "batchnorm forward",
    "aten::native_batch_norm_backward": "batchnorm backward",
    "aten::clamp_min": "relu forward", "aten::relu": "relu forward",
    "aten::threshold_backward": "relu backward",
    "aten::max_pool2d_with_indices": "maxpool forward",
    "aten::max_pool2d_with_indices_backward": "maxpool backward",
    "aten::addmm": "dense forward", "aten::mm": "dense backward",
}


def layer_class(name: str) -> str:
    return {"Conv2D": "conv", "BatchNorm2d": "batchnorm", "BatchNorm1d": "batchnorm",
            "ReLU": "relu", "MaxPool2D": "maxpool", "Dense": "dense"}.get(name, "other")


def time_gpuconv(batch: int, steps: int, rng: numpy.random.Generator) -> dict:
    model = build_preset("seed-cnn").train()
    optimizer = Adam(model.parameters(), lr=1e-3)
    loss = SoftmaxCrossEntropy()
    x = rng.standard_normal((batch, 3, 32, 32), dtype=numpy.float32)
    y = rng.integers(0, 10, batch)
    forward, backward, optim, total = defaultdict(list), defaultdict(list), [], []

    def step(record: bool) -> None:
        start = time.perf_counter()
        optimizer.zero_grad()
        h = x
        for i, layer in enumerate(model.layers):
            t = time.perf_counter()
            h = layer.forward(h)
            forward[i].append(time.perf_counter() - t)
        loss.forward(h, y)
        d = loss.backward()
        for i in range(len(model.layers) - 1, -1, -1):
            t = time.perf_counter()
            if i:
                d = model.layers[i].backward(d)
            else:
                model.layers[i].backward_params(d)
            backward[i].append(time.perf_counter() - t)
        t = time.perf_counter()
        optimizer.step()
        optim.append(time.perf_counter() - t)
        total.append(time.perf_counter() - start)
        if not record:
            for store in (forward, backward):
                store.clear()
            optim.clear()
            total.clear()

    for _ in range(3):
        step(False)
    for _ in range(steps):
        step(True)
    ms = lambda values: 1e3 * statistics.median(values)  # noqa: E731
    layers = [{"index": i, "layer": type(layer).__name__, "forward_ms": ms(forward[i]),
               "backward_ms": ms(backward[i])} for i, layer in enumerate(model.layers)]
    for row, layer in zip(layers, model.layers):
        if row["layer"] == "Conv2D":
            row.update(conv_gemms(layer, skip_dx=row["index"] == 0, steps=steps))
    return {"step_ms": ms(total), "optimizer_ms": ms(optim), "layers": layers}


def conv_gemms(layer, skip_dx: bool, steps: int) -> dict:
    """Time the layer's GEMMs alone on its cached columns (the shapes of the step; when the
    layer ran in batch chunks and kept only x, the whole batch's columns are rebuilt)."""
    cols, _, padding, _ = layer._cache
    if isinstance(cols, SavedInput):
        cols = conv_columns(cols.x, layer.kernel_size, layer.stride, padding, layer.dilation,
                            resolve_method("auto", layer.stride), None)[0]
    out_channels = layer.weight.data.shape[0]
    w = layer.weight.data.reshape(out_channels, -1)
    cols2 = cols.reshape(w.shape[1], -1)
    dy = numpy.random.default_rng(0).standard_normal((out_channels, cols2.shape[1]),
                                                     dtype=numpy.float32)
    products = {"gemm_forward": lambda: w @ cols2, "gemm_weight_grad": lambda: dy @ cols2.T}
    if not skip_dx:
        products["gemm_input_grad"] = lambda: w.T @ dy
    flops = 2 * w.shape[0] * w.shape[1] * cols2.shape[1]
    out = {"gemm_shape": f"({w.shape[0]}x{w.shape[1]}) @ ({w.shape[1]}x{cols2.shape[1]})"}
    for name, product in products.items():
        product()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            product()
            times.append(time.perf_counter() - t)
        out[name + "_ms"] = 1e3 * statistics.median(times)
        out[name + "_gflops"] = flops / statistics.median(times) / 1e9
    return out


def time_torch(batch: int, steps: int, rng: numpy.random.Generator) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, _HERE)
    from torch_reference import build_sequential

    specs, _ = seed_cnn_specs()
    model = build_sequential(specs, torch.float32).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(rng.standard_normal((batch, 3, 32, 32), dtype=numpy.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    totals = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        totals.append(time.perf_counter() - t)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        profiled_ms = 1e3 * (time.perf_counter() - start) / steps
    classes: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("Optimizer.step"):  # the whole Adam step, children included
            classes["optimizer"] += event.cpu_time_total / 1e3 / steps  # us -> ms per step
        elif event.key in TORCH_CLASSES:
            classes[TORCH_CLASSES[event.key]] += event.self_cpu_time_total / 1e3 / steps
    return {"step_ms": 1e3 * statistics.median(totals), "profiled_step_ms": profiled_ms,
            "threads": torch.get_num_threads(), "classes_ms": dict(classes)}


def report(ours: dict, theirs: dict | None) -> str:
    lines = ["gpuconv per layer (ms, median):",
             f"{'#':>3} {'layer':12} {'fwd':>7} {'bwd':>7}   GEMMs alone (fwd / dW / dX ms, GFLOP/s)"]
    classes: dict[str, float] = defaultdict(float)
    gemm_total = 0.0
    for row in ours["layers"]:
        cls = layer_class(row["layer"])
        classes[cls + " forward"] += row["forward_ms"]
        classes[cls + " backward"] += row["backward_ms"]
        extra = ""
        if "gemm_forward_ms" in row:
            parts = [(row[f"gemm_{k}_ms"], row[f"gemm_{k}_gflops"])
                     for k in ("forward", "weight_grad", "input_grad") if f"gemm_{k}_ms" in row]
            gemm_total += sum(ms for ms, _ in parts)
            extra = "   " + " / ".join(f"{ms:.1f} ({gf:.0f})" for ms, gf in parts) \
                + f"  {row['gemm_shape']}"
        lines.append(f"{row['index']:>3} {row['layer']:12} {row['forward_ms']:7.1f} "
                     f"{row['backward_ms']:7.1f}{extra}")
    classes["optimizer"] = ours["optimizer_ms"]
    lines.append(f"step {ours['step_ms']:.1f} ms; conv GEMMs alone {gemm_total:.1f} ms")
    lines.append("")
    header = f"{'class':22} {'gpuconv':>9}" + (f" {'torch':>9}" if theirs else "")
    lines += ["per class (ms per step; torch: profiler self CPU time, optimizer in total):", header]
    names = sorted(set(classes) | set(theirs["classes_ms"] if theirs else ()))
    for name in names:
        row = f"{name:22} {classes.get(name, 0.0):9.1f}"
        if theirs:
            row += f" {theirs['classes_ms'].get(name, 0.0):9.1f}"
        lines.append(row)
    if theirs:
        lines.append(f"{'whole step':22} {ours['step_ms']:9.1f} {theirs['step_ms']:9.1f}"
                     f"   ratio gpuconv/torch throughput {theirs['step_ms'] / ours['step_ms']:.2f}x")
        lines.append(f"(torch's classes come from steps run under the profiler: "
                     f"{theirs['profiled_step_ms']:.1f} ms per step there)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.steps < 1:
        parser.error("--batch must be >= 2 and --steps >= 1")
    keep_freed_memory()
    rng = numpy.random.default_rng(0)
    with own_cpu_threads():  # as fit() runs: gpuconv's worker threads, BLAS at one thread
        ours = time_gpuconv(args.batch, args.steps, rng)
    time.sleep(0.5)  # let OpenBLAS's spinning workers go idle before PyTorch runs
    theirs = time_torch(args.batch, args.steps, rng)
    print(report(ours, theirs))
    if theirs is None:
        print("(PyTorch not installed: gpuconv side only)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "steps": args.steps, "gpuconv": ours,
                       "torch": theirs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
