"""Mixed precision training: float16 compute, float32 master weights, dynamic loss scaling.

The design is autocast-style (Keras' ``mixed_float16`` policy, ``torch.autocast``):

- :func:`enable_mixed_precision` sets a float16 *compute dtype* on every layer.
  The parameters stay float32 and are the master weights, so the optimizers
  are unchanged. Conv2D, Conv1D and Dense cast their input and a copy of
  their weights to float16 and compute in float16 (on CuPy a float16
  ``matmul`` is a cuBLAS GEMM, which with CuPy's default compute type should
  accumulate in float32; not yet checked on a GPU); their weight and
  bias gradients are added into the float32 ``.grad``. BatchNorm normalises
  float16 inputs in float32 and returns float16. Parameter-free layers run
  in whatever dtype they receive. The model output is float16: compute the
  loss on ``pred.astype(float32)`` (``fit`` does).
- :class:`GradScaler` multiplies the loss gradient by a scale (2**16 at
  first) so that small float16 gradients do not flush to zero, divides the
  parameter gradients by it before the optimizer step (:meth:`GradScaler.unscale_`),
  skips the step when a gradient overflowed, and adapts the scale, with the
  semantics of ``torch.amp.GradScaler``.

One training step, by hand (``fit(..., amp=True)`` does exactly this)::

    enable_mixed_precision(model, "float16")
    scaler = GradScaler()
    optimizer.zero_grad()
    pred = model.forward(x)                              # float16
    value = loss.forward(pred.astype("float32"), y)      # loss in float32
    model.backward(scaler.scale_grad(loss.backward()).astype(pred.dtype))
    if scaler.unscale_(model):                           # the one host sync of the step
        optimizer.step()                                 # skipped on inf/NaN gradients
    scaler.update()

NumPy has no BLAS for float16 (its float16 matmul is a plain loop, hundreds
of times slower than float32), so this only pays off on a CUDA device:
``fit(amp=True)`` refuses a model on the CPU (:func:`check_amp_device`). The
pieces themselves (:func:`enable_mixed_precision`, :class:`GradScaler`,
``fit(grad_scaler=...)``) work on the CPU too, which is how the tests check
them without a GPU.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy

from .backend import Array, Device, get_array_module, to_numpy
from .layers.base import Layer, Parameter
from .optim.params import is_trainable

__all__ = ["enable_mixed_precision", "GradScaler", "parameters_of", "scaled_backward_step",
           "check_amp_device", "AMP_CPU_REASON"]

#: Why mixed precision is refused on the CPU (measured on a 2-core Xeon VM,
#: NumPy 2.4 + OpenBLAS: a 512x512 @ 512x512 matmul took 2.4 ms in float32 and
#: 0.66-1.1 s in float16).
AMP_CPU_REASON = ("mixed precision computes the convolutions and dense layers in float16, "
                  "and NumPy has no BLAS for float16 (a 512x512 float16 matmul measured "
                  "~300x slower than float32 on the CPU)")


def check_amp_device(device: Device, where: str = "fit") -> None:
    """Raise ValueError when ``device`` is the CPU: ``amp=True`` would be hundreds of
    times slower there than float32 (:data:`AMP_CPU_REASON`)."""
    if device.kind == "cpu":
        raise ValueError(f"{where}: amp=True needs a CUDA device: {AMP_CPU_REASON}. Move the "
                         "model to a GPU (model.to('cuda')) or train with amp=False; to "
                         "exercise the float16 path on the CPU anyway, call "
                         "enable_mixed_precision(model) and pass grad_scaler=GradScaler()")


def enable_mixed_precision(model: Layer, dtype: Any = "float16") -> Layer:
    """Set the compute dtype of every layer of ``model`` (containers and Residual
    branches included); ``dtype=None`` turns mixed precision off. Returns ``model``.

    The parameters keep their dtype (float32 master weights). ``dtype`` must
    be a floating dtype narrower than the parameters' (normally float16).
    """
    if dtype is not None:
        dtype = numpy.dtype(dtype)
        params = model.parameters()
        if dtype.kind != "f" or (params and dtype.itemsize >= params[0].data.dtype.itemsize):
            raise TypeError(f"enable_mixed_precision: the compute dtype must be a floating "
                            f"dtype narrower than the parameters' "
                            f"({params[0].data.dtype if params else 'none'}), got {dtype}")
    model.set_compute_dtype(dtype)
    return model


def parameters_of(params: Any) -> list[Parameter]:
    """Parameters of a model/layer (``.parameters()``), an optimizer (``.params``) or an
    iterable of :class:`Parameter`."""
    if hasattr(params, "parameters") and callable(params.parameters):
        return list(params.parameters())
    if hasattr(params, "params"):
        return list(params.params)
    return list(params)


def _f32(value: float) -> float:
    """``value`` rounded to float32 (inf beyond its range), as torch keeps its scale
    in a float32 tensor."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.inf


