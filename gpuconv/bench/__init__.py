"""Benchmarks of gpuconv against PyTorch: ``gpuconv bench``.

Per-layer workloads (Conv2D at the seed CNN's and ResNet's shapes, MaxPool2D,
BatchNorm2d, Dense) and the seed CNN end to end (training step, inference),
on gpuconv-NumPy, gpuconv-CuPy (where CUDA answers) and PyTorch on the same
device, with interleaved repetitions, GFLOP/s against the measured sgemm peak,
and peak memory. PyTorch is never imported by this package: the reference
lives in ``benchmarks/torch_reference.py`` and is loaded by path.

Entry points: :func:`add_parser` (the ``bench`` subcommand of the gpuconv
CLI), :func:`main` (``python -m gpuconv.bench``) and :func:`run` (a
:class:`BenchConfig` in, the report dict out).
"""
from __future__ import annotations

import argparse

from .cli import DESCRIPTION, add_arguments, main, run_command
from .harness import SCHEMA, BenchConfig, run

__all__ = ["add_parser", "main", "run", "run_command", "BenchConfig", "SCHEMA"]


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to a CLI's subparsers; its handler is
    ``args.func(args)`` (also set as ``args.handler``), returning the exit status."""
    parser = subparsers.add_parser("bench", help="benchmark gpuconv against PyTorch",
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run_command, handler=run_command)
    return parser
