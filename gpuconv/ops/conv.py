"""2-D convolution (cross-correlation, like PyTorch) as im2col + one GEMM.

Two column layouts feed the same GEMM:

- ``"rows"`` (:mod:`.im2col_rows`, stride 1 only): long contiguous copies;
  each output row is computed at padded width and cropped.
- ``"windows"`` (:mod:`.im2col`, any stride): exact (OH, OW) columns.

``method="auto"`` uses "rows" for stride 1 and "windows" otherwise. Both are
kept and tested against each other.
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .im2col import Pair, Padding, col2im, im2col
from .im2col_rows import col2im_rows, im2col_rows, row_geometry
from .workspace import Workspace, scratch

METHODS = ("auto", "rows", "windows")


def resolve_method(method: str, stride: Pair) -> str:
    if method not in METHODS:
        raise ValueError(f"conv2d: method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "rows" if tuple(stride) == (1, 1) else "windows"
    if method == "rows" and tuple(stride) != (1, 1):
        raise ValueError(f"conv2d: method 'rows' needs stride (1, 1), got {tuple(stride)}")
    return method


def conv2d_forward(x: Array, weight: Array, bias: Array | None, stride: Pair,
                   padding: Padding, dilation: Pair, method: str = "auto",
                   workspace: Workspace | None = None) -> tuple[Array, Array]:
    """``y`` (N, O, OH, OW) for ``x`` (N, C, H, W) and ``weight`` (O, C, KH, KW).

    Returns ``(y, cols)``; ``cols`` is what :func:`conv2d_backward` needs
    (pass it the same ``method`` and ``workspace``). With a workspace the
    column and GEMM buffers are reused from call to call; ``y`` is always new.
    """
    xp = get_array_module(x, weight)
    n = x.shape[0]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    method = resolve_method(method, stride)
    if method == "rows":
        cols = im2col_rows(x, kernel, padding, dilation, workspace)
        _, wp, oh, ow, _ = row_geometry(x.shape, kernel, padding, dilation)
    else:
        cols = im2col(x, kernel, stride, padding, dilation, workspace)
        oh, ow = cols.shape[-2:]
        wp = ow
    y_mat = scratch(workspace, "y_mat", (out_channels, n * oh * wp), x.dtype, xp)
    xp.matmul(weight.reshape(out_channels, -1), cols.reshape(-1, n * oh * wp), out=y_mat)
    # crop the padded-width rows, go back to (N, O, OH, OW) and add the bias in one pass
    y_view = y_mat.reshape(out_channels, n, oh, wp)[..., :ow].transpose(1, 0, 2, 3)
    y = xp.empty((n, out_channels, oh, ow), dtype=y_mat.dtype)
    if bias is not None:
        xp.add(y_view, bias.reshape(1, -1, 1, 1), out=y)
    else:
        y[...] = y_view
    return y, cols


def conv2d_backward(dy: Array, cols: Array, weight: Array, x_shape: tuple[int, int, int, int],
                    stride: Pair, padding: Padding, dilation: Pair, need_bias: bool,
                    method: str = "auto", workspace: Workspace | None = None,
                    need_input_grad: bool = True, need_weight_grad: bool = True,
                    ) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d_forward` given ``dy`` (N, O, OH, OW).

    ``dx`` is None when ``need_input_grad`` is False (the first layer of a
    network: its input gradient is never used, and it costs a GEMM + col2im);
    ``dweight`` is None when ``need_weight_grad`` is False (a frozen weight: its
    GEMM is skipped); ``dbias`` is None unless ``need_bias``.
    """
    xp = get_array_module(dy, weight)
    n, out_channels, oh, ow = dy.shape
    kernel = weight.shape[2:]
    method = resolve_method(method, stride)
    wp = row_geometry(x_shape, kernel, padding, dilation)[1] if method == "rows" else ow
    # dy as (O, N, OH, Wp); the cropped columns get zeros so they add nothing below
    dy_mat = scratch(workspace, "dy_mat", (out_channels, n, oh, wp), dy.dtype, xp)
    dy_mat[..., :ow] = dy.transpose(1, 0, 2, 3)
    if wp > ow:
        dy_mat[..., ow:] = 0
    dy_mat = dy_mat.reshape(out_channels, -1)
    dweight = ((dy_mat @ cols.reshape(-1, dy_mat.shape[1]).T).reshape(weight.shape)
               if need_weight_grad else None)
    # float16 (mixed precision) sums of N*OH*OW terms lose digits: accumulate in float32,
    # as cuBLAS does for the float16 GEMMs
    wide = xp.float32 if dy.dtype == xp.float16 else None
    dbias = dy_mat.sum(axis=1, dtype=wide) if need_bias else None
    if not need_input_grad:
        return None, dweight, dbias
    dcols = scratch(workspace, "dcols", cols.shape, dy.dtype, xp)
    xp.matmul(weight.reshape(out_channels, -1).T, dy_mat, out=dcols.reshape(-1, dy_mat.shape[1]))
    if method == "rows":
        dx = col2im_rows(dcols, x_shape, kernel, padding, dilation, workspace)
    else:
        dx = col2im(dcols, x_shape, kernel, stride, padding, dilation, workspace)
    return dx, dweight, dbias
