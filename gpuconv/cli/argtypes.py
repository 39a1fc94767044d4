"""argparse ``type=`` validators for numeric flags: finite values in a stated range.

Each factory returns a callable that parses the flag's text or raises
``argparse.ArgumentTypeError`` with what was expected, so a bad value stops
the command before any work with argparse's usual two lines (usage, then
``argument --flag: ...``) and exit code 2. ``inf`` and ``nan`` are refused
everywhere: no flag of gpuconv means anything with them.

The same validators check the settings a ``--resume`` reads back from a run's
``config.json`` (:func:`check_value`).
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["integer", "real", "count_or_fraction", "check_value", "SEED_MAX"]

SEED_MAX = 2 ** 32 - 1
"""Largest seed: NumPy's generators accept any non-negative int, CuPy's a 32-bit one."""


def _bound_text(low: "float | None", high: "float | None", low_open: bool,
                high_open: bool) -> str:
    def text(bound: float) -> str:  # an int bound in full: 4294967295, not 4.29497e+09
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {text(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {text(high)}")
    return " and ".join(parts)


def integer(low: "int | None" = None, high: "int | None" = None) -> Callable[[str], int]:
    """A validator of whole numbers in ``[low, high]`` (either bound may be None)."""
    what = "an integer" + (f" {_bound_text(low, high, False, False)}" if low is not None
                           or high is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: "float | None" = None, high: "float | None" = None, *, low_open: bool = False,
         high_open: bool = False) -> Callable[[str], float]:
    """A validator of finite numbers in a range; ``low_open``/``high_open`` exclude the
    bound itself (``real(0, low_open=True)``: > 0)."""
    bounds = _bound_text(low, high, low_open, high_open)
    what = "a finite number" + (f" {bounds}" if bounds else "")

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad = not math.isfinite(value)
        if low is not None:
            bad = bad or (value <= low if low_open else value < low)
        if high is not None:
            bad = bad or (value >= high if high_open else value > high)
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = "real"
    return parse


def whole_or_real(low: float = 0.0) -> Callable[[str], "int | float"]:
    """A validator of finite numbers > ``low`` that returns whole values as ints
    (``--epochs 10`` -> 10, ``--epochs 9.9`` -> 9.9)."""
    parse_real = real(low, low_open=True)

    def parse(text: str) -> "int | float":
        value = parse_real(text)
        return int(value) if value == int(value) else value
    return parse


def count_or_fraction(text: str) -> "int | float":
    """A count (an integer >= 1, or 0) or a fraction in [0, 1): ``--val-split``."""
    what = "a count (0, 1, 2, ...) or a fraction in [0, 1)"
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return int(value) if value >= 1 or value == 0 else value


def check_value(name: str, value: Any, parse: Callable[[str], Any]) -> Any:
    """Run a flag validator on a value read back from a file; ValueError naming the
    setting when it is refused (bools and containers are refused as numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"setting {name!r}: expected a number, got {value!r}")
    try:
        return parse(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"setting {name!r}: {exc}") from None
