"""Seed-CNN training step of one configuration, by hand (e.g. under a profiler).

    python benchmarks/distributed_step.py gpuconv                # one process
    mpiexec -n 2 python benchmarks/distributed_step.py gpuconv   # 2 ranks, global batch kept
    python benchmarks/distributed_step.py torch                  # PyTorch CPU, one process

The measurement is ``gpuconv bench --nproc N``'s (gpuconv/bench/steps.py): zero_grad,
forward, softmax cross-entropy, backward, gradient allreduce (ranks only), Adam, at
global batch ``--batch`` (default 128) split over the ranks; a step's time is the
slowest rank's. For the three rows side by side, alternated over rounds, with the
JSON report, run ``gpuconv bench --nproc 2`` instead.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpuconv import distributed as dist  # noqa: E402
from gpuconv.backend import keep_freed_memory  # noqa: E402
from gpuconv.bench.steps import measure  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=("gpuconv", "torch"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    keep_freed_memory()
    comm = dist.init(device="cpu")
    r = measure(a.which, a.batch, a.warmup, a.steps, comm)
    if comm.rank == 0:
        if r["note"] or r["error"]:
            sys.exit(f"{r['backend']}: {r['note'] or r['error']}")
        t = numpy.array(r["times"])
        med = float(numpy.median(t))
        line = (f"{r['backend']} batch {a.batch} ({r['local_batch']}/rank) step "
                f"{med * 1e3:.0f} ms (min {t.min() * 1e3:.0f}, max {t.max() * 1e3:.0f}) -> "
                f"{a.batch / med:.0f} img/s")
        if r["allreduce"]:
            share = float(numpy.median(r["allreduce"]))
            line += f"; allreduce {share * 1e3:.1f} ms = {100 * share / med:.1f} % of a step"
        print(line)
