"""Test-set reports and plots: accuracy, confusion matrix, per-class precision/recall/F1,
learning curves.

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, no
display needed, the global backend is left alone); without matplotlib they
are skipped.
"""
from __future__ import annotations

import io
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy

from ..backend import to_numpy
from ..io.atomic import atomic_write
from ..metrics import classification_report, confusion_matrix, precision_recall_f1
from ..training.console import DEFAULT_WIDTH, wrap_text
from ..training.modes import evaluating
from ..training.tta import tta_forward

__all__ = ["collect_logits", "build_report", "format_confusion", "format_report",
           "plot_history", "plot_confusion", "matplotlib_available"]


def collect_logits(model: Any, loader: Iterable, tta: int = 0
                   ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Run ``model`` in eval mode over ``loader``'s (x, y) batches; return host
    ``(logits (N, K) float64, labels (N,) int64)``. ``tta``: the test-time
    augmentation level (:mod:`gpuconv.training.tta`; 0 = none, 2 = 6 views)."""
    outputs, labels = [], []
    device = model.device  # current during the pass: a model on cuda:1 computes there
    with evaluating(model), device.context() if device is not None else nullcontext():
        for x, y in loader:
            outputs.append(tta_forward(model.forward, x, tta) if tta else model.forward(x))
            labels.append(y)
    if not outputs:
        raise ValueError("the test data yielded no batches")
    xp_out = [to_numpy(o) for o in outputs]
    return (numpy.concatenate(xp_out).astype(numpy.float64),
            numpy.concatenate([to_numpy(y) for y in labels]).astype(numpy.int64))


def _log_softmax(logits: numpy.ndarray) -> numpy.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - numpy.log(numpy.exp(shifted).sum(axis=1, keepdims=True))


def build_report(logits: numpy.ndarray, labels: numpy.ndarray,
                 class_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-able report: ``accuracy``, ``loss`` (mean cross-entropy), ``samples``,
    ``top3_accuracy``, ``confusion_matrix`` (rows: true class, columns: predicted),
    ``per_class`` (precision, recall, f1, support), ``macro_avg``, ``weighted_avg``
    and ``text`` (the classification report table)."""
    k = len(class_names)
    pred = logits.argmax(axis=1)
    n = int(labels.shape[0])
    logp = _log_softmax(logits)
    cm = confusion_matrix(labels, pred, k)
    precision, recall, f1 = precision_recall_f1(labels, pred, k)
    support = cm.sum(axis=1)
    per_class = [{"class": str(name), "precision": float(precision[i]),
                  "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
                 for i, name in enumerate(class_names)]
    macro = precision_recall_f1(labels, pred, k, average="macro")
    weighted = precision_recall_f1(labels, pred, k, average="weighted")
    top = min(3, k)
    rank = (logits > logits[numpy.arange(n), labels][:, None]).sum(axis=1)
    return {
        "samples": n,
        "accuracy": float((pred == labels).mean()),
        "loss": float(-logp[numpy.arange(n), labels].mean()),
        f"top{top}_accuracy": float((rank < top).mean()),
        "classes": [str(c) for c in class_names],
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "macro_avg": dict(zip(("precision", "recall", "f1"), macro)),
        "weighted_avg": dict(zip(("precision", "recall", "f1"), weighted)),
        "text": classification_report(labels, pred, class_names=list(class_names), digits=3),
    }


def format_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str],
                     width: int = DEFAULT_WIDTH) -> str:
    """The confusion matrix as a text table (rows: true class, columns: predicted) of at
    most ``width`` columns: column heads are the class names cut to the cell width, row
    labels the full names where they fit (else cut the same way). When no layout fits
    (many classes in a narrow terminal), a line pointing to report.json instead."""
    cm = numpy.asarray(cm, dtype=numpy.int64)
    names = [str(c) for c in class_names]
    k = len(names)
    digits = len(str(int(cm.max()))) if cm.size else 1
    full = max((len(n) for n in names), default=1)
    title = "confusion matrix (rows: true class, columns: predicted class)"
    if len(title) > width:
        title = "confusion matrix (rows: true, columns: predicted)"
    layouts = [(cell, full) for cell in range(max(6, digits), max(4, digits) - 1, -1)]
    layouts += [(cell, cell) for cell in range(max(6, digits), max(3, digits) - 1, -1)]
    for cell, label_w in layouts:  # full row labels first, the widest cells first
        short = [n[:cell] for n in names]
        if len(set(short)) < k:  # cut names must stay distinct
            continue
        if label_w + 1 + k * (cell + 1) <= width:
            labels = names if label_w == full else short
            head = " " * (label_w + 1) + "".join(f" {s:>{cell}}" for s in short)
            lines = [title, head.rstrip()]
            for label, row in zip(labels, cm):
                lines.append(f"{label:>{label_w}} " + "".join(f" {int(v):>{cell}}"
                                                             for v in row))
            return "\n".join(lines)
    return (f"confusion matrix: {k} classes do not fit {width} columns; see "
            "report.json or confusion.png")


