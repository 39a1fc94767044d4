"""Classification metrics, computed on the predictions' device, returned on the host.

Inputs: ``y_true`` integer labels (N,); predictions as integer labels (N,),
logits/probabilities (N, K) (argmax over classes), or binary logits (N, 1)
(class 1 where the logit is > 0). Arrays may be NumPy or CuPy; when
``y_true`` and the predictions live on different devices, ``y_true`` is
copied to the predictions' device (an explicit, documented transfer --
metrics run once per evaluation, not per step). All arithmetic uses the
arrays' ``xp``; results come back as NumPy arrays / python floats through
one ``to_numpy`` at the end.

Definitions follow scikit-learn with ``labels=range(num_classes)`` and
``zero_division=0``: a class with no predicted (or no true) samples gets
precision (or recall) 0, and F1 0 when both are 0.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import numpy

from .backend import Array, device_of, get_array_module, on_array_device, to_device, to_numpy

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "precision_recall_f1",
           "classification_report", "to_labels"]


def _same_device(y_true: Any, pred: Any) -> tuple[ModuleType, Array, Array]:
    """Both as arrays on pred's device; returns (xp, y_true, pred)."""
    if not hasattr(pred, "shape"):
        pred = numpy.asarray(pred)
    if not hasattr(y_true, "shape"):
        y_true = numpy.asarray(y_true)
    try:
        xp = get_array_module(y_true, pred)
    except TypeError:
        y_true = to_device(y_true, device_of(pred))
        xp = get_array_module(y_true, pred)
    return xp, y_true, pred


@on_array_device
def to_labels(pred: Array) -> Array:
    """Class labels (N,) from labels (N,), scores (N, K) (argmax) or binary logits (N, 1) (> 0)."""
    xp = get_array_module(pred)
    if pred.ndim == 1:
        if pred.dtype.kind not in "iub":
            raise TypeError(f"metrics: 1-D predictions must be integer labels, got dtype "
                            f"{pred.dtype}; pass scores as (N, K)")
        return pred
    if pred.ndim == 2:
        if pred.shape[1] == 1:
            return (pred[:, 0] > 0).astype(xp.int64)
        return xp.argmax(pred, axis=1)
    raise ValueError(f"metrics: expected predictions of shape (N,) or (N, K), got {tuple(pred.shape)}")


def _check_true(y_true: Array, n: int) -> None:
    if y_true.ndim != 1 or y_true.shape[0] != n:
        raise ValueError(f"metrics: expected y_true of shape ({n},), got {tuple(y_true.shape)}")
    if y_true.dtype.kind not in "iub":
        raise TypeError(f"metrics: y_true must hold integer labels, got dtype {y_true.dtype}")


@on_array_device
def accuracy(y_true: Any, y_pred_or_logits: Any) -> float:
    """Fraction of samples whose predicted class equals ``y_true`` (0.0 for N = 0)."""
    xp, y_true, pred = _same_device(y_true, y_pred_or_logits)
    labels = to_labels(pred)
    _check_true(y_true, labels.shape[0])
    if labels.shape[0] == 0:
        return 0.0
    return float(to_numpy(xp.mean(labels == y_true)))


