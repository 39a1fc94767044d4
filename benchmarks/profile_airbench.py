#!/usr/bin/env python3
"""Where one CPU training step of the airbench network spends its time (gpuconv).

    python benchmarks/profile_airbench.py [--width 0.5] [--batch 1024] [--steps 5]
                                          [--torch] [--json OUT.json]

The network is ``build_preset("airbench", width=W)`` in float32 on random
(N, 3, 32, 32) inputs; a step is forward, smoothed cross-entropy, backward (the
first layer's parameters only, as ``Sequential.backward`` does) and an SGD
Nesterov update (``--frozen-whitening-bias``: as after airbench's third epoch,
when the layers below the first trainable one need no backward), run as fit() runs it (glibc keeping freed memory, gpuconv's
worker threads with BLAS held at one thread; ``GPUCONV_NUM_THREADS=1`` for one
thread). Every layer's forward and backward is timed separately
(median over ``--steps`` steps after two warm-up steps) and summed per layer
class; the whole step is timed too. ``--torch`` also times PyTorch's airbench
step (``benchmarks/airbench_torch.py --time-steps``) in a subprocess before and
after, so the two are measured alternately on a shared machine.

A development tool (how the figures in the commit messages were taken);
``gpuconv bench`` is the benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # the checkout's gpuconv

from gpuconv.backend import keep_freed_memory, num_threads, own_cpu_threads  # noqa: E402
from gpuconv.losses import SoftmaxCrossEntropy  # noqa: E402
from gpuconv.models.presets import build_preset  # noqa: E402
from gpuconv.optim import SGD  # noqa: E402


def time_gpuconv(width: float, batch: int, steps: int, freeze_whitening_bias: bool = False) -> dict:
    model = build_preset("airbench", width=width).train()
    if freeze_whitening_bias:  # airbench trains it for the first 3 of its ~10 epochs only
        model.layers[0].freeze("bias")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = SGD(trainable, lr=1e-3, momentum=0.85, nesterov=True)
    loss = SoftmaxCrossEntropy(label_smoothing=0.2)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=numpy.float32)
    y = rng.integers(0, 10, batch)
    layers = model.layers
    forward, backward = defaultdict(list), defaultdict(list)
    totals, shapes = [], {}

    def step() -> None:
        start = time.perf_counter()
        optimizer.zero_grad()
        h = x
        for i, layer in enumerate(layers):
            t = time.perf_counter()
            h = layer.forward(h)
            forward[i].append(time.perf_counter() - t)
            shapes[i] = tuple(h.shape)
        loss.forward(h, y)
        d = loss.backward()
        # as Sequential.backward_params: nothing below the first trainable layer runs
        first = model._first_trainable()
        for i in range(len(layers) - 1, first - 1, -1):
            t = time.perf_counter()
            if i > first:
                d = layers[i].backward(d)
            else:
                layers[i].backward_params(d)
            backward[i].append(time.perf_counter() - t)
        optimizer.step()
        totals.append(time.perf_counter() - start)

    for _ in range(2):
        step()
    for store in (forward, backward):
        store.clear()
    totals.clear()
    for _ in range(steps):
        step()
    ms = lambda values: 1e3 * statistics.median(values)  # noqa: E731
    rows = [{"index": i, "layer": type(layer).__name__, "output": shapes[i],
             "forward_ms": ms(forward[i]), "backward_ms": ms(backward[i]) if backward[i] else 0.0}
            for i, layer in enumerate(layers)]
    return {"step_ms": ms(totals), "steps_ms": [1e3 * t for t in totals], "layers": rows}


def time_torch(width: float, steps: int) -> float | None:
    """Median ms of PyTorch's airbench step, from airbench_torch.py in a subprocess."""
    try:
        out = subprocess.run([sys.executable, os.path.join(_HERE, "airbench_torch.py"),
                              "--time-steps", str(steps), "--width", f"{width:g}"],
                             capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"(torch timing failed: {exc})", file=sys.stderr)
        return None
    found = re.search(r"step ms ([0-9., ]+)", out)
    if not found:
        print(f"(torch timing: no 'step ms [...]' in its output:\n{out})", file=sys.stderr)
        return None
    return statistics.median(float(v) for v in found.group(1).split(","))


def report(ours: dict) -> str:
    lines = [f"{'#':>3} {'layer':12} {'output':20} {'fwd ms':>8} {'bwd ms':>8}"]
    classes: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in ours["layers"]:
        lines.append(f"{row['index']:>3} {row['layer']:12} {str(row['output']):20} "
                     f"{row['forward_ms']:8.1f} {row['backward_ms']:8.1f}")
        classes[row["layer"]][0] += row["forward_ms"]
        classes[row["layer"]][1] += row["backward_ms"]
    lines += ["", f"{'class':12} {'fwd ms':>8} {'bwd ms':>8}"]
    for name, (fwd, bwd) in sorted(classes.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{name:12} {fwd:8.1f} {bwd:8.1f}")
    layer_sum = sum(f + b for f, b in classes.values())
    lines.append(f"step {ours['step_ms']:.0f} ms (layers {layer_sum:.0f} ms); steps "
                 + " ".join(f"{t:.0f}" for t in ours["steps_ms"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--frozen-whitening-bias", action="store_true",
                        help="freeze the whitening conv's bias too (airbench after epoch 3)")
    parser.add_argument("--torch", action="store_true",
                        help="also time PyTorch's step, before and after gpuconv's")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.steps < 1:
        parser.error("--batch must be >= 2 and --steps >= 1")
    keep_freed_memory()
    result: dict = {"width": args.width, "batch": args.batch, "steps": args.steps,
                    "load_average": os.getloadavg()}
    torch_ms = []
    if args.torch:
        torch_ms.append(time_torch(args.width, 3))
        time.sleep(0.5)
    with own_cpu_threads():  # as fit() runs: gpuconv's worker threads, BLAS at one thread
        result["gpuconv"] = time_gpuconv(args.width, args.batch, args.steps,
                                         args.frozen_whitening_bias)
    result["gpuconv_threads"] = num_threads()
    print(report(result["gpuconv"]))
    if args.torch:
        time.sleep(0.5)  # let OpenBLAS's spinning workers go idle before PyTorch runs
        torch_ms.append(time_torch(args.width, 3))
        result["torch_step_ms"] = torch_ms
        print("torch step ms (before, after): "
              + ", ".join("-" if t is None else f"{t:.0f}" for t in torch_ms))
    print(f"gpuconv threads {result['gpuconv_threads']}; load average "
          f"{' '.join(f'{v:.2f}' for v in result['load_average'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
