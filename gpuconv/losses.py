"""Loss functions: ``forward(pred, target)`` -> loss array, ``backward()`` -> d(pred).

Reduction (torch's names, ``reduction=`` on every loss):

- ``"mean"`` (default): the average over the batch (over all elements for
  the elementwise losses BCEWithLogits, MSE, Huber), a 0-d array;
- ``"sum"``: the sum instead of the average, a 0-d array (airbench sums its
  label-smoothed cross-entropy over the batch, so the gradient scales with
  the batch size and the lr is "per 1024 examples");
- ``"none"``: the unreduced losses -- shape (N,) for the per-sample losses
  (cross-entropy, NLL, hinge), pred's shape for the elementwise ones.

The value is an array of ``pred``'s dtype **on pred's device**; no ``float()``
or other host synchronisation happens, so a training step can queue the
whole step on the GPU. ``backward(grad=None)`` returns the gradient with
respect to ``pred`` (same shape, dtype and device as ``pred``) of the
returned value; ``grad`` is the upstream gradient: for ``"none"`` an array of
the loss's shape (default: ones, i.e. the gradient of the losses' sum), for
``"mean"`` / ``"sum"`` an optional scalar factor. ``fit`` reports the value
as returned, so with ``"sum"`` the logged loss is a per-batch sum.

Label validation (CuPy silently wraps out-of-range indices instead of
raising): integer class labels are range-checked on the host whenever they are
NumPy arrays (cheap, no transfer). Labels that already live on a device are
checked only when debugging is on -- ``check_labels=True`` on the loss, or the
environment variable ``GPUCONV_DEBUG=1`` -- because the check costs a
device-to-host synchronisation every step.

Shapes: ``N`` is the batch size, ``K`` the number of classes.

``forward`` runs with ``pred``'s device current and ``backward`` with the
device of the last forward's ``pred`` (CuPy allocates on the current device;
see :func:`gpuconv.backend.device_context_of`).
"""
from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

import numpy

from .backend import Array, device_context_of, get_array_module, to_numpy

__all__ = ["Loss", "CrossEntropy", "SoftmaxCrossEntropy", "NLLLoss", "BCEWithLogits", "MSE",
           "Hinge", "Huber", "REDUCTIONS", "KERAS_EPSILON", "LOSSES", "get", "debug_enabled"]

REDUCTIONS = ("mean", "sum", "none")
KERAS_EPSILON = 1e-7  # keras.config.epsilon()'s default: the clip of probabilities before log


def debug_enabled() -> bool:
    """True when ``GPUCONV_DEBUG`` is set to a non-empty value other than ``0``."""
    return os.environ.get("GPUCONV_DEBUG", "0") not in ("", "0")


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(getattr(a, "shape", ()))


Weight = Any  # a python float, a 0-d array, or an array of the unreduced losses' shape


def _forward_on_device(method):
    @functools.wraps(method)
    def forward(self, pred, target):
        self._device_array = pred
        with device_context_of(pred):
            return method(self, pred, target)
    forward.__on_device__ = True
    return forward


def _backward_on_device(method):
    @functools.wraps(method)
    def backward(self, grad=None):
        with device_context_of(getattr(self, "_device_array", None)):
            return method(self, grad)
    backward.__on_device__ = True
    return backward