def format_report(report: dict, title: str = "Test set", width: int = DEFAULT_WIDTH) -> str:
    """Human-readable text of :func:`build_report`'s result, every line at most ``width``
    columns (80 by default, as in report.txt)."""
    top_key = next((k for k in report if k.startswith("top") and k.endswith("_accuracy")), None)
    lines = [wrap_text(f"{title}: {report['samples']} images", width),
             f"accuracy: {report['accuracy']:.4f}   loss: {report['loss']:.4f}"
             + (f"   {top_key.replace('_', ' ')}: {report[top_key]:.4f}" if top_key else ""),
             "", report["text"].rstrip(), "",
             format_confusion(report["confusion_matrix"], report["classes"], width)]
    return "\n".join(lines) + "\n"


def matplotlib_available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401,PLC0415
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: "str | os.PathLike") -> None:
    """Render ``fig`` as PNG in memory, then write it atomically (never a half-written
    plot; an OSError, e.g. a full disk, names ``path``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def plot_history(rows: Sequence[dict], path: "str | os.PathLike") -> bool:
    """Learning curves (loss and accuracy, train vs val, and lr) as a PNG; False
    when matplotlib is missing or there is nothing to plot."""
    if not rows or not matplotlib_available():
        return False
    epochs = [r["epoch"] for r in rows]

    def series(key: str) -> tuple[list, list]:
        pts = [(e, r.get(key)) for e, r in zip(epochs, rows) if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = _figure(13, 4)
    axes = fig.subplots(1, 3)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, label, style in (("", "train", "-o"), ("val_", "val", "-s")):
            xs, ys = series(prefix + key)
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    xs, ys = series("lr")
    if xs:
        axes[2].plot(xs, ys, "-o", markersize=3)
        if min(ys) > 0:
            axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str],
                   path: "str | os.PathLike", title: str = "Confusion matrix") -> bool:
    """The confusion matrix as a PNG heat map with counts; False without matplotlib."""
    if not matplotlib_available():
        return False
    cm = numpy.asarray(cm, dtype=numpy.int64)
    k = cm.shape[0]
    fig = _figure(1.2 + 0.6 * k, 1.0 + 0.55 * k)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticklabels([str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    _save(fig, path)
    return True


def write_plots(run_dir: "str | os.PathLike", rows: Sequence[dict], report: dict | None,
                curves: str = "curves.png", confusion: str = "confusion.png") -> list[str]:
    """Write the learning curves (and the confusion matrix if ``report``) into
    ``run_dir``; returns the file names written."""
    written = []
    run_dir = Path(run_dir)
    if plot_history(rows, run_dir / curves):
        written.append(curves)
    if report is not None and plot_confusion(report["confusion_matrix"], report["classes"],
                                             run_dir / confusion,
                                             f"Confusion matrix (test accuracy "
                                             f"{report['accuracy']:.3f})"):
        written.append(confusion)
    return written
