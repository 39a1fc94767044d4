"""im2col / col2im: turn sliding windows into columns for one matrix multiply.

Layout choice: columns are ``(C, KH, KW, N, OH, OW)``. Flattened, that is a
``(C*KH*KW, N*OH*OW)`` matrix, so the convolution is *one* large GEMM
``W(O, C*KH*KW) @ cols`` -- the shape BLAS and cuBLAS are fastest at -- and
the weight gradient is ``dY(O, N*OH*OW) @ cols.T`` with no copy of ``cols``.

Both functions loop only over the KH*KW kernel offsets; each iteration copies
(or adds) one strided slice covering every image, channel and output pixel.
"""
from __future__ import annotations

from typing import Iterator

from ..backend import Array, get_array_module
from .workspace import Workspace, scratch

Pair = tuple[int, int]
Padding = tuple[int, int, int, int]  # top, bottom, left, right


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                dilation: int) -> int:
    """Output length of a sliding window (floor mode, like PyTorch)."""
    extent = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - extent) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding giving ``ceil(size / stride)`` outputs.

    For stride 1 this equals PyTorch's ``padding='same'``; for larger strides
    it follows TensorFlow/Keras ('same' puts the odd pixel after).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def pad2d(x: Array, padding: Padding, value: float = 0.0) -> Array:
    """Pad the last two axes of ``x`` (..., H, W) by (top, bottom, left, right)."""
    top, bottom, left, right = padding
    if not (top or bottom or left or right):
        return x
    xp = get_array_module(x)
    h, w = x.shape[-2:]
    out = xp.full(x.shape[:-2] + (h + top + bottom, w + left + right), value, dtype=x.dtype)
    out[..., top:top + h, left:left + w] = x
    return out


def unpad2d(x: Array, padding: Padding) -> Array:
    top, bottom, left, right = padding
    h, w = x.shape[-2:]
    return x[..., top:h - bottom, left:w - right]


def windows(x: Array, kernel: Pair, stride: Pair, dilation: Pair,
            out_hw: Pair) -> Iterator[tuple[int, int, Array]]:
    """Yield ``(i, j, view)`` for each kernel offset; ``view`` is ``x[..., OH, OW]``.

    ``view[..., oh, ow] == x[..., oh*sh + i*dh, ow*sw + j*dw]``: the input
    pixel that kernel offset (i, j) sees in output position (oh, ow).
    """
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    for i in range(kh):
        top = i * dh
        for j in range(kw):
            left = j * dw
            yield i, j, x[..., top:top + sh * (oh - 1) + 1:sh, left:left + sw * (ow - 1) + 1:sw]


def im2col(x: Array, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair,
           workspace: Workspace | None = None) -> Array:
    """Columns of ``x`` (N, C, H, W) as an array (C, KH, KW, N, OH, OW), dtype of x."""
    n, c, h, w = x.shape
    oh = output_size(h, kernel[0], stride[0], padding[0], padding[1], dilation[0])
    ow = output_size(w, kernel[1], stride[1], padding[2], padding[3], dilation[1])
    xp = get_array_module(x)
    # (C, N, H, W) so every copied slice below lands in a contiguous block
    x_cnhw = pad2d(x, padding).transpose(1, 0, 2, 3)
    cols = scratch(workspace, "cols", (c, kernel[0], kernel[1], n, oh, ow), x.dtype, xp)
    for i, j, view in windows(x_cnhw, kernel, stride, dilation, (oh, ow)):
        cols[:, i, j] = view
    return cols


def col2im(cols: Array, x_shape: tuple[int, int, int, int], kernel: Pair, stride: Pair,
           padding: Padding, dilation: Pair, workspace: Workspace | None = None,
           out: Array | None = None) -> Array:
    """Adjoint of :func:`im2col`: sum columns (C, KH, KW, N, OH, OW) back into (N, C, H, W),
    a new array or ``out`` (N, C, H, W)."""
    n, c, h, w = x_shape
    top, bottom, left, right = padding
    oh, ow = cols.shape[-2:]
    xp = get_array_module(cols)
    dx_cnhw = scratch(workspace, "dx_cnhw", (c, n, h + top + bottom, w + left + right),
                      cols.dtype, xp, "zeros")
    for i, j, view in windows(dx_cnhw, kernel, stride, dilation, (oh, ow)):
        view += cols[:, i, j]
    dx = unpad2d(dx_cnhw, padding).transpose(1, 0, 2, 3)
    if out is None:
        return xp.ascontiguousarray(dx)
    out[...] = dx
    return out