class Loss:
    """Base class: ``loss(pred, target)`` == ``loss.forward(pred, target)``.

    Args:
        check_labels: range-check device labels (a host sync; see the module doc).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see the module doc).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("forward", _forward_on_device), ("backward", _backward_on_device)):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__on_device__", False):
                setattr(cls, name, wrap(method))

    def __init__(self, check_labels: bool = False, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, "
                             f"got {reduction!r}")
        self.check_labels = bool(check_labels)
        self.reduction = reduction
        self._cache: tuple | None = None
        self._loss_shape: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable)."""
        return {"reduction": self.reduction}

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.forward(pred, target)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"

    def forward(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError

    def backward(self, grad: Any = None) -> Array:
        raise NotImplementedError

    # ---- reduction -------------------------------------------------------------
    def _reduce(self, xp: ModuleType, values: Array, dtype: Any) -> Array:
        """Reduce the unreduced losses ``values`` as ``self.reduction`` says."""
        self._loss_shape = tuple(values.shape)
        if self.reduction == "none":
            return values.astype(dtype, copy=False)
        total = values.sum()
        if self.reduction == "mean":
            total = total / max(values.size, 1)
        return xp.asarray(total, dtype=dtype)

    def _weight(self, grad: Any, dtype: Any) -> Weight:
        """d(returned value) / d(each unreduced loss), times the upstream ``grad``."""
        if self.reduction == "none":
            if grad is None:
                return 1.0
            if _shape(grad) != self._loss_shape:
                raise ValueError(f"{self.name}.backward: grad must have the loss's shape "
                                 f"{self._loss_shape}, got {_shape(grad)}")
            return grad.astype(dtype, copy=False)
        scale = 1.0 / max(int(numpy.prod(self._loss_shape)), 1) \
            if self.reduction == "mean" else 1.0
        if grad is None:
            return scale
        if _shape(grad) != ():
            raise ValueError(f"{self.name}.backward: with reduction={self.reduction!r} grad "
                             f"must be a scalar, got shape {_shape(grad)}")
        return grad * scale

    @staticmethod
    def _per_row(weight: Weight) -> Weight:
        """A per-sample weight (N,) as a column (N, 1); scalars unchanged."""
        return weight[:, None] if len(_shape(weight)) == 1 else weight

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

    def _class_target(self, pred: Array, target: Array, what: str) -> bool:
        """Check a (N, K) pred against integer labels (N,) or a (N, K) target; True if hard."""
        if pred.ndim != 2:
            raise ValueError(f"{self.name}: expected {what} of shape (N, K), "
                             f"got shape {_shape(pred)}")
        n, k = pred.shape
        if target.ndim == 1:
            if target.shape[0] != n:
                raise ValueError(f"{self.name}: expected labels of shape ({n},) "
                                 f"for {what} {_shape(pred)}, got {_shape(target)}")
            if target.dtype.kind not in "iu":
                raise TypeError(f"{self.name}: labels of shape (N,) must be integers, "
                                f"got dtype {target.dtype}; pass (N, K) for soft targets")
            self._check_label_range(target, k)
            return True
        if _shape(target) != (n, k):
            raise ValueError(f"{self.name}: expected target of shape ({n},) or "
                             f"({n}, {k}), got {_shape(target)}")
        return False


class CrossEntropy(Loss):
    """Cross-entropy on logits or on probabilities (Keras's ``from_logits`` convention).

    ``pred``: (N, K), float32/float64 -- logits when ``from_logits=True``
    (softmax + cross-entropy, exactly ``torch.nn.functional.cross_entropy``
    with ``label_smoothing`` and ``reduction``), probabilities when
    ``from_logits=False`` (e.g. a Softmax layer's output). ``target``:
    integer labels (N,) in ``[0, K)``, or probabilities / one-hot rows (N, K)
    (any float dtype, cast to pred's dtype).

    ``label_smoothing`` mixes the target with the uniform distribution:
    ``t * (1 - eps) + eps / K``, per sample, before the reduction (so also
    with ``reduction="sum"``). Per sample ``loss = -sum_k t_k log p_k``.

    Logits: a shifted log-sum-exp, so logits of any magnitude give finite
    values and gradients. Probabilities, Keras's formula
    (``keras.losses.categorical_crossentropy``, ``from_logits=False``): each
    row is renormalised, ``q = pred / sum_k pred``, then clipped to
    ``[epsilon, 1 - epsilon]`` before the log, with Keras's default
    ``epsilon = 1e-7`` (:data:`KERAS_EPSILON`); the gradient is zero where
    the clip is active and follows the renormalisation. A row summing to 0
    gives NaN (as in Keras). Prefer logits: they are exact where
    probabilities underflow.
    """

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str = "mean", epsilon: float = KERAS_EPSILON,
                 check_labels: bool = False) -> None:
        super().__init__(check_labels, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing}")
        if not 0.0 < epsilon < 0.5:
            raise ValueError(f"{self.name}: epsilon must be in (0, 0.5), got {epsilon}")
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)
        self.epsilon = float(epsilon)

    def config(self) -> dict:
        cfg = {"from_logits": self.from_logits, "label_smoothing": self.label_smoothing,
               **super().config()}
        if not self.from_logits:
            cfg["epsilon"] = self.epsilon
        return cfg

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        hard = self._class_target(pred, target, "logits" if self.from_logits
                                  else "probabilities")
        if not hard:
            target = target.astype(pred.dtype, copy=False)
        if self.from_logits:
            per_sample = self._forward_logits(xp, pred, target, hard)
        else:
            per_sample = self._forward_probabilities(xp, pred, target, hard)
        return self._reduce(xp, per_sample, pred.dtype)

    def _forward_logits(self, xp: ModuleType, pred: Array, target: Array, hard: bool) -> Array:
        n, k = pred.shape
        eps = self.label_smoothing
        shifted = pred - pred.max(axis=1, keepdims=True)        # (N, K), <= 0
        probs = xp.exp(shifted)
        sums = probs.sum(axis=1, keepdims=True)                 # (N, 1), in [1, K]
        probs /= sums                                           # softmax
        shifted -= xp.log(sums)                                 # log-softmax, finite
        if hard:
            per_sample = -shifted[xp.arange(n), target]
            if eps:
                per_sample = per_sample * (1.0 - eps) - shifted.sum(axis=1) * (eps / k)
            self._cache = ("logits", probs, target, None)
        else:
            if eps:
                target = target * (1.0 - eps) + eps / k
            per_sample = -(shifted * target).sum(axis=1)
            self._cache = ("logits", probs, None, target)
        return per_sample

    def _forward_probabilities(self, xp: ModuleType, pred: Array, target: Array,
                               hard: bool) -> Array:
        n, k = pred.shape
        eps = self.label_smoothing
        if hard:   # dense smoothed one-hot rows: the gradient needs every class anyway
            dense = xp.full((n, k), eps / k, dtype=pred.dtype)
            dense[xp.arange(n), target] += 1.0 - eps
        else:
            dense = target * (1.0 - eps) + eps / k if eps else target
        sums = pred.sum(axis=1, keepdims=True)
        q = pred / sums
        low, high = self.epsilon, 1.0 - self.epsilon
        inside = (q >= low) & (q <= high)                       # where the clip passes gradient
        clipped = xp.clip(q, low, high)
        per_sample = -(dense * xp.log(clipped)).sum(axis=1)
        self._cache = ("probabilities", dense, clipped, q, sums, inside)
        return per_sample

    def backward(self, grad: Any = None) -> Array:
        cache = self._require_cache()
        if cache[0] == "logits":
            _, probs, labels, soft = cache
            weight = self._per_row(self._weight(grad, probs.dtype))
            xp = get_array_module(probs)
            n, k = probs.shape
            if labels is not None:
                eps = self.label_smoothing
                dpred = probs * weight
                rows = xp.arange(n)
                dpred[rows, labels] -= (1.0 - eps) * (weight[:, 0] if _shape(weight) else weight)
                if eps:
                    dpred -= (eps / k) * weight
                return dpred
            # d/dz of -sum_k t_k log p_k = p * sum_k t_k - t (rows need not sum to 1)
            dpred = probs * soft.sum(axis=1, keepdims=True)
            dpred -= soft
            dpred *= weight
            return dpred
        _, dense, clipped, q, sums, inside = cache
        weight = self._per_row(self._weight(grad, q.dtype))
        # loss = -sum_k t_k log clip(q_k), q = p / sum(p): dL/dq = -t / clip(q) (0 where
        # clipped); through the renormalisation dL/dp_j = (dL/dq_j - sum_k dL/dq_k q_k) / sum(p)
        dq = -dense / clipped
        dq *= inside
        dpred = dq - (dq * q).sum(axis=1, keepdims=True)
        dpred /= sums
        dpred *= weight
        return dpred


