"""2-D convolution (cross-correlation, like PyTorch) as im2col + one GEMM."""
from __future__ import annotations

from ..backend import Array, get_array_module
from .im2col import Pair, Padding, col2im, im2col


def conv2d_forward(x: Array, weight: Array, bias: Array | None, stride: Pair,
                   padding: Padding, dilation: Pair) -> tuple[Array, Array]:
    """``y`` (N, O, OH, OW) for ``x`` (N, C, H, W) and ``weight`` (O, C, KH, KW).

    Returns ``(y, cols)``; ``cols`` (C, KH, KW, N, OH, OW) is what the
    backward pass needs.
    """
    xp = get_array_module(x, weight)
    n = x.shape[0]
    out_channels = weight.shape[0]
    cols = im2col(x, weight.shape[2:], stride, padding, dilation)
    oh, ow = cols.shape[-2:]
    y = weight.reshape(out_channels, -1) @ cols.reshape(-1, n * oh * ow)  # (O, N*OH*OW)
    if bias is not None:
        y += bias[:, None]
    y = y.reshape(out_channels, n, oh, ow).transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(y), cols


def conv2d_backward(dy: Array, cols: Array, weight: Array, x_shape: tuple[int, int, int, int],
                    stride: Pair, padding: Padding, dilation: Pair,
                    need_bias: bool) -> tuple[Array, Array, Array | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d_forward` given ``dy`` (N, O, OH, OW)."""
    xp = get_array_module(dy, weight)
    out_channels = weight.shape[0]
    dy_mat = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(out_channels, -1)
    cols_mat = cols.reshape(-1, dy_mat.shape[1])
    dweight = (dy_mat @ cols_mat.T).reshape(weight.shape)
    dbias = dy_mat.sum(axis=1) if need_bias else None
    dcols = weight.reshape(out_channels, -1).T @ dy_mat
    dx = col2im(dcols.reshape(cols.shape), x_shape, weight.shape[2:], stride, padding, dilation)
    return dx, dweight, dbias
