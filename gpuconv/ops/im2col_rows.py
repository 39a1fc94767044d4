"""Row-run im2col for stride-1 convolutions: long contiguous copies instead of short rows.

The padded input is stored per (channel, image) as one flat run of
``Hp * Wp`` pixels (plus a small tail margin). For stride 1, the pixels that
kernel offset (i, j) sees for *all* output positions are then one contiguous
run of ``OH * Wp`` values starting at ``i*dh*Wp + j*dw``: every output row
is computed at full padded width ``Wp`` and the ``Wp - OW`` extra columns at
the end of each row are dropped afterwards. Copying C*N long runs is several
times faster than copying C*N*OH short rows of OW values (the general
:func:`gpuconv.ops.im2col.im2col`), at the cost of ``Wp / OW`` more columns.

Columns are ``(KH, KW, C, N, OH * Wp)``, kernel offset first, so that each
offset's columns are one contiguous block: im2col's copies and col2im's adds
then have one contiguous side (col2im measured 1.5x faster than with
``(C, KH, KW, ...)``, at 24 channels, 31x31). Flattened, ``(KH*KW*C, N*OH*Wp)``:
the GEMM's weight matrix is ``weight.transpose(0, 2, 3, 1)`` (O, KH, KW, C).
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .im2col import Pair, Padding
from .workspace import Workspace, scratch


def row_geometry(x_shape: tuple[int, ...], kernel: Pair, padding: Padding,
                 dilation: Pair) -> tuple[int, int, int, int, int]:
    """``(Hp, Wp, OH, OW, margin)`` of a stride-1 window over (N, C, H, W)."""
    _, _, h, w = x_shape
    top, bottom, left, right = padding
    hp, wp = h + top + bottom, w + left + right
    oh = hp - dilation[0] * (kernel[0] - 1)
    ow = wp - dilation[1] * (kernel[1] - 1)
    margin = dilation[1] * (kernel[1] - 1)  # the last run overhangs by this much
    return hp, wp, oh, ow, margin


def _padded_runs(x: Array, padding: Padding, margin: int,
                 workspace: Workspace | None = None) -> Array:
    """x (N, C, H, W) zero-padded into (C, N, Hp*Wp + margin).

    From a workspace the buffer is zeroed once: later calls rewrite only the
    interior, so the zero border and margin stay valid.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    top, bottom, left, right = padding
    hp, wp = h + top + bottom, w + left + right
    runs = scratch(workspace, "x_runs", (c, n, hp * wp + margin), x.dtype, xp, "zeros_once",
                   layout=(h, w, top, left))
    image = runs[:, :, :hp * wp].reshape(c, n, hp, wp)
    image[:, :, top:top + h, left:left + w] = x.transpose(1, 0, 2, 3)
    return runs


def im2col_rows(x: Array, kernel: Pair, padding: Padding, dilation: Pair,
                workspace: Workspace | None = None) -> Array:
    """Stride-1 columns of x (N, C, H, W): array (KH, KW, C, N, OH*Wp), dtype of x."""
    xp = get_array_module(x)
    n, c = x.shape[:2]
    hp, wp, oh, ow, margin = row_geometry(x.shape, kernel, padding, dilation)
    runs = _padded_runs(x, padding, margin, workspace)
    length = oh * wp
    cols = scratch(workspace, "cols", (kernel[0], kernel[1], c, n, length), x.dtype, xp)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start = i * dilation[0] * wp + j * dilation[1]
            cols[i, j] = runs[:, :, start:start + length]
    return cols


def col2im_rows(cols: Array, x_shape: tuple[int, int, int, int], kernel: Pair,
                padding: Padding, dilation: Pair, workspace: Workspace | None = None,
                out: Array | None = None) -> Array:
    """Adjoint of :func:`im2col_rows`: (KH, KW, C, N, OH*Wp) -> dx (N, C, H, W) (a new
    array, or written into ``out``).

    Entries of ``cols`` in the dropped columns must be zero (they are when
    they come from ``W.T @ dy`` with zero-filled dropped columns of dy).
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    top, bottom, left, right = padding
    hp, wp, oh, ow, margin = row_geometry(x_shape, kernel, padding, dilation)
    length = oh * wp
    runs = scratch(workspace, "dx_runs", (c, n, hp * wp + margin), cols.dtype, xp)
    # offset (0, 0) covers runs[..., :length]: written, not added, so only the short
    # rest needs zeros (a whole zeroing pass less)
    runs[:, :, :length] = cols[0, 0]
    runs[:, :, length:] = 0
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            if i or j:
                start = i * dilation[0] * wp + j * dilation[1]
                runs[:, :, start:start + length] += cols[i, j]
    dx = runs[:, :, :hp * wp].reshape(c, n, hp, wp)[:, :, top:top + h, left:left + w]
    if out is None:
        return xp.ascontiguousarray(dx.transpose(1, 0, 2, 3))
    out[...] = dx.transpose(1, 0, 2, 3)
    return out
