"""The ``gpuconv`` command line: ``gpuconv train | evaluate | predict [| bench]``.

Entry points: the ``gpuconv`` console script and ``python -m gpuconv`` both
call :func:`main`. User errors (missing or damaged data, bad arguments,
unreadable files, an output folder that cannot be written, a device that is
not there) print one message to stderr naming the flag or file and exit with
code 2, without a traceback (see :mod:`gpuconv.cli.errors`); an unexpected
internal error keeps its traceback. ``--debug`` (or ``GPUCONV_DEBUG=1``)
prints the traceback of every error.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .. import __version__
from .common import eprint
from .errors import CLIError, debug_enabled, print_traceback, user_error_message

__all__ = ["main", "build_parser", "CLIError"]

DEBUG_HELP = "print the traceback of every error (also GPUCONV_DEBUG=1)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (argparse's default repeats the whole
    usage block first, fifteen lines for ``train``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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

    parser = _Parser(
        prog="gpuconv",
        description="gpuconv: a from-scratch CNN framework on NumPy (CPU) and CuPy (GPU). "
                    "Train on CIFAR-10, evaluate and predict with saved models.",
        epilog="Run `gpuconv COMMAND --help` for the options of a command.")
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    predict.add_parser(subparsers)
    _add_bench(subparsers)
    for sub in subparsers.choices.values():  # `gpuconv train ... --debug` works too
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=DEBUG_HELP)
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
    except KeyboardInterrupt:
        eprint("\ninterrupted")
        return 130
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise  # a bug in gpuconv: keep the traceback
        if debug_enabled(args.debug):
            print_traceback(exc)
        eprint(f"gpuconv {args.command}: error: {message}")
        return exc.code if isinstance(exc, CLIError) else 2
