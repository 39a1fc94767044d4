"""Lines that fit the terminal, for everything gpuconv prints (training, CLI, bench).

Width: :func:`terminal_width` is the width of the terminal a stream writes
to; for a stream that is not a terminal (a pipe, a log file) it is
``$COLUMNS`` when set, else 80, so that logs read well in an 80-column
window too.

Fitting: text is broken only between words (:func:`wrap`), never inside one,
so paths and commands stay copy-pastable; a single word longer than the
width (a very long path) is the only thing that can overflow. Lists of
``key=value`` fields are packed into at most a given number of lines,
dropping the least useful fields first when they do not fit
(:func:`fit_fields`).
"""
from __future__ import annotations

import os
import sys
import textwrap
from typing import Sequence, TextIO

__all__ = ["DEFAULT_WIDTH", "terminal_width", "wrap", "wrap_text", "fit_fields"]

DEFAULT_WIDTH = 80
"""Columns assumed for output that does not go to a terminal (and no $COLUMNS)."""
MIN_WIDTH = 20


def terminal_width(file: TextIO | None = None) -> int:
    """Columns of the terminal ``file`` (default ``sys.stdout``) writes to; when it is
    not a terminal, ``$COLUMNS`` if set, else :data:`DEFAULT_WIDTH`. At least 20."""
    file = sys.stdout if file is None else file
    try:
        fd = file.fileno()
        if os.isatty(fd):
            columns = os.get_terminal_size(fd).columns
            if columns > 0:
                return max(MIN_WIDTH, columns)
    except (AttributeError, OSError, ValueError):  # no descriptor (StringIO, capture)
        pass
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return max(MIN_WIDTH, int(env))
    return DEFAULT_WIDTH


def wrap(text: str, width: int, indent: str = "", subsequent_indent: str | None = None
         ) -> list[str]:
    """``text`` (one paragraph) broken between words into lines of at most ``width``
    columns; words longer than that (paths) are kept whole on a line of their own."""
    lines = textwrap.wrap(text, width=max(MIN_WIDTH, width), initial_indent=indent,
                          subsequent_indent=indent if subsequent_indent is None
                          else subsequent_indent,
                          break_long_words=False, break_on_hyphens=False)
    return lines or [indent.rstrip()]


def wrap_text(text: str, width: int, hang: str = "  ") -> str:
    """Every line of ``text`` wrapped to ``width``; a line's continuation keeps its
    leading spaces plus ``hang``. Empty lines stay."""
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width or not line.strip():
            out.append(line)
            continue
        lead = line[:len(line) - len(line.lstrip())]
        out += wrap(line.strip(), width, lead, lead + hang)
    return "\n".join(out)


def _pack(lead: str, fields: Sequence[str], width: int, indent: str) -> list[str]:
    lines = [lead] if lead else []
    for field in fields:
        if lines and len(lines[-1]) + 1 + len(field) <= width:
            lines[-1] = f"{lines[-1]} {field}" if lines[-1] else field
        else:
            lines.append((indent if lines else "") + field)
    return lines or [""]


def fit_fields(fields: Sequence[str], width: int, lead: str = "", max_lines: int = 2,
               drop_order: Sequence[int] = (), indent: str = "  ") -> list[str]:
    """Pack ``fields`` (in order, one space apart, after ``lead``) into lines of at most
    ``width`` columns, continuation lines indented by ``indent``. While that takes
    more than ``max_lines`` lines, leave out fields by index in ``drop_order`` (the
    least useful first). Returns the lines (more than ``max_lines`` only if all
    droppable fields are gone)."""
    keep = list(range(len(fields)))
    drops = [i for i in drop_order if 0 <= i < len(fields)]
    while True:
        lines = _pack(lead, [fields[i] for i in keep], width, indent)
        if (len(lines) <= max_lines and all(len(line) <= width for line in lines)) or not drops:
            return lines
        keep.remove(drops.pop(0))
