"""Conv2D on (N, C, H, W) and Conv1D on (N, C, L): im2col + one GEMM."""
from __future__ import annotations

from typing import Any, Sequence

import numpy

from ..backend import Array
from ..ops.conv import conv2d_backward, conv2d_forward
from ..ops.im2col import Padding, output_size, same_padding
from ..ops.reduce import channel_sum
from ..ops.workspace import Workspace
from . import init as initializers
from .base import Layer, Parameter


def positive_int_tuple(value: Any, n: int, what: str, layer: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as an n-tuple of ints >= minimum, or a ValueError naming ``layer``."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(items) != n or not all(isinstance(v, (int, numpy.integer)) and not isinstance(v, bool)
                                  and v >= minimum for v in items):
        raise ValueError(f"{layer}: {what} must be an int >= {minimum} or a tuple of {n} such "
                         f"ints, got {value!r}")
    return tuple(int(v) for v in items)


class _Conv(Layer):
    """Shared machinery: parameters, padding rules and the 2-D kernel call."""

    _spatial_dims = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any,
                 padding: Any, dilation: Any, bias: bool, weight_init: Any, bias_init: Any,
                 dtype: Any) -> None:
        super().__init__()
        n = self._spatial_dims
        name = type(self).__name__
        self.in_channels = positive_int_tuple(in_channels, 1, "in_channels", name)[0]
        self.out_channels = positive_int_tuple(out_channels, 1, "out_channels", name)[0]
        self.kernel_size = positive_int_tuple(kernel_size, n, "kernel_size", name)
        self.stride = positive_int_tuple(stride, n, "stride", name)
        self.dilation = positive_int_tuple(dilation, n, "dilation", name)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be an int, a tuple, 'same' or 'valid', "
                                 f"got {padding!r}")
            self.padding: Any = padding
        else:
            self.padding = positive_int_tuple(padding, n, "padding", name, minimum=0)
        self.use_bias = bool(bias)
        self.weight_init = initializers.get(weight_init, initializers.HeNormal())
        self.bias_init = initializers.get(bias_init, initializers.Constant(0.0))
        dtype = numpy.dtype(dtype)
        receptive = int(numpy.prod(self.kernel_size))
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(self.weight_init(shape, self.in_channels * receptive,
                                                 self.out_channels * receptive, numpy, dtype),
                                "weight")
        self.bias = Parameter(self.bias_init((self.out_channels,), self.in_channels * receptive,
                                             self.out_channels * receptive, numpy, dtype),
                              "bias") if self.use_bias else None
        self._cache = None
        self._cache_workspace: Workspace | None = None
        self._cache_amp = None  # (low-precision weight, bias, input dtype) under autocast

    def config(self) -> dict:
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": padding, "dilation": list(self.dilation), "bias": self.use_bias,
                "weight_init": initializers.to_config(self.weight_init),
                "bias_init": initializers.to_config(self.bias_init)}

    def _padding_2d(self, hw: Sequence[int], kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> Padding:
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            return (*same_padding(hw[0], kernel[0], stride[0], dilation[0]),
                    *same_padding(hw[1], kernel[1], stride[1], dilation[1]))
        ph, pw = self.padding if len(self.padding) == 2 else (0, self.padding[0])
        return (ph, ph, pw, pw)

    # ---- mixed precision: float32 master weights, GEMMs in the compute dtype ----------
    def _autocast_forward(self, x: Array) -> tuple[Array, Array, Array | None]:
        """``(x, weight, bias)`` for the GEMM: as they are, or under a float16 policy
        (:meth:`Layer.set_compute_dtype`) cast to it (the weight copy is kept for backward)."""
        dtype = self._autocast_dtype()
        bias = self.bias.data if self.bias is not None else None
        if dtype is None:
            self._cache_amp = None
            return x, self.weight.data, bias
        weight = self.weight.data.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
        self._cache_amp = (weight, bias, x.dtype)
        return x.astype(dtype, copy=False), weight, bias

    def _autocast_backward(self, dy: Array) -> tuple[Array, Array]:
        """``(dy, weight)`` for the backward GEMMs, matching what forward used."""
        if self._cache_amp is None:
            return dy, self.weight.data
        weight = self._cache_amp[0]
        return dy.astype(weight.dtype, copy=False), weight

    def _autocast_dx(self, dx: Array | None) -> Array | None:
        """The input gradient in the dtype the input had."""
        if dx is None or self._cache_amp is None:
            return dx
        return dx.astype(self._cache_amp[2], copy=False)

    def _forward_2d(self, x4: Array, weight4: Array, bias: Array | None, kernel, stride,
                    dilation, layout: str) -> Array:
        padding = self._padding_2d(x4.shape[2:], kernel, stride, dilation)
        out_hw = [output_size(x4.shape[2 + a], kernel[a], stride[a], padding[2 * a],
                              padding[2 * a + 1], dilation[a]) for a in (0, 1)]
        if min(out_hw) < 1:
            raise ValueError(f"{self!r}: input {layout} of spatial size {tuple(x4.shape[2:])} is "
                             f"smaller than the dilated kernel; output would be {tuple(out_hw)}")
        if self._cache_workspace is None:  # scratch buffers reused from step to step (CPU)
            self._cache_workspace = Workspace()
        # the last step's columns go first: off the CPU the new ones are a new array
        self._cache = None
        y, cols = conv2d_forward(x4, weight4, bias, stride, padding, dilation,
                                 workspace=self._cache_workspace)
        self._cache = (cols, x4.shape, padding, y.shape)
        return y

    def _backward_2d(self, dy4: Array, weight4: Array, kernel, stride, dilation,
                     need_input_grad: bool = True) -> Array | None:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        cols, x_shape, padding, y_shape = self._cache
        if tuple(dy4.shape) != tuple(y_shape):
            raise ValueError(f"{self!r}: backward expected dy of shape {tuple(y_shape)}, "
                             f"got {tuple(dy4.shape)}")
        # frozen parameters (Layer.freeze) get no gradient: their GEMM / sum is skipped
        need_weight = self.weight.requires_grad
        need_bias = self.bias is not None and self.bias.requires_grad
        if not (need_weight or need_input_grad):  # e.g. a frozen whitening conv, first layer
            if need_bias:
                self.bias.grad += _bias_grad(dy4)
            return None
        dx, dweight, dbias = conv2d_backward(dy4, cols, weight4, x_shape, stride, padding,
                                             dilation, need_bias,
                                             workspace=self._cache_workspace,
                                             need_input_grad=need_input_grad,
                                             need_weight_grad=need_weight)
        # under autocast dweight/dbias are float16: += upcasts into the float32 grads
        if need_weight:
            self.weight.grad += dweight.reshape(self.weight.grad.shape)
        if need_bias:
            self.bias.grad += dbias
        return dx


def _bias_grad(dy4: Array) -> Array:
    """Sum of dy (N, O, OH, OW) over N, OH, OW (float16 summed in float32)."""
    if dy4.dtype == numpy.float16:
        return dy4.sum(axis=(0, 2, 3), dtype=numpy.float32)
    return channel_sum(dy4)


class Conv2D(_Conv):
    """2-D convolution: x (N, C_in, H, W) -> y (N, C_out, OH, OW), float32 or float64
    (float16 compute under a mixed-precision policy, see :mod:`gpuconv.amp`).

    ``weight`` (C_out, C_in, KH, KW), ``bias`` (C_out,). ``padding`` is an
    int, a (ph, pw) tuple, ``"valid"`` (0) or ``"same"``.

    ``padding="same"`` follows TensorFlow/Keras: the output has
    ``ceil(H / stride)`` rows (and ``ceil(W / stride)`` columns), and the total
    padding ``max((OH - 1) * stride + dilation * (KH - 1) + 1 - H, 0)`` is split
    with the odd pixel after (bottom, right). With stride 1 this is PyTorch's
    ``padding="same"``. With stride > 1 it is not the symmetric
    ``(K - 1) // 2`` padding that PyTorch models (``padding=1`` for 3x3) and
    other from-scratch frameworks use before subsampling: a 3x3 stride-2
    convolution of a 32x32 image pads 0 before and 1 after (windows centred on
    pixels 1, 3, ..., 31) where ``padding=1`` pads 1 on both sides (centred on
    0, 2, ..., 30): same output size, outputs one pixel apart. Pass the int
    padding for the symmetric rule (e.g. to use weights trained with it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True, *,
                 weight_init: Any = None, bias_init: Any = None, dtype: Any = "float32") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         weight_init, bias_init, dtype)

    def forward(self, x: Array) -> Array:
        self._check_input(x, 4, self.in_channels, "(N, C, H, W)")
        x, weight, bias = self._autocast_forward(x)
        return self._forward_2d(x, weight, bias, self.kernel_size, self.stride,
                                self.dilation, "(N, C, H, W)")

    def backward(self, dy: Array) -> Array:
        dy, weight = self._autocast_backward(dy)
        return self._autocast_dx(self._backward_2d(dy, weight, self.kernel_size, self.stride,
                                                   self.dilation))

    def backward_params(self, dy: Array) -> None:
        dy, weight = self._autocast_backward(dy)
        self._backward_2d(dy, weight, self.kernel_size, self.stride, self.dilation,
                          need_input_grad=False)


class Conv1D(_Conv):
    """1-D convolution: x (N, C_in, L) -> y (N, C_out, OL); ``weight`` (C_out, C_in, K).

    Runs as a 2-D convolution over a height-1 image (same kernels, same tests).
    ``padding="same"`` is TensorFlow's rule, as for :class:`Conv2D`: ``ceil(L / stride)``
    outputs, the odd padding element at the end; for stride > 1 that differs from the
    symmetric ``(K - 1) // 2`` padding (``padding=(K - 1) // 2`` gives that one).
    """

    _spatial_dims = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int | str = 0, dilation: int = 1, bias: bool = True,
                 *, weight_init: Any = None, bias_init: Any = None,
                 dtype: Any = "float32") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         weight_init, bias_init, dtype)

    def _as_2d(self, w: Array) -> tuple[Array, tuple, tuple, tuple]:
        return (w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]), (1, self.kernel_size[0]),
                (1, self.stride[0]), (1, self.dilation[0]))

    def forward(self, x: Array) -> Array:
        self._check_input(x, 3, self.in_channels, "(N, C, L)")
        x, weight, bias = self._autocast_forward(x)
        weight4, kernel, stride, dilation = self._as_2d(weight)
        y = self._forward_2d(x[:, :, None, :], weight4, bias, kernel, stride, dilation,
                             "(N, C, L)")
        return y[:, :, 0, :]

    def backward(self, dy: Array) -> Array:
        dy, weight = self._autocast_backward(dy)
        weight4, kernel, stride, dilation = self._as_2d(weight)
        dx = self._backward_2d(dy[:, :, None, :], weight4, kernel, stride, dilation)
        return self._autocast_dx(dx[:, :, 0, :])

    def backward_params(self, dy: Array) -> None:
        dy, weight = self._autocast_backward(dy)
        weight4, kernel, stride, dilation = self._as_2d(weight)
        self._backward_2d(dy[:, :, None, :], weight4, kernel, stride, dilation,
                          need_input_grad=False)