class SoftmaxCrossEntropy(CrossEntropy):
    """Softmax + cross-entropy on logits, like ``torch.nn.CrossEntropyLoss``:
    :class:`CrossEntropy` with ``from_logits=True``.

    ``pred``: logits (N, K), float32/float64. ``target``: integer labels (N,)
    in ``[0, K)``, or probabilities / one-hot rows (N, K) (any float dtype,
    cast to pred's dtype). ``label_smoothing`` mixes the target with the
    uniform distribution: ``t * (1 - eps) + eps / K``. ``reduction``: ``"mean"``
    (default), ``"sum"`` or ``"none"`` (per-sample losses, (N,)).
    """

    def __init__(self, label_smoothing: float = 0.0, check_labels: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__(from_logits=True, label_smoothing=label_smoothing,
                         reduction=reduction, check_labels=check_labels)

    def config(self) -> dict:
        return {"label_smoothing": self.label_smoothing, "reduction": self.reduction}


class NLLLoss(Loss):
    """Negative log-likelihood on log-probabilities, like ``torch.nn.NLLLoss``
    (no class weights, no ``ignore_index``).

    ``pred``: log-probabilities (N, K) (e.g. a log-softmax output),
    float32/float64; ``target``: integer labels (N,) in ``[0, K)``. Per
    sample ``-pred[i, target[i]]``, reduced by ``reduction``.
    """

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        if pred.ndim != 2:
            raise ValueError(f"NLLLoss: expected log-probabilities of shape (N, K), "
                             f"got shape {_shape(pred)}")
        n, k = pred.shape
        if _shape(target) != (n,):
            raise ValueError(f"NLLLoss: expected labels of shape ({n},) for "
                             f"log-probabilities {_shape(pred)}, got {_shape(target)}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"NLLLoss: labels must be integers, got dtype {target.dtype}")
        self._check_label_range(target, k)
        self._cache = (target, pred.shape, pred.dtype, xp)
        return self._reduce(xp, -pred[xp.arange(n), target], pred.dtype)

    def backward(self, grad: Any = None) -> Array:
        target, shape, dtype, xp = self._require_cache()
        weight = self._weight(grad, dtype)
        dpred = xp.zeros(shape, dtype=dtype)
        dpred[xp.arange(shape[0]), target] = -weight
        return dpred


class BCEWithLogits(Loss):
    """Sigmoid + binary cross-entropy on logits, like ``torch.nn.BCEWithLogitsLoss``.

    ``pred``: logits of any shape; ``target``: probabilities in [0, 1] of the
    same shape (cast to pred's dtype). Reduced over all elements. Uses
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
        return self._reduce(xp, value, pred.dtype)

    def backward(self, grad: Any = None) -> Array:
        sig, target = self._require_cache()
        dpred = sig - target
        dpred *= self._weight(grad, sig.dtype)
        return dpred


class MSE(Loss):
    """Squared error reduced over all elements, like ``torch.nn.MSELoss``.

    ``pred`` and ``target``: same shape (target cast to pred's dtype).
    """

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        target = self._same_shape_target(xp, pred, target)
        diff = pred - target
        self._cache = (diff,)
        return self._reduce(xp, diff * diff, pred.dtype)

    def backward(self, grad: Any = None) -> Array:
        (diff,) = self._require_cache()
        dpred = diff * 2.0
        dpred *= self._weight(grad, diff.dtype)
        return dpred


class Huber(Loss):
    """Huber loss, like ``torch.nn.HuberLoss(delta=delta)``, reduced over all elements.

    Per element: ``0.5 d^2`` where ``|d| < delta`` else ``delta (|d| - delta/2)``,
    with ``d = pred - target``. ``pred`` and ``target``: same shape.
    """

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if delta <= 0:
            raise ValueError(f"Huber: delta must be positive, got {delta}")
        self.delta = float(delta)

    def config(self) -> dict:
        return {"delta": self.delta, **super().config()}

    def forward(self, pred: Array, target: Array) -> Array:
        xp = self._xp(pred, target)
        target = self._same_shape_target(xp, pred, target)
        diff = pred - target
        ad = xp.abs(diff)
        d = self.delta
        value = xp.where(ad < d, 0.5 * diff * diff, d * (ad - 0.5 * d))
        self._cache = (diff,)
        return self._reduce(xp, value, pred.dtype)

    def backward(self, grad: Any = None) -> Array:
        (diff,) = self._require_cache()
        xp = get_array_module(diff)
        dpred = xp.clip(diff, -self.delta, self.delta)
        dpred *= self._weight(grad, diff.dtype)
        return dpred


class Hinge(Loss):
    """Multi-class margin loss, like ``torch.nn.MultiMarginLoss()`` (p=1, margin=1).

    ``pred``: scores (N, K); ``target``: integer labels (N,). Per sample
    ``sum_{j != y} max(0, margin - x_y + x_j) / K``, reduced over N.
    """

    def __init__(self, margin: float = 1.0, check_labels: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__(check_labels, reduction)
        self.margin = float(margin)

    def config(self) -> dict:
        return {"margin": self.margin, **super().config()}

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
        return self._reduce(xp, margins.sum(axis=1) / k, pred.dtype)

    def backward(self, grad: Any = None) -> Array:
        active, target, dtype = self._require_cache()
        xp = get_array_module(active)
        n, k = active.shape
        dpred = active.astype(dtype)
        dpred[xp.arange(n), target] = -dpred.sum(axis=1)
        dpred *= self._per_row(self._weight(grad, dtype))
        dpred *= 1.0 / k
        return dpred


LOSSES: dict[str, type[Loss]] = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "categorical_cross_entropy": CrossEntropy,
    "nll": NLLLoss,
    "nll_loss": NLLLoss,
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
