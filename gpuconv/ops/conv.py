"""2-D convolution (cross-correlation, like PyTorch) as im2col + GEMM.

Two column layouts feed the same GEMM:

- ``"rows"`` (:mod:`.im2col_rows`, stride 1 only): long contiguous copies;
  each output row is computed at padded width and cropped.
- ``"windows"`` (:mod:`.im2col`, any stride): exact (OH, OW) columns.

``method="auto"`` uses "rows" for stride 1 and "windows" otherwise. Both are
kept and tested against each other.

:func:`conv2d_forward` / :func:`conv2d_backward` run either the whole batch as
one GEMM, keeping the columns for backward (the reference path, and the CUDA
path: one cuBLAS call), or -- the default elsewhere (:func:`images_per_chunk`)
-- the same code on chunks of a few images whose columns (~4 MiB; for GEMMs with
few column rows, columns and output together 1 MiB) stay in the CPU cache,
keeping only x (:class:`SavedInput`) and rebuilding a chunk's columns in
backward: at airbench's batch 1024 the whole batch's columns are up
to 0.9 GB, and writing them once and reading them twice through memory cost
more than the GEMMs themselves.
"""
from __future__ import annotations

from typing import Any, Callable

from ..backend import Array, backend_of_module, get_array_module
from ..backend.threads import num_threads, parallel
from .chunks import chunks_batches
from .im2col import Pair, Padding, col2im, im2col, output_size
from .im2col_rows import col2im_rows, im2col_rows, row_geometry
from .reduce import channel_sum
from . import winograd
from .workspace import Workspace, scratch

METHODS = ("auto", "rows", "windows")
# column elements per batch chunk on the CPU (4 MiB of float32): measured at airbench's
# shapes (batch 1024), 1 to 128 images per chunk, anything from 1 Mi to 4 Mi elements
# was within noise; whole-batch columns were 2.2x slower
CHUNK_COLUMN_ELEMENTS = 1 << 20
# a GEMM with few column rows (K = C*KH*KW < THIN_ROWS, e.g. a first layer's 27) does
# little work per byte and runs fastest when a chunk's columns and output together stay
# in L2: at most THIN_CHUNK_ELEMENTS of them (seed-cnn's 3->32 conv at batch 64, one
# worker, fwd + bwd: 11.7-13.0 ms in chunks of 32 images, 8.5 in chunks of 4; its
# 32->64 conv, K = 288, is fastest in the largest chunks)
THIN_ROWS = 64
THIN_CHUNK_ELEMENTS = 1 << 18
WINOGRAD = True  # method="auto" takes Winograd F(2x2, 3x3) where it gains (use_winograd)


