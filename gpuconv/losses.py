"""Loss functions: ``forward(pred, target)`` -> 0-d array, ``backward()`` -> d(pred).

Every loss averages over the batch (``reduction='mean'`` in PyTorch terms) and
returns its value as a 0-d array of ``pred``'s dtype **on pred's device**; no
``float()`` or other host synchronisation happens, so a training step can
queue the whole step on the GPU. ``backward()`` returns the gradient of that
mean with respect to ``pred`` (same shape, dtype and device as ``pred``).

Label validation (CuPy silently wraps out-of-range indices instead of
raising): integer class labels are range-checked on the host whenever they are
NumPy arrays (cheap, no transfer). Labels that already live on a device are
checked only when debugging is on -- ``check_labels=True`` on the loss, or the
environment variable ``GPUCONV_DEBUG=1`` -- because the check costs a
device-to-host synchronisation every step.

Shapes: ``N`` is the batch size, ``K`` the number of classes.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy

from .backend import Array, get_array_module, to_numpy

__all__ = ["Loss", "SoftmaxCrossEntropy", "BCEWithLogits", "MSE", "Hinge", "Huber",
           "LOSSES", "get", "debug_enabled"]


def debug_enabled() -> bool:
    """True when ``GPUCONV_DEBUG`` is set to a non-empty value other than ``0``."""
    return os.environ.get("GPUCONV_DEBUG", "0") not in ("", "0")


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(getattr(a, "shape", ()))


class Loss:
    """Base class: ``loss(pred, target)`` == ``loss.forward(pred, target)``."""

    def __init__(self, check_labels: bool = False) -> None:
        self.check_labels = bool(check_labels)
        self._cache: tuple | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable)."""
        return {}

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.forward(pred, target)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"

    def forward(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError

    def backward(self) -> Array:
        raise NotImplementedError

    # ---- shared checks -------------------------------------------------------
    def _xp(self, pred: Array, target: Array) -> ModuleType:
        if not hasattr(pred, "dtype") or pred.dtype.kind != "f":
            raise TypeError(f"{self.name}: pred must be a floating-point array, "
                            f"got {type(pred).__name__} dtype={getattr(pred, 'dtype', None)}")
        try:
            return get_array_module(pred, target)
        except TypeError:
            raise TypeError(f"{self.name}: pred ({type(pred).__module__}) and target "
                            f"({type(target).__module__}) live on different devices; "
                            "move the target with gpuconv.backend.to_device") from None

    def _require_cache(self) -> tuple:
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward() called before forward()")
        return self._cache

    def _same_shape_target(self, xp: ModuleType, pred: Array, target: Array) -> Array:
        if _shape(target) != _shape(pred):
            raise ValueError(f"{self.name}: target shape must equal pred shape "
                             f"{_shape(pred)}, got {_shape(target)}")
        return target.astype(pred.dtype, copy=False)

    def _check_label_range(self, labels: Array, num_classes: int) -> None:
        if labels.size == 0:
            return
        if isinstance(labels, numpy.ndarray):
            lo, hi = int(labels.min()), int(labels.max())
        elif self.check_labels or debug_enabled():
            lo, hi = int(to_numpy(labels.min())), int(to_numpy(labels.max()))
        else:
            return
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{self.name}: class labels must lie in [0, {num_classes - 1}], "
                             f"got values in [{lo}, {hi}]")


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy on logits, like ``torch.nn.CrossEntropyLoss``.

    ``pred``: logits (N, K), float32/float64. ``target``: integer labels (N,)
    in ``[0, K)``, or probabilities / one-hot rows (N, K) (any float dtype,
    cast to pred's dtype). ``label_smoothing`` mixes the target with the
    uniform distribution: ``t * (1 - eps) + eps / K``. Uses a shifted
    log-sum-exp, so logits of any magnitude give finite values and gradients.
    """

    def __init__(self, label_smoothing: float = 0.0, check_labels: bool = False) -> None:
        super().__init__(check_labels)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def config(self) -> dict:
        return {"label_smoothing": self.label_smoothing}

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        if pred.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (N, K), "
                             f"got shape {_shape(pred)}")
        n, k = pred.shape
        eps = self.label_smoothing
        hard = target.ndim == 1
        if hard:
            if target.shape[0] != n:
                raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({n},) "
                                 f"for logits {_shape(pred)}, got {_shape(target)}")
            if target.dtype.kind not in "iu":
                raise TypeError(f"SoftmaxCrossEntropy: labels of shape (N,) must be integers, "
                                f"got dtype {target.dtype}; pass (N, K) for soft targets")
            self._check_label_range(target, k)
        elif _shape(target) != (n, k):
            raise ValueError(f"SoftmaxCrossEntropy: expected target of shape ({n},) or "
                             f"({n}, {k}), got {_shape(target)}")
        else:
            target = target.astype(pred.dtype, copy=False)

        shifted = pred - pred.max(axis=1, keepdims=True)        # (N, K), <= 0
        probs = xp.exp(shifted)
        sums = probs.sum(axis=1, keepdims=True)                 # (N, 1), in [1, K]
        probs /= sums                                           # softmax
        log_z = xp.log(sums)
        shifted -= log_z                                        # log-softmax, finite
        rows = xp.arange(n)
        if hard:
            nll = -shifted[rows, target].sum()
            if eps:
                nll = nll * (1.0 - eps) - shifted.sum() * (eps / k)
            self._cache = (probs, target, None)
        else:
            if eps:
                target = target * (1.0 - eps) + eps / k
            nll = -(shifted * target).sum()
            self._cache = (probs, None, target)
        return xp.asarray(nll / n, dtype=pred.dtype)

    def backward(self) -> Array:
        probs, labels, soft = self._require_cache()
        n, k = probs.shape
        if labels is not None:
            grad = probs * (1.0 / n)
            eps = self.label_smoothing
            grad[get_array_module(probs).arange(n), labels] -= (1.0 - eps) / n
            if eps:
                grad -= eps / (k * n)
            return grad
        # d/dz of -sum_k t_k log p_k = p * sum_k t_k - t (rows need not sum to 1)
        grad = probs * soft.sum(axis=1, keepdims=True)
        grad -= soft
        grad *= 1.0 / n
        return grad


class BCEWithLogits(Loss):
    """Sigmoid + binary cross-entropy on logits, like ``torch.nn.BCEWithLogitsLoss``.

    ``pred``: logits of any shape; ``target``: probabilities in [0, 1] of the
    same shape (cast to pred's dtype). Mean over all elements. Uses
    ``max(x, 0) - x*t + log1p(exp(-|x|))``, stable for any magnitude.
    """

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        target = self._same_shape_target(xp, pred, target)
        e = xp.exp(-xp.abs(pred))                               # in (0, 1]
        value = xp.maximum(pred, 0) - pred * target + xp.log1p(e)
        # sigmoid without overflow: 1/(1+e) for x >= 0, e/(1+e) for x < 0
        sig = xp.where(pred >= 0, 1.0, e)
        sig /= 1.0 + e
        self._cache = (sig, target)
        return xp.asarray(value.mean(), dtype=pred.dtype)

    def backward(self) -> Array:
        sig, target = self._require_cache()
        grad = sig - target
        grad *= 1.0 / max(sig.size, 1)
        return grad


class MSE(Loss):
    """Mean squared error over all elements, like ``torch.nn.MSELoss``.

    ``pred`` and ``target``: same shape (target cast to pred's dtype).
    """

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        target = self._same_shape_target(xp, pred, target)
        diff = pred - target
        self._cache = (diff,)
        return xp.asarray(xp.mean(diff * diff), dtype=pred.dtype)

    def backward(self) -> Array:
        (diff,) = self._require_cache()
        return diff * (2.0 / max(diff.size, 1))


class Huber(Loss):
    """Huber loss, like ``torch.nn.HuberLoss(delta=delta)``, mean over all elements.

    Per element: ``0.5 d^2`` where ``|d| < delta`` else ``delta (|d| - delta/2)``,
    with ``d = pred - target``. ``pred`` and ``target``: same shape.
    """

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"Huber: delta must be positive, got {delta}")
        self.delta = float(delta)

    def config(self) -> dict:
        return {"delta": self.delta}

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        target = self._same_shape_target(xp, pred, target)
        diff = pred - target
        ad = xp.abs(diff)
        d = self.delta
        value = xp.where(ad < d, 0.5 * diff * diff, d * (ad - 0.5 * d))
        self._cache = (diff,)
        return xp.asarray(value.mean(), dtype=pred.dtype)

    def backward(self) -> Array:
        (diff,) = self._require_cache()
        xp = get_array_module(diff)
        grad = xp.clip(diff, -self.delta, self.delta)
        grad *= 1.0 / max(diff.size, 1)
        return grad


class Hinge(Loss):
    """Multi-class margin loss, like ``torch.nn.MultiMarginLoss()`` (p=1, margin=1).

    ``pred``: scores (N, K); ``target``: integer labels (N,). Per sample
    ``sum_{j != y} max(0, margin - x_y + x_j) / K``, averaged over N.
    """

    def __init__(self, margin: float = 1.0, check_labels: bool = False) -> None:
        super().__init__(check_labels)
        self.margin = float(margin)

    def config(self) -> dict:
        return {"margin": self.margin}

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        if pred.ndim != 2:
            raise ValueError(f"Hinge: expected scores of shape (N, K), got shape {_shape(pred)}")
        n, k = pred.shape
        if _shape(target) != (n,):
            raise ValueError(f"Hinge: expected labels of shape ({n},) for scores "
                             f"{_shape(pred)}, got {_shape(target)}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"Hinge: labels must be integers, got dtype {target.dtype}")
        self._check_label_range(target, k)
        rows = xp.arange(n)
        margins = pred - pred[rows, target][:, None]
        margins += self.margin
        margins[rows, target] = 0
        active = margins > 0
        xp.maximum(margins, 0, out=margins)
        self._cache = (active, target, pred.dtype)
        return xp.asarray(margins.sum() / (n * k), dtype=pred.dtype)

    def backward(self) -> Array:
        active, target, dtype = self._require_cache()
        xp = get_array_module(active)
        n, k = active.shape
        grad = active.astype(dtype)
        grad[xp.arange(n), target] = -grad.sum(axis=1)
        grad *= 1.0 / (n * k)
        return grad


LOSSES: dict[str, type[Loss]] = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "bce_with_logits": BCEWithLogits,
    "mse": MSE,
    "hinge": Hinge,
    "huber": Huber,
}


def get(loss: "str | Loss", **kwargs: Any) -> Loss:
    """A loss from an instance (returned as is) or a name in :data:`LOSSES` / a class name."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        key = loss.lower()
        cls = LOSSES.get(key) or {c.__name__.lower(): c for c in LOSSES.values()}.get(key)
        if cls is not None:
            return cls(**kwargs)
    raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} or a Loss")
