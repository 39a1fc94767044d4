"""The ``gpuconv`` command line: ``gpuconv train | evaluate | predict [| bench]``.

Entry points: the ``gpuconv`` console script and ``python -m gpuconv`` both
call :func:`main`. User errors (missing data, bad arguments, unreadable
files) print one message to stderr and exit with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .. import __version__
from .common import CLIError, eprint

__all__ = ["main", "build_parser", "CLIError"]


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    """Optional ``bench`` subcommand.

    ---- bench hook ---------------------------------------------------------------
    If the package ``gpuconv.bench`` exists and has ``add_parser(subparsers)`` (or
    ``add_bench_parser(subparsers)``), it is called to register the ``bench``
    subcommand. The subparser it adds must ``set_defaults(func=callable)`` where
    ``callable(args) -> int`` returns the exit code (it may raise
    ``gpuconv.cli.CLIError`` for user errors). Without ``gpuconv.bench`` there is
    no bench subcommand.
    ------------------------------------------------------------------------------
    """
    try:
        bench = importlib.import_module("gpuconv.bench")
    except ModuleNotFoundError as exc:
        if exc.name in ("gpuconv.bench", "gpuconv"):
            return  # no bench package: no bench subcommand
        eprint(f"gpuconv: the bench subcommand is unavailable ({exc})")
        return
    except Exception as exc:  # a broken bench must not break train/evaluate/predict
        eprint(f"gpuconv: the bench subcommand is unavailable ({type(exc).__name__}: {exc})")
        return
    register = getattr(bench, "add_parser", None) or getattr(bench, "add_bench_parser", None)
    if callable(register):
        register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with all subcommands."""
    from . import evaluate, predict, train  # noqa: PLC0415 - keeps `import gpuconv.cli` light

    parser = argparse.ArgumentParser(
        prog="gpuconv",
        description="gpuconv: a from-scratch CNN framework on NumPy (CPU) and CuPy (GPU). "
                    "Train on CIFAR-10, evaluate and predict with saved models.",
        epilog="Run `gpuconv COMMAND --help` for the options of a command.")
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    predict.add_parser(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    args.argv = ["gpuconv", *argv]
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except CLIError as exc:
        eprint(f"gpuconv {args.command}: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        eprint("\ninterrupted")
        return 130
