"""Presenting a benchmark report: the text table, the JSON file and the PNG chart."""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..io.atomic import atomic_write_text
from ..training.console import wrap_text

__all__ = ["COLUMNS", "ALLREDUCE", "DROP_ORDER", "format_table", "table_rows",
           "default_json_path", "write_json", "write_png", "NA"]

NA = "n/a"
COLUMNS = ("workload", "batch", "backend", "median ms", "min-max ms", "images/s", "GFLOP/s",
           "% peak", "peak used MiB", "vs torch")
"""``peak used MiB``: the most bytes the case had in use at once while it was built and
warmed up (live arrays; not blocks a memory pool keeps cached): ``tracemalloc`` on
NumPy, a CuPy memory hook on CuPy, ``torch.cuda.max_memory_allocated`` for PyTorch on
CUDA (each row's ``memory_method`` in the JSON)."""
ALLREDUCE = "allreduce"  # the column of --nproc runs: the gradient allreduce's share of a step
_LEFT = {"workload", "backend"}


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"  # 3 significant digits


def _cells(row: dict[str, Any]) -> list[str]:
    base = [row["workload"], str(row["batch"]), row["backend"]]
    if row.get("error") is not None:
        return base + ["error"] + ["-"] * (len(COLUMNS) - 4)
    flops = row.get("gflops") is not None
    memory = row.get("peak_memory_bytes")
    if row["framework"] == "torch":
        ratio = "-"
    elif row.get("ratio_vs_torch") is not None:
        ratio = f"{row['ratio_vs_torch']:.2f}x"
    else:
        ratio = NA  # no PyTorch row to compare with
    return base + [
        _ms(row["median_ms"]),
        f"{_ms(row['min_ms'])}-{_ms(row['max_ms'])}",
        _rate(row["images_per_s"]),
        _rate(row["gflops"]) if flops else "-",
        f"{100 * row['peak_fraction']:.0f}%" if row.get("peak_fraction") is not None else "-",
        f"{memory / 2**20:.1f}" if memory is not None else NA,
        ratio,
    ]


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The table's cells (strings), one list per result row, in COLUMNS order."""
    return [_cells(r) for r in results]


# the columns left out first when the table is wider than the terminal (all stay in the JSON)
DROP_ORDER = ("min-max ms", "peak used MiB", "% peak", "GFLOP/s", ALLREDUCE, "vs torch",
              "images/s")


def format_table(results: Sequence[dict[str, Any]], width: int | None = None) -> str:
    """Aligned plain-text table: text columns left-aligned, numbers right-aligned; a
    blank line between workloads. Rows of several ranks (``--nproc``) add the
    column ``allreduce`` (its share of a step). With ``width``, columns are left
    out in :data:`DROP_ORDER` until the table fits (a last line names them)."""
    rows = table_rows(results)
    columns = list(COLUMNS)
    if any(r.get("allreduce_fraction") is not None for r in results):
        columns.append(ALLREDUCE)
        for result, cells in zip(results, rows):
            share = result.get("allreduce_fraction")
            cells.append("-" if share is None or result.get("error") is not None
                         else f"{100 * share:.1f}%")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(columns)]
    keep = list(range(len(columns)))
    dropped: list[str] = []
    for name in [c for c in DROP_ORDER if c in columns]:
        if width is None or sum(widths[i] for i in keep) + 2 * (len(keep) - 1) <= width:
            break
        keep.remove(columns.index(name))
        dropped.append(name)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cells[i].ljust(widths[i]) if columns[i] in _LEFT
                         else cells[i].rjust(widths[i]) for i in keep).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    previous = None
    for result, cells in zip(results, rows):
        if previous is not None and result["workload"] != previous:
            out.append("")
        previous = result["workload"]
        out.append(line(cells))
    if dropped:
        out.append(wrap_text(f"(left out to fit the terminal: {', '.join(dropped)}; all are "
                             "in the JSON file)", width))
    return "\n".join(out)


def default_json_path(base: "str | os.PathLike" = "bench-results") -> Path:
    """``bench-results/bench-<YYYYmmdd-HHMMSS>.json`` (relative to the current directory)."""
    return Path(base) / f"bench-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        return item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: "str | os.PathLike", report: dict[str, Any]) -> Path:
    """Write the report as indented JSON, atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2, default=_json_default,
                                       allow_nan=False) + "\n")
    return path


def write_png(path: "str | os.PathLike", report: dict[str, Any]) -> str | None:
    """Bar chart of median time per row and backend (log scale) and, where PyTorch ran,
    the gpuconv/PyTorch throughput ratio. Returns None when written, else why not
    (matplotlib missing or nothing to plot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import FuncFormatter  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not installed; no PNG written"
    results = [r for r in report["results"] if r.get("median_ms") is not None]
    if not results:
        return "no successful rows to plot; no PNG written"
    groups = list(dict.fromkeys((r["workload"], r["batch"]) for r in results))
    backends = list(dict.fromkeys(r["backend"] for r in results))
    ratios = [r for r in results if r.get("ratio_vs_torch") is not None]
    height = max(3.0, 0.22 * len(groups) * max(len(backends), 1) + 1.5)
    fig = Figure(figsize=(14 if ratios else 9, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if ratios else 1, sharey=True, squeeze=False)[0]
    index = {g: i for i, g in enumerate(groups)}
    bar = 0.8 / len(backends)
    for k, name in enumerate(backends):
        rows = [r for r in results if r["backend"] == name]
        ys = [index[(r["workload"], r["batch"])] + (k - (len(backends) - 1) / 2) * bar
              for r in rows]
        axes[0].barh(ys, [r["median_ms"] for r in rows], height=bar, label=name)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("median time per repetition (ms, log scale; shorter is faster)")
    axes[0].set_yticks(range(len(groups)))
    axes[0].set_yticklabels([f"{w}  b{b}" for w, b in groups], fontsize=7)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower right")
    if ratios:
        gpuconv = [b for b in backends if any(r["backend"] == b for r in ratios)]
        rbar = 0.8 / len(gpuconv)
        for k, name in enumerate(gpuconv):
            rows = [r for r in ratios if r["backend"] == name]
            ys = [index[(r["workload"], r["batch"])] + (k - (len(gpuconv) - 1) / 2) * rbar
                  for r in rows]
            # bars grow from 1 (parity): right of it gpuconv is faster, left of it slower
            widths = [r["ratio_vs_torch"] - 1.0 for r in rows]
            axes[1].barh(ys, widths, left=1.0, height=rbar, label=f"{name} / torch")
        axes[1].axvline(1.0, color="black", linewidth=1)
        axes[1].set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes[1].xaxis.set_major_formatter(plain)
        axes[1].xaxis.set_minor_formatter(plain)
        axes[1].tick_params(axis="x", which="minor", labelsize=7)
        axes[1].set_xlabel("throughput ratio gpuconv / PyTorch (log; > 1: gpuconv faster)")
        axes[1].legend(fontsize=8, loc="lower right")
    machine = report.get("machine", {})
    fig.suptitle(f"gpuconv bench - {machine.get('cpu_model', '?')} - {report.get('created', '')}",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return None