@on_array_device
def top_k_accuracy(y_true: Any, logits: Any, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    ``logits``: (N, K). A sample counts as correct when fewer than ``k``
    classes score strictly higher than its true class (ties are in its
    favour). Computed without sorting: one compare and one sum.
    """
    xp, y_true, logits = _same_device(y_true, logits)
    if logits.ndim != 2:
        raise ValueError(f"top_k_accuracy: expected logits of shape (N, K), got {tuple(logits.shape)}")
    n, num_classes = logits.shape
    _check_true(y_true, n)
    if k < 1:
        raise ValueError(f"top_k_accuracy: k must be >= 1, got {k}")
    if n == 0:
        return 0.0
    _check_range(y_true, num_classes, "y_true")
    true_scores = logits[xp.arange(n), y_true][:, None]
    rank = (logits > true_scores).sum(axis=1)
    return float(to_numpy(xp.mean(rank < k)))


def _check_range(labels: Array, num_classes: int, what: str) -> None:
    if labels.size == 0:
        return
    lo, hi = (int(v) for v in to_numpy(get_array_module(labels).stack(
        [labels.min(), labels.max()])))
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"metrics: {what} labels must lie in [0, {num_classes - 1}], "
                         f"got values in [{lo}, {hi}]")


def _confusion_device(y_true: Any, y_pred: Any, num_classes: int) -> tuple[ModuleType, Array]:
    xp, y_true, pred = _same_device(y_true, y_pred)
    labels = to_labels(pred)
    _check_true(y_true, labels.shape[0])
    if num_classes < 1:
        raise ValueError(f"metrics: num_classes must be >= 1, got {num_classes}")
    _check_range(y_true, num_classes, "y_true")
    _check_range(labels, num_classes, "predicted")
    codes = y_true.astype(xp.int64) * num_classes + labels.astype(xp.int64)
    cm = xp.bincount(codes, minlength=num_classes * num_classes)
    return xp, cm.reshape(num_classes, num_classes)


@on_array_device
def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> numpy.ndarray:
    """(K, K) int64 NumPy array; entry [i, j] counts samples of true class i predicted as j."""
    _, cm = _confusion_device(y_true, y_pred, num_classes)
    return to_numpy(cm).astype(numpy.int64, copy=False)


def _scores(xp: ModuleType, cm: Array) -> tuple[Array, Array, Array, Array]:
    """Per-class precision, recall, f1 (float64) and support (int) from a confusion matrix."""
    cm = cm.astype(xp.float64)
    tp = xp.diagonal(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = tp / xp.maximum(predicted, 1.0)      # tp == 0 wherever predicted == 0
    recall = tp / xp.maximum(support, 1.0)
    f1 = 2.0 * tp / xp.maximum(predicted + support, 1.0)   # == 2pr / (p + r)
    return precision, recall, f1, support


@on_array_device
def precision_recall_f1(y_true: Any, y_pred: Any, num_classes: int,
                        average: str | None = None) -> tuple[Any, Any, Any]:
    """Precision, recall and F1.

    ``average=None``: three float64 NumPy arrays of shape (K,), one value
    per class. ``'macro'``: the unweighted mean over all K classes (python
    floats). ``'weighted'``: the mean weighted by each class's support
    (number of true samples); 0.0 when there are no samples.
    """
    if average not in (None, "macro", "weighted"):
        raise ValueError(f"precision_recall_f1: average must be None, 'macro' or 'weighted', "
                         f"got {average!r}")
    xp, cm = _confusion_device(y_true, y_pred, num_classes)
    precision, recall, f1, support = _scores(xp, cm)
    stacked = xp.stack([precision, recall, f1])      # (3, K)
    if average == "macro":
        stacked = stacked.mean(axis=1)
    elif average == "weighted":
        stacked = (stacked * support).sum(axis=1) / xp.maximum(support.sum(), 1.0)
    host = to_numpy(stacked).astype(numpy.float64, copy=False)
    if average is None:
        return host[0], host[1], host[2]
    return float(host[0]), float(host[1]), float(host[2])


@on_array_device
def classification_report(y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None,
                          num_classes: int | None = None, digits: int = 2) -> str:
    """Text table like ``sklearn.metrics.classification_report``.

    One row per class (precision, recall, f1-score, support), then
    ``accuracy``, ``macro avg`` and ``weighted avg``. Classes are
    ``range(num_classes)``; ``num_classes`` defaults to ``len(class_names)``,
    else to 1 + the largest label seen. ``class_names`` defaults to "0", "1", ...
    """
    xp, y_true_d, pred = _same_device(y_true, y_pred)
    labels = to_labels(pred)
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        else:
            both = xp.concatenate([y_true_d.reshape(-1).astype(xp.int64),
                                   labels.astype(xp.int64)])
            num_classes = int(to_numpy(both.max())) + 1 if both.size else 1
    names = [str(n) for n in class_names] if class_names is not None else \
        [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"classification_report: {len(names)} class names for "
                         f"{num_classes} classes")
    xp, cm = _confusion_device(y_true_d, labels, num_classes)
    precision, recall, f1, support = _scores(xp, cm)
    total = xp.maximum(support.sum(), 1.0)
    table = xp.stack([precision, recall, f1, support])                  # (4, K)
    macro = table[:3].mean(axis=1)
    weighted = (table[:3] * support).sum(axis=1) / total
    acc = xp.diagonal(cm).sum() / total
    host = to_numpy(xp.concatenate([table.reshape(-1), macro, weighted, acc.reshape(1)]))
    k = num_classes
    per_class = host[:4 * k].reshape(4, k)
    macro_h, weighted_h, acc_h = host[4 * k:4 * k + 3], host[4 * k + 3:4 * k + 6], host[-1]
    n_total = int(per_class[3].sum())

    width = max([len(n) for n in names] + [len("weighted avg"), digits])
    headers = ["precision", "recall", "f1-score", "support"]
    head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
    report = head_fmt.format("", *headers, width=width) + "\n\n"
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for i, name in enumerate(names):
        report += row_fmt.format(name, *per_class[:3, i], int(per_class[3, i]),
                                 width=width, digits=digits)
    report += "\n"
    acc_fmt = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
    report += acc_fmt.format("accuracy", "", "", acc_h, n_total, width=width, digits=digits)
    report += row_fmt.format("macro avg", *macro_h, n_total, width=width, digits=digits)
    report += row_fmt.format("weighted avg", *weighted_h, n_total, width=width, digits=digits)
    return report