def resolve_method(method: str, stride: Pair) -> str:
    if method not in METHODS:
        raise ValueError(f"conv2d: method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "rows" if tuple(stride) == (1, 1) else "windows"
    if method == "rows" and tuple(stride) != (1, 1):
        raise ValueError(f"conv2d: method 'rows' needs stride (1, 1), got {tuple(stride)}")
    return method


def _columns(x: Array, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair,
             method: str, workspace: Workspace | None) -> tuple[Array, int, int, int]:
    """``(cols, OH, OW, Wp)``: x's columns in the layout of ``method`` (already resolved);
    ``Wp`` is the width each output row is computed at (> OW for "rows")."""
    if method == "rows":
        cols = im2col_rows(x, kernel, padding, dilation, workspace)
        _, wp, oh, ow, _ = row_geometry(x.shape, kernel, padding, dilation)
        return cols, oh, ow, wp
    cols = im2col(x, kernel, stride, padding, dilation, workspace)
    oh, ow = cols.shape[-2:]
    return cols, oh, ow, ow


def _bias_sum(dy: Array, dy_mat: Array | None = None) -> Array:
    """The bias gradient, dy (N, O, OH, OW) summed over N, OH, OW: a BLAS matrix-vector
    sum (:func:`channel_sum`), one order whichever driver runs, so chunked and whole-batch
    sums agree to the bit; float16 (mixed precision) sums of N*OH*OW terms lose digits,
    so they accumulate in float32 (``dy_mat``: dy as (O, M), if at hand), as cuBLAS
    does for the float16 GEMMs."""
    xp = get_array_module(dy)
    if dy.dtype != xp.float16:
        return channel_sum(dy)
    if dy_mat is None:
        return dy.sum(axis=(0, 2, 3), dtype=xp.float32)
    return dy_mat.sum(axis=1, dtype=xp.float32)


class SavedInput:
    """What :func:`conv2d_forward` keeps when it ran in batch chunks: the input itself
    (a reference, no copy) and the chunk size; backward rebuilds each chunk's columns.
    ``winograd``: the Winograd-transformed weight (16, C, O) when that path ran."""

    __slots__ = ("x", "chunk", "winograd")

    def __init__(self, x: Array, chunk: int, winograd: Array | None = None) -> None:
        self.x, self.chunk, self.winograd = x, chunk, winograd


def use_winograd(x: Array, weight: Array, stride: Pair, padding: Padding, dilation: Pair,
                 method: str) -> bool:
    """Winograd F(2x2, 3x3) (:mod:`.winograd`) for ``method="auto"`` off CUDA, float32 or
    float64, where :func:`winograd.worthwhile` (3x3, stride 1, >= 64 channels)."""
    return (method == "auto" and WINOGRAD and chunks_batches(get_array_module(x))
            and x.dtype == weight.dtype and x.dtype.kind == "f" and x.dtype.itemsize >= 4
            and winograd.worthwhile(x.shape, weight.shape, stride, padding, dilation))


def _weight_matrix(weight: Array, method: str) -> Array:
    """The GEMM's (O, KH*KW*C) or (O, C*KH*KW) weight, in the row order of ``method``'s
    columns ("rows": kernel offset first; "windows": channel first)."""
    o = weight.shape[0]
    if method == "rows":
        return weight.transpose(0, 2, 3, 1).reshape(o, -1)
    return weight.reshape(o, -1)


def _weight_from_matrix(matrix: Array, weight_shape: tuple, method: str) -> Array:
    """The inverse of :func:`_weight_matrix` for a gradient (a new (O, C, KH, KW) array)."""
    xp = get_array_module(matrix)
    o, c, kh, kw = weight_shape
    if method == "rows":
        return xp.ascontiguousarray(matrix.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))
    return xp.ascontiguousarray(matrix.reshape(weight_shape))


def conv2d_forward(x: Array, weight: Array, bias: Array | None, stride: Pair,
                   padding: Padding, dilation: Pair, method: str = "auto",
                   workspace: Workspace | None = None, chunk: int | None = None,
                   out: Array | None = None, weight_matrix: Array | None = None,
                   ) -> tuple[Array, "Array | SavedInput"]:
    """``y`` (N, O, OH, OW) for ``x`` (N, C, H, W) and ``weight`` (O, C, KH, KW).

    Returns ``(y, saved)``; ``saved`` is what :func:`conv2d_backward` needs (pass it
    the same ``method`` and ``workspace``): the columns when the whole batch ran as
    one GEMM, a :class:`SavedInput` when it ran ``chunk`` images at a time (default
    :func:`images_per_chunk`: the whole batch off the CPU). With a workspace the
    column and GEMM buffers are reused from call to call; ``y`` is new, or ``out``
    (N, O, OH, OW) when given. ``weight_matrix``: :func:`_weight_matrix` of the weight,
    when the caller (a chunk driver) has it already.
    """
    xp = get_array_module(x, weight)
    n = x.shape[0]
    out_channels = weight.shape[0]
    if chunk is None and use_winograd(x, weight, stride, padding, dilation, method):
        return _forward_winograd(x, weight, bias, padding, workspace, out)
    method = resolve_method(method, stride)
    chunk = images_per_chunk(x, weight, stride, padding, dilation) if chunk is None else chunk
    if chunk < n:
        return _forward_chunked(x, weight, bias, stride, padding, dilation, method,
                                workspace, chunk, out), SavedInput(x, chunk)
    cols, oh, ow, wp = _columns(x, weight.shape[2:], stride, padding, dilation, method,
                                workspace)
    y_mat = scratch(workspace, "y_mat", (out_channels, n * oh * wp), x.dtype, xp)
    if weight_matrix is None:
        weight_matrix = _weight_matrix(weight, method)
    xp.matmul(weight_matrix, cols.reshape(-1, n * oh * wp), out=y_mat)
    # crop the padded-width rows, go back to (N, O, OH, OW) and add the bias in one pass
    y_view = y_mat.reshape(out_channels, n, oh, wp)[..., :ow].transpose(1, 0, 2, 3)
    y = xp.empty((n, out_channels, oh, ow), dtype=y_mat.dtype) if out is None else out
    if bias is not None:
        xp.add(y_view, bias.reshape(1, -1, 1, 1), out=y)
    else:
        y[...] = y_view
    return y, cols


