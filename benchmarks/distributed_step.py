"""Seed-CNN training step: gpuconv on N MPI ranks vs one gpuconv process vs PyTorch.

    python benchmarks/distributed_step.py gpuconv            # one process (BLAS threads: all)
    mpiexec -n 2 python benchmarks/distributed_step.py gpuconv   # 2 ranks, global batch kept
    python benchmarks/distributed_step.py torch              # PyTorch CPU, one process

One step = zero_grad, forward, softmax cross-entropy, backward, gradient
allreduce (ranks only), Adam. Global batch ``--batch`` (default 128) of
random CIFAR-shaped float32 inputs, split over the ranks. Prints the median
step time over ``--steps`` timed steps after ``--warmup`` (for ranks: the
slowest rank per step), images/s, and the allreduce's share of a step.
Outside the package: it imports torch for the reference row.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gpuconv_steps(args) -> None:
    import gpuconv
    from gpuconv import distributed as dist
    from gpuconv.losses import SoftmaxCrossEntropy
    from gpuconv.models.presets import seed_cnn
    from gpuconv.optim import Adam

    comm = dist.init(device="cpu")
    gpuconv.seed(0)
    model = seed_cnn()
    opt = Adam(model)
    loss = SoftmaxCrossEntropy()
    reducer = dist.GradientReducer(comm, model.parameters()) if comm.size > 1 else None
    dist.broadcast_model(model, comm)
    local = args.batch // comm.size
    rng = numpy.random.default_rng(comm.rank)
    x = rng.standard_normal((local, 3, 32, 32), dtype=numpy.float32)
    y = rng.integers(0, 10, size=local)
    model.train()
    steps, reduce_times = [], []
    for i in range(args.warmup + args.steps):
        comm.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        value = loss.forward(model.forward(x), y)
        model.backward_params(loss.backward())
        t1 = time.perf_counter()
        if reducer is not None:
            reducer.reduce(local)
        t2 = time.perf_counter()
        opt.step()
        float(value)
        t3 = time.perf_counter()
        if i >= args.warmup:
            steps.append(t3 - t0)
            reduce_times.append(t2 - t1)
    worst = numpy.array(comm.allgather_object(steps)).max(axis=0)
    share = numpy.median(numpy.array(comm.allgather_object(reduce_times)).max(axis=0))
    if comm.rank == 0:
        med = float(numpy.median(worst))
        print(f"gpuconv ranks={comm.size} batch={args.batch} ({local}/rank) "
              f"step {med * 1e3:.0f} ms (min {worst.min() * 1e3:.0f}, max "
              f"{worst.max() * 1e3:.0f}) -> {args.batch / med:.0f} img/s; allreduce "
              f"{share * 1e3:.1f} ms = {100 * share / med:.1f} % of a step")


def torch_steps(args) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, c = [], 3
    for ch in (32, 64, 128):
        layers += [nn.Conv2d(c, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU(),
                   nn.MaxPool2d(2), nn.Dropout2d(0.3)]
        c = ch
    layers += [nn.Flatten(), nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.ReLU(),
               nn.Dropout(0.5), nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(),
               nn.Dropout(0.5), nn.Linear(256, 10)]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        value = nn.functional.cross_entropy(model(x), y)
        value.backward()
        opt.step()
        float(value.detach())
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = float(numpy.median(times))
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
          f"step {med * 1e3:.0f} ms (min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}) "
          f"-> {args.batch / med:.0f} img/s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=("gpuconv", "torch"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    gpuconv_steps(a) if a.which == "gpuconv" else torch_steps(a)
