"""Max and average pooling over (N, C, H, W), vectorised over kernel offsets.

Max pooling pads with -inf (a zero pad would win over all-negative windows)
and records, per output pixel, the index of the *first* maximum in the
window in row-major kernel order -- PyTorch's tie rule, which matters after
ReLU where whole windows are 0. The index is local to the window (uint8
when the window has at most 255 elements), never a flat index into x.
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .im2col import Pair, Padding, output_size, pad2d, unpad2d, windows


def pooled_size(x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                padding: Padding) -> Pair:
    h, w = x_shape[-2:]
    return (output_size(h, kernel[0], stride[0], padding[0], padding[1], 1),
            output_size(w, kernel[1], stride[1], padding[2], padding[3], 1))


def _is_tiling(x_shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Padding) -> bool:
    """True when windows tile the input exactly: no overlap, no padding, nothing left over."""
    h, w = x_shape[-2:]
    return (tuple(kernel) == tuple(stride) and not any(padding)
            and h % kernel[0] == 0 and w % kernel[1] == 0)


def _stacked_windows(x: Array, kernel: Pair, stride: Pair, padding: Padding,
                     fill: float) -> Array:
    """Every window element as a contiguous slab: (KH*KW, N, C, OH, OW).

    One strided copy per kernel offset; everything after works on
    contiguous slabs, which NumPy processes several times faster than the
    short strided rows of the window views.
    """
    xp = get_array_module(x)
    out_hw = pooled_size(x.shape, kernel, stride, padding)
    if _is_tiling(x.shape, kernel, stride, padding):  # one transposing copy does it all
        n, c = x.shape[:2]
        tiles = x.reshape(n, c, out_hw[0], kernel[0], out_hw[1], kernel[1])
        return xp.ascontiguousarray(tiles.transpose(3, 5, 0, 1, 2, 4)).reshape(
            (kernel[0] * kernel[1], n, c) + out_hw)
    stack = xp.empty((kernel[0] * kernel[1],) + tuple(x.shape[:2]) + out_hw, dtype=x.dtype)
    for i, j, view in windows(pad2d(x, padding, fill), kernel, stride, (1, 1), out_hw):
        stack[i * kernel[1] + j] = view
    return stack


def max_pool2d_forward(x: Array, kernel: Pair, stride: Pair, padding: Padding,
                       need_argmax: bool = True) -> tuple[Array, Array | None]:
    """``(y, argmax)``: y (N, C, OH, OW) and the window-local argmax (same shape), or
    ``(y, None)`` when ``need_argmax`` is False (inference: no backward pass follows)."""
    xp = get_array_module(x)
    if not need_argmax and _is_tiling(x.shape, kernel, stride, padding):
        return _tiled_max(x, kernel), None
    stack = _stacked_windows(x, kernel, stride, padding, -float("inf"))
    y = stack.max(axis=0)
    if not need_argmax:
        return y, None
    size = stack.shape[0]
    index_dtype = xp.uint8 if size <= 255 else xp.int32
    # argmax = number of window elements before the first maximum (PyTorch's tie rule);
    # counting with boolean adds is far cheaper than masked writes
    before_first_max = stack[0] != y
    argmax = before_first_max.astype(index_dtype)
    for k in range(1, size - 1):
        before_first_max &= stack[k] != y
        argmax += before_first_max
    return y, argmax


def _tiled_max(x: Array, kernel: Pair) -> Array:
    """Window maxima when windows tile x exactly, without copying x: first the max of
    the KH rows of each window (whole image rows, contiguous), then of the KW columns.
    Measured 7 ms against 14 ms through the window slabs for (128, 32, 32, 32)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    tiles = x.reshape(n, c, h // kernel[0], kernel[0], w // kernel[1], kernel[1])
    rows = tiles[:, :, :, 0]
    for i in range(1, kernel[0]):
        rows = xp.maximum(rows, tiles[:, :, :, i])
    y = rows[..., 0]
    for j in range(1, kernel[1]):
        y = xp.maximum(y, rows[..., j])
    return xp.ascontiguousarray(y)


def max_pool2d_backward(dy: Array, argmax: Array, x_shape: tuple[int, ...], kernel: Pair,
                        stride: Pair, padding: Padding) -> Array:
    """Route ``dy`` (N, C, OH, OW) to the argmax position of each window; returns dx."""
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    out_hw = dy.shape[-2:]
    if _is_tiling(x_shape, kernel, stride, padding):
        # every input pixel is in exactly one window: write, no zero-fill, no +=
        dx = xp.empty(x_shape, dtype=dy.dtype)
        for i, j, view in windows(dx, kernel, stride, (1, 1), out_hw):
            xp.multiply(dy, argmax == i * kernel[1] + j, out=view)
        return dx
    top, bottom, left, right = padding
    dxpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=dy.dtype)
    for i, j, view in windows(dxpad, kernel, stride, (1, 1), out_hw):
        view += dy * (argmax == i * kernel[1] + j)
    return xp.ascontiguousarray(unpad2d(dxpad, padding))


def avg_pool2d_forward(x: Array, kernel: Pair, stride: Pair, padding: Padding) -> Array:
    """Window means, zero padding counted in the divisor (PyTorch's default)."""
    xp = get_array_module(x)
    out_hw = pooled_size(x.shape, kernel, stride, padding)
    xpad = pad2d(x, padding)
    y = xp.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    for _, _, view in windows(xpad, kernel, stride, (1, 1), out_hw):
        y += view
    y *= 1.0 / (kernel[0] * kernel[1])
    return y


def avg_pool2d_backward(dy: Array, x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                        padding: Padding) -> Array:
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    share = dy * (1.0 / (kernel[0] * kernel[1]))
    if _is_tiling(x_shape, kernel, stride, padding):
        dx = xp.empty(x_shape, dtype=dy.dtype)
        for _, _, view in windows(dx, kernel, stride, (1, 1), dy.shape[-2:]):
            view[...] = share
        return dx
    top, bottom, left, right = padding
    dxpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=dy.dtype)
    for _, _, view in windows(dxpad, kernel, stride, (1, 1), dy.shape[-2:]):
        view += share
    return xp.ascontiguousarray(unpad2d(dxpad, padding))