class GradScaler:
    """Dynamic loss scaling, with the semantics of ``torch.amp.GradScaler``.

    ``scale`` (a host float, float32-representable) starts at ``init_scale``.
    After every step :meth:`update` multiplies it by ``backoff_factor`` when
    the gradients had an inf/NaN (and restarts the count of good steps), and
    by ``growth_factor`` after ``growth_interval`` consecutive finite steps
    (unless that would overflow float32). ``enabled=False`` makes every
    method a no-op (scale 1, gradients always "finite", no sync).

    Per step: :meth:`scale_grad` the loss gradient, backward,
    :meth:`unscale_` (divides every ``.grad`` by the scale in place and
    returns whether all were finite: one host read per step), step the
    optimizer only when finite (or use :meth:`step`), then :meth:`update`.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"GradScaler: init_scale must be a positive finite number, "
                             f"got {init_scale!r}")
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor!r}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), "
                             f"got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) \
                or growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval must be a positive int, "
                             f"got {growth_interval!r}")
        self.enabled = bool(enabled)
        self._scale = _f32(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._growth_tracker = 0       # consecutive finite steps since the last change
        self._found_inf: bool | None = None  # result of this step's unscale_

    # ---- the step ----------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """The current loss scale (1.0 when disabled)."""
        return self._scale if self.enabled else 1.0

    def scale_grad(self, grad: Array) -> Array:
        """``grad * scale`` (a new device array, same dtype); ``grad`` unchanged when disabled."""
        if not self.enabled:
            return grad
        return grad * self._scale

    def unscale_(self, params: Any) -> bool:
        """Divide every parameter's ``.grad`` by the scale, in place; return True when
        all gradients are finite.

        ``params``: a model/layer, an optimizer or an iterable of Parameters.
        Frozen parameters (``requires_grad`` False) are left alone, as torch's
        scaler skips tensors without a ``.grad``: their gradients are neither
        unscaled nor checked. The finiteness flags are reduced on the device and
        read once (the only host sync of an AMP step). Calling it twice in one
        step is an error, as in torch.
        """
        if not self.enabled:
            return True
        if self._found_inf is not None:
            raise RuntimeError("GradScaler.unscale_ was already called since the last "
                               "update(); call update() once per step")
        grads = [p.grad for p in parameters_of(params) if is_trainable(p)]
        if not grads:
            self._found_inf = False
            return True
        inv_scale = _f32(1.0 / self._scale)  # torch: the float32 reciprocal of the scale
        xp = get_array_module(*grads)
        flags = []
        for g in grads:
            g *= inv_scale
            flags.append(xp.isfinite(g).all())
        finite = bool(to_numpy(xp.stack(flags).all()))  # one device->host read
        self._found_inf = not finite
        return finite

    def step(self, optimizer: Any) -> bool:
        """Unscale the optimizer's gradients (unless :meth:`unscale_` was already called
        this step) and run ``optimizer.step()`` only if they are finite; returns
        whether the step was taken."""
        if not self.enabled:
            optimizer.step()
            return True
        if self._found_inf is None:
            self.unscale_(optimizer)
        if self._found_inf:
            return False
        optimizer.step()
        return True

    def update(self, found_inf: bool | None = None) -> None:
        """Adapt the scale after a step: ``found_inf`` (default: what this step's
        :meth:`unscale_` found) backs it off, otherwise count a good step and grow
        the scale every ``growth_interval`` good steps (torch's rule)."""
        if not self.enabled:
            return
        if found_inf is None:
            if self._found_inf is None:
                raise RuntimeError("GradScaler.update: no unscale_() this step; pass found_inf")
            found_inf = self._found_inf
        self._found_inf = None
        if found_inf:
            self._scale = _f32(self._scale * self.backoff_factor)
            self._growth_tracker = 0
            return
        successful = self._growth_tracker + 1
        if successful == self.growth_interval:
            grown = _f32(self._scale * self.growth_factor)
            if math.isfinite(grown):
                self._scale = grown
            self._growth_tracker = 0
        else:
            self._growth_tracker = successful

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's layout: ``scale``, ``growth_factor``, ``backoff_factor``,
        ``growth_interval``, ``_growth_tracker`` (empty when disabled, like torch)."""
        if not self.enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (no-op when disabled; ValueError on an empty
        state for an enabled scaler)."""
        if not self.enabled:
            return
        if not state:
            raise ValueError("GradScaler.load_state_dict: the state is empty (it was saved "
                             "from a disabled scaler)")
        self._scale = _f32(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])
        self._found_inf = None

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self.scale}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval}, "
                f"enabled={self.enabled})")


def scaled_backward_step(model: Layer, optimizer: Any, loss: Any, pred: Array,
                         scaler: GradScaler, params: Any = None,
                         reduce_grads: Any = None) -> bool:
    """The mixed-precision second half of a training step, after
    ``loss.forward(pred.astype(float32), y)`` on the model's (float16) output ``pred``:
    backward of the scaled loss gradient (without the input gradient), unscale
    (the step's one host read), ``optimizer.step()`` unless a gradient overflowed,
    then ``scaler.update()``. ``params``: what to unscale (default: the model's
    parameters). ``reduce_grads``: called after the backward pass, before
    unscaling (data parallelism averages the still-scaled gradients there, so
    every rank reads the same overflow flag). Returns whether the optimizer step
    was applied.
    """
    dpred = scaler.scale_grad(loss.backward())
    model.backward_params(dpred.astype(pred.dtype, copy=False))
    if reduce_grads is not None:
        reduce_grads()
    applied = scaler.unscale_(model if params is None else params)
    if applied:
        optimizer.step()
    scaler.update()
    return applied
