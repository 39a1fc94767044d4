"""Command line of the benchmark: ``gpuconv bench``, ``python -m gpuconv.bench`` and
``benchmarks/run.py`` all parse the same flags and run :func:`run_command`."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence

from ..cli import argtypes
from ..cli.common import DEVICE_ENV, device_spec
from ..cli.errors import CLIError, check_writable_folder
from ..training.console import terminal_width, wrap_text
from .harness import DEVICE_CHOICES, BenchConfig, run
from .nproc import DEFAULT_BATCH
from .report import default_json_path, format_table, write_json, write_png
from .workloads import all_workloads, select

__all__ = ["DESCRIPTION", "add_arguments", "config_from_args", "run_command", "main"]

DESCRIPTION = (
    "Benchmark gpuconv's layers and the seed CNN (training step and inference) on NumPy, "
    "on CuPy where a GPU answers, and PyTorch on the same device (loaded from "
    "benchmarks/torch_reference.py), repetitions interleaved. Prints a table; writes JSON "
    "(and a PNG with --png). With --nproc N: the seed-CNN training step on N MPI ranks "
    "against one gpuconv process and PyTorch, each in its own processes.")

# (batch sizes, reps, warmup, sgemm size (None: per device), sgemm reps) for each run size
_FULL = ((64, 128, 256), 10, 2, None, 7)
_QUICK = ((64,), 3, 1, None, 3)
_TINY = ((2,), 5, 1, 256, 3)
_TINY_QUICK = ((2,), 2, 1, 128, 2)


def _int_list(values: Sequence[str]) -> list[int]:
    out = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                number = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {part!r}") from None
            if number < 1:
                raise argparse.ArgumentTypeError(f"must be >= 1: {number}")
            out.append(number)
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text}")
    return value


#: ``$GPUCONV_DEVICE`` values -> --device (the bench runs on device 0 of a kind).
_ENV_DEVICES = {"auto": "all", "cpu": "cpu", "cuda": "cuda", "cuda:0": "cuda"}


def _default_device() -> str:
    """``--device`` when not given: ``$GPUCONV_DEVICE`` (auto = all), else all."""
    env = os.environ.get(DEVICE_ENV, "").strip().lower()
    if not env:
        return "all"
    if env not in _ENV_DEVICES:
        raise ValueError(f"{DEVICE_ENV}={env}: the benchmark runs on cpu, cuda (device 0) "
                         "or all; pass --device")
    return _ENV_DEVICES[env]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's flags to ``parser``."""
    parser.add_argument("--quick", action="store_true",
                        help="batch 64 only, 3 repetitions, 1 warm-up (meant to finish within "
                             "a minute on a 2-core CPU, PyTorch included)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny layer shapes and batch 2 (a smoke test, e.g. for CI)")
    parser.add_argument("--batch-sizes", nargs="+", metavar="N",
                        help="batch sizes, e.g. 64,128,256 (default 64 128 256; --quick: 64)")
    parser.add_argument("--workloads", nargs="+", metavar="PATTERN",
                        help="only workloads whose name contains PATTERN (or matches it as a "
                             "glob), e.g. conv seed-cnn 'dense*'; see --list")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=None,
                        help="cpu, cuda or all (default: $GPUCONV_DEVICE when set, else all "
                             "available)")
    parser.add_argument("--reps", type=_positive, help="timed repetitions per row (default 10)")
    parser.add_argument("--warmup", type=_positive, help="warm-up runs per row (default 2)")
    parser.add_argument("--cooldown", type=_seconds, metavar="SECONDS",
                        help="untimed pause before each switch of backend on the CPU, so one "
                             "library's spinning threads do not slow the next (default 0.25)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--reference", metavar="PATH",
                        help="the PyTorch reference file (default: benchmarks/torch_reference.py "
                             "in the current directory or the gpuconv repository)")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write the JSON results "
                             "(default bench-results/bench-<timestamp>.json)")
    parser.add_argument("--png", metavar="PATH", help="also draw a bar chart (needs matplotlib)")
    parser.add_argument("--peak-size", type=_positive, metavar="N",
                        help="matrix size of the sgemm peak measurement (default 2048 on "
                             "the CPU, 8192 on the GPU)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--nproc", type=argtypes.integer(1), default=1, metavar="N",
                        help="N >= 2: time the seed-CNN training step on N ranks under "
                             "mpiexec (one BLAS thread each, batch/N samples each) against "
                             f"one gpuconv process and PyTorch, at global batch "
                             f"{DEFAULT_BATCH} unless --batch-sizes; needs the 'mpi' extra")
    parser.add_argument("--rounds", type=argtypes.integer(1), metavar="N",
                        help="with --nproc: start each process N times, in turn (default 3; "
                             "--quick: 1); --reps steps are timed in each")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A :class:`BenchConfig` from parsed flags; --quick/--tiny set defaults that explicit
    flags override. Raises argparse.ArgumentTypeError for bad lists."""
    preset = (_TINY_QUICK if args.quick else _TINY) if args.tiny else (
        _QUICK if args.quick else _FULL)
    batches, reps, warmup, peak_size, peak_reps = preset
    nproc = getattr(args, "nproc", 1) or 1
    if nproc > 1:  # the global batch, whatever the preset
        batches = (DEFAULT_BATCH,)
    rounds = getattr(args, "rounds", None) or (1 if args.quick else BenchConfig.rounds)
    device = args.device or _default_device()
    # not "all": --device or $GPUCONV_DEVICE chose it; messages name which (as train,
    # evaluate and predict do)
    source = device_spec(args.device)[1] if device != "all" else None
    return BenchConfig(
        batch_sizes=tuple(_int_list(args.batch_sizes)) if args.batch_sizes else batches,
        reps=args.reps or reps, warmup=args.warmup or warmup,
        device=device, device_source=source,
        workloads=tuple(p for w in (args.workloads or []) for p in w.split(",")),
        tiny=args.tiny, quick=args.quick, use_torch=not args.no_torch,
        reference=args.reference, peak_size=args.peak_size or peak_size, peak_reps=peak_reps,
        cooldown=BenchConfig.cooldown if args.cooldown is None else args.cooldown,
        nproc=nproc, rounds=rounds, command=list(getattr(args, "argv", None) or sys.argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed flags: table on stdout, progress and notes on stderr.

    Exit status: 0; 1 if a gpuconv row failed; 2 for invalid settings.
    """
    try:
        config = config_from_args(args)
        if args.list:
            width = terminal_width(sys.stdout) - 1
            for w in select(all_workloads(config.tiny), config.workloads):
                print(wrap_text(f"{w.name:32s} {w.description}", width, " " * 33))
            return 0
        json_path = args.json or default_json_path()
        # before the benchmark, not after its minutes of work
        check_writable_folder(os.path.dirname(os.path.abspath(json_path)), "--json")
        if args.png:
            check_writable_folder(os.path.dirname(os.path.abspath(args.png)), "--png")
        report = run(config)
    except (ValueError, RuntimeError, argparse.ArgumentTypeError, CLIError) as exc:
        print(f"gpuconv bench: error: {exc}", file=sys.stderr)
        return 2
    width = terminal_width(sys.stdout) - 1  # every line fits the terminal (80 if none)
    print(format_table(report["results"], width))
    for note in report["notes"]:
        print(wrap_text(f"note: {note}", width))
    json_path = write_json(json_path, report)
    print(wrap_text(f"results written to {json_path}", width))
    if args.png:
        problem = write_png(args.png, report)
        print(wrap_text(f"note: {problem}" if problem else f"chart written to {args.png}", width))
    failed = [r for r in report["results"] if r["framework"] == "gpuconv" and r["error"]]
    for row in failed:
        print(wrap_text(f"error: {row['backend']} {row['workload']} batch {row['batch']}: "
                        f"{row['error']}", terminal_width(sys.stderr) - 1), file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpuconv.bench`` / ``benchmarks/run.py``."""
    parser = argparse.ArgumentParser(prog="gpuconv bench", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if argv is not None:
        args.argv = ["gpuconv", "bench", *argv]
    return run_command(args)