def conv2d_backward(dy: Array, saved: "Array | SavedInput | None", weight: Array,
                    x_shape: tuple[int, int, int, int], stride: Pair, padding: Padding,
                    dilation: Pair, need_bias: bool, method: str = "auto",
                    workspace: Workspace | None = None, need_input_grad: bool = True,
                    need_weight_grad: bool = True, dx_out: Array | None = None,
                    weight_matrix: Array | None = None,
                    ) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d_forward` given ``dy`` (N, O, OH, OW)
    and what the forward pass saved.

    ``dx`` is None when ``need_input_grad`` is False (the first layer of a
    network: its input gradient is never used, and it costs a GEMM + col2im);
    ``dweight`` is None when ``need_weight_grad`` is False (a frozen weight: its
    GEMM is skipped, and no columns are rebuilt); ``dbias`` is None unless
    ``need_bias``. ``dx`` is new, or ``dx_out`` (N, C, H, W) when given.
    """
    if isinstance(saved, SavedInput) and saved.winograd is not None:
        return _backward_winograd(dy, saved, weight, padding, need_bias, workspace,
                                  need_input_grad, need_weight_grad)
    if isinstance(saved, SavedInput):
        return _backward_chunked(dy, saved, weight, stride, padding, dilation, need_bias,
                                 method, workspace, need_input_grad, need_weight_grad)
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
    # as (C*KH*KW, O) = cols @ dy.T, then transposed (small): OpenBLAS is 1.1-1.5x faster
    # this way round than dy @ cols.T for O = 32 (measured 156 vs 233 ms at 24->32 @ 31)
    dweight = (_weight_from_matrix((saved.reshape(-1, dy_mat.shape[1]) @ dy_mat.T).T,
                                   weight.shape, method) if need_weight_grad else None)
    dbias = _bias_sum(dy, dy_mat) if need_bias else None
    if not need_input_grad:
        return None, dweight, dbias
    dcols_shape = ((tuple(kernel) + (weight.shape[1], n, oh * wp)) if method == "rows"
                   else (weight.shape[1],) + tuple(kernel) + (n, oh, ow))
    dcols = scratch(workspace, "dcols", dcols_shape, dy.dtype, xp)
    if weight_matrix is None:
        weight_matrix = _weight_matrix(weight, method)
    xp.matmul(weight_matrix.T, dy_mat, out=dcols.reshape(-1, dy_mat.shape[1]))
    if method == "rows":
        dx = col2im_rows(dcols, x_shape, kernel, padding, dilation, workspace, out=dx_out)
    else:
        dx = col2im(dcols, x_shape, kernel, stride, padding, dilation, workspace, out=dx_out)
    return dx, dweight, dbias


# ---- batch-chunked driver (CPU) --------------------------------------------------------------

def images_per_chunk(x: Array, weight: Array, stride: Pair, padding: Padding,
                     dilation: Pair) -> int:
    """Images per batch chunk for x (N, C, H, W): N (one chunk) on CUDA, else
    (:func:`chunks_batches`) the largest power of two whose columns fit
    :data:`CHUNK_COLUMN_ELEMENTS`, or for thin GEMMs (:data:`THIN_ROWS`) whose columns
    and output fit :data:`THIN_CHUNK_ELEMENTS` (at least 1)."""
    n = x.shape[0]
    if not chunks_batches(get_array_module(x)):
        return max(n, 1)
    kernel = weight.shape[2:]
    oh = output_size(x.shape[2], kernel[0], stride[0], padding[0], padding[1], dilation[0])
    wp = (x.shape[3] + padding[2] + padding[3] if tuple(stride) == (1, 1)
          else output_size(x.shape[3], kernel[1], stride[1], padding[2], padding[3], dilation[1]))
    rows = weight.shape[1] * kernel[0] * kernel[1]
    per_image, budget = max(1, rows * oh * wp), CHUNK_COLUMN_ELEMENTS
    if rows < THIN_ROWS:
        per_image, budget = max(1, (rows + weight.shape[0]) * oh * wp), THIN_CHUNK_ELEMENTS
    chunk = 1
    while chunk * 2 * per_image <= budget and chunk * 2 <= n:
        chunk *= 2
    return chunk


def _chunk_work(n: int, chunk: int, workspace: Workspace | None, xp,
                body: Callable[[slice, "Workspace | None", Any], Any],
                start: Callable[[], Any] = lambda: None) -> list:
    """Run ``body(part, ws, state)`` over the batch chunks: on NumPy on :func:`parallel`'s
    workers (BLAS held at one thread; chunk ``i`` on worker ``i % workers``), else in
    order here. Each worker gets ``state = start()`` and its own sub-workspaces (one per
    chunk size: the smaller last chunk never reallocates the others' buffers); returns
    the workers' states in worker order (for partial sums)."""
    starts = list(range(0, n, chunk))

    def work(k: int, workers: int):
        state = start()
        for begin in starts[k::workers]:
            stop = min(begin + chunk, n)
            ws = None if workspace is None else workspace.child(f"worker{k}:chunk{stop - begin}")
            body(slice(begin, stop), ws, state)
        return state

    if len(starts) > 1 and backend_of_module(xp).name == "cpu":
        return parallel(work, min(num_threads(), len(starts)), uses_blas=True)
    return [work(0, 1)]


def _forward_chunked(x: Array, weight: Array, bias: Array | None, stride: Pair,
                     padding: Padding, dilation: Pair, method: str,
                     workspace: Workspace | None, chunk: int, out: Array | None) -> Array:
    xp = get_array_module(x, weight)
    n = x.shape[0]
    kernel = weight.shape[2:]
    oh = output_size(x.shape[2], kernel[0], stride[0], padding[0], padding[1], dilation[0])
    ow = output_size(x.shape[3], kernel[1], stride[1], padding[2], padding[3], dilation[1])
    y = xp.empty((n, weight.shape[0], oh, ow), dtype=x.dtype) if out is None else out
    matrix = _weight_matrix(weight, method)
    _chunk_work(n, chunk, workspace, xp, lambda part, ws, _: conv2d_forward(
        x[part], weight, bias, stride, padding, dilation, method, ws,
        chunk=part.stop - part.start, out=y[part], weight_matrix=matrix))
    return y


def _backward_chunked(dy: Array, saved: SavedInput, weight: Array, stride: Pair,
                      padding: Padding, dilation: Pair, need_bias: bool, method: str,
                      workspace: Workspace | None, need_input_grad: bool,
                      need_weight_grad: bool) -> tuple[Array | None, Array | None, Array | None]:
    """Each chunk's columns rebuilt (in cache; not at all without a weight gradient),
    the chunks' weight gradients summed (float16: in float32, then back to float16, as
    the whole-batch path returns it); the bias gradient from the whole dy at once."""
    xp = get_array_module(dy, saved.x, weight)
    x = saved.x
    method = resolve_method(method, stride)
    dx = xp.empty(x.shape, dtype=dy.dtype) if need_input_grad else None
    wide = xp.float32 if dy.dtype == xp.float16 else dy.dtype
    matrix = _weight_matrix(weight, method)

    def chunk(part: slice, ws: Workspace | None, dweight: Array | None) -> None:
        cols = (_columns(x[part], weight.shape[2:], stride, padding, dilation, method, ws)[0]
                if need_weight_grad else None)
        _, dw, _ = conv2d_backward(dy[part], cols, weight, x[part].shape, stride, padding,
                                   dilation, False, method, ws, need_input_grad,
                                   need_weight_grad, None if dx is None else dx[part],
                                   weight_matrix=matrix)
        if dweight is not None:
            dweight += dw

    partials = _chunk_work(x.shape[0], saved.chunk, workspace, xp, chunk, lambda: (
        xp.zeros(weight.shape, dtype=wide) if need_weight_grad else None))
    dweight = _sum_in_order(partials)
    dbias = _bias_sum(dy) if need_bias else None
    if dweight is not None and dweight.dtype != dy.dtype:
        dweight = dweight.astype(dy.dtype)
    return dx, dweight, dbias


def _forward_winograd(x: Array, weight: Array, bias: Array | None, padding: Padding,
                      workspace: Workspace | None, out: Array | None,
                      ) -> tuple[Array, SavedInput]:
    xp = get_array_module(x, weight)
    n = x.shape[0]
    u = winograd.filter_transform(weight)
    oh, ow = x.shape[2] + padding[0] + padding[1] - 2, x.shape[3] + padding[2] + padding[3] - 2
    y = xp.empty((n, weight.shape[0], oh, ow), dtype=x.dtype) if out is None else out
    # at least one chunk per worker: at batch 64 of 8x8 images the ~1024-tile chunk is the
    # whole batch, and a second worker would idle (64->128 channels, fwd + bwd on 2 workers:
    # 25-34 ms as one chunk, 16-17 ms as two; im2col 20.6-23.6 ms)
    chunk = min(winograd.tiles_per_chunk(x.shape, padding), max(1, -(-n // num_threads())))
    _chunk_work(n, chunk, workspace, xp, lambda part, ws, _: winograd.forward_chunk(
        x[part], u, bias, padding, y[part], ws))
    return y, SavedInput(x, chunk, u)


def _backward_winograd(dy: Array, saved: SavedInput, weight: Array, padding: Padding,
                       need_bias: bool, workspace: Workspace | None, need_input_grad: bool,
                       need_weight_grad: bool,
                       ) -> tuple[Array | None, Array | None, Array | None]:
    xp = get_array_module(dy, saved.x, weight)
    x, u = saved.x, saved.winograd
    dx = xp.empty(x.shape, dtype=dy.dtype) if need_input_grad else None
    partials = _chunk_work(
        x.shape[0], saved.chunk, workspace, xp,
        lambda part, ws, du: winograd.backward_chunk(dy[part], x[part], u, padding,
                                                     None if dx is None else dx[part], du, ws),
        lambda: xp.zeros(u.shape, dtype=u.dtype) if need_weight_grad else None)
    du = _sum_in_order(partials)
    dweight = winograd.filter_transform_adjoint(du) if need_weight_grad else None
    return dx, dweight, _bias_sum(dy) if need_bias else None


def _sum_in_order(partials: list) -> Array | None:
    """The workers' partial sums added in worker order (None when there are none)."""
    if partials[0] is None:
        return None
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return total
