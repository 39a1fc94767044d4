"""Max and average pooling over (N, C, H, W), vectorised over kernel offsets.

Max pooling pads with -inf (a zero pad would win over all-negative windows)
and records, per output pixel, the index of the *first* maximum in the
window in row-major kernel order -- PyTorch's tie rule, which matters after
ReLU where whole windows are 0. The index is local to the window (uint8
when the window has at most 255 elements), never a flat index into x.
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .chunks import batch_slices, for_each_chunk
from .im2col import Pair, Padding, output_size, pad2d, unpad2d, windows


CHUNK_ELEMENTS = 1 << 18  # input elements per batch chunk on NumPy (1 MiB of float32)


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


def _is_cropped_tiling(x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                       padding: Padding) -> bool:
    """True when windows do not overlap and there is no padding: they tile the input
    cropped to (OH*KH, OW*KW) (floor mode drops the last rows/columns: 31 -> 15 for 2)."""
    return tuple(kernel) == tuple(stride) and not any(padding)


def _tiles(x: Array, kernel: Pair) -> Array:
    """x (N, C, H, W) cropped to whole windows, as a view (N, C, OH, KH, OW, KW)."""
    n, c, h, w = x.shape
    oh, ow = h // kernel[0], w // kernel[1]
    return x[:, :, :oh * kernel[0], :ow * kernel[1]].reshape(n, c, oh, kernel[0], ow, kernel[1])


def _image_chunks(x_shape: tuple[int, ...], xp) -> list[slice]:
    """Batch chunks of about :data:`CHUNK_ELEMENTS` input elements off CUDA (the window
    views and masks of a chunk stay in cache across the KH*KW passes; on NumPy the
    chunks go to the worker threads), else one."""
    return batch_slices(x_shape, xp, CHUNK_ELEMENTS)


def _max_pool_tiles(x: Array, kernel: Pair) -> tuple[Array, Array]:
    """``(y, argmax)`` for non-overlapping unpadded windows, read in place through
    strided views of x (no copy of the windows), a batch chunk at a time."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    oh, ow = h // kernel[0], w // kernel[1]
    size = kernel[0] * kernel[1]
    index_dtype = xp.uint8 if size <= 255 else xp.int32
    y = xp.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = xp.empty((n, c, oh, ow), dtype=index_dtype)

    def chunk(part: slice) -> None:
        tiles = _tiles(x[part], kernel)
        views = [tiles[:, :, :, i, :, j] for i in range(kernel[0]) for j in range(kernel[1])]
        top, arg = y[part], argmax[part]
        if size == 1:
            top[...] = views[0]
            arg[...] = 0
            return
        xp.maximum(views[0], views[1], out=top)
        for view in views[2:]:
            xp.maximum(top, view, out=top)
        # argmax = number of window elements before the first maximum (PyTorch's tie
        # rule), as in max_pool2d_forward's general path, so both agree to the bit
        before_first_max = views[0] != top
        arg[...] = before_first_max
        for view in views[1:-1]:
            before_first_max &= view != top
            arg += before_first_max

    for_each_chunk(_image_chunks(x.shape, xp), chunk, xp)
    return y, argmax


def _max_pool_tiles_backward(dy: Array, argmax: Array, x_shape: tuple[int, ...],
                             kernel: Pair) -> Array:
    """dx for :func:`_max_pool_tiles`: each window's element at argmax gets dy, the rest
    (and the cropped rows/columns) 0; every element of dx written once, no +=."""
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    oh, ow = dy.shape[-2:]
    dx = xp.empty(x_shape, dtype=dy.dtype)
    if h > oh * kernel[0]:
        dx[:, :, oh * kernel[0]:, :] = 0
    if w > ow * kernel[1]:
        dx[:, :, :oh * kernel[0], ow * kernel[1]:] = 0
    def chunk(part: slice) -> None:
        tiles = _tiles(dx[part], kernel)
        g, arg = dy[part], argmax[part]
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                xp.multiply(g, arg == i * kernel[1] + j, out=tiles[:, :, :, i, :, j])

    for_each_chunk(_image_chunks(x_shape, xp), chunk, xp)
    return dx


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
    if _is_cropped_tiling(x.shape, kernel, stride, padding):
        if not need_argmax:
            return _tiled_max(x, kernel), None
        return _max_pool_tiles(x, kernel)
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
    """Window maxima of non-overlapping unpadded windows, without copying x: first the max of
    the KH rows of each window (whole image rows, contiguous), then of the KW columns.
    Measured 7 ms against 14 ms through the window slabs for (128, 32, 32, 32)."""
    xp = get_array_module(x)
    tiles = _tiles(x, kernel)  # cropped to whole windows (floor mode), still a view
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
    if _is_cropped_tiling(x_shape, kernel, stride, padding):
        return _max_pool_tiles_backward(dy, argmax, x_shape, kernel)
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
