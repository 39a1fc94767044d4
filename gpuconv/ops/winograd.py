"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1, undilated kernels (the CPU path).

Each 2x2 block of outputs is computed from the 4x4 input tile around it as
``Y = A^T [(G g G^T) . (B^T d B)] A`` (Lavin & Gray, 2015): 16 products per 4
outputs and channel pair instead of 36, so the GEMMs -- one per position
``xi`` of the 4x4 "frequency" grid, ``(T, C) @ (C, O)`` over the T tiles of a
batch chunk -- do 2.25x fewer multiply-adds than im2col's. The transforms are
additions only (``G`` has halves), and the whole thing is exact in exact
arithmetic; in float32 the error is a few times that of direct summation.

Tiles live channels-last, ``(rows, cols, images, channels)``: every transform
pass then runs over long contiguous (images x channels) rows, where NumPy is
fast, instead of the short strided rows of 2x2 steps over an image.

Backward is the exact adjoint of the same linear maps: the output transform's
adjoint takes dy to ``dM`` (T, O) per xi; ``dU = V^T dM`` (summed over the
chunks, then through the filter transform's adjoint) gives the weight
gradient, and ``dV = dM U^T`` through the input transform's adjoint (a
scatter-add of overlapping tiles) the input gradient.

Worth it only where the GEMMs dominate (channels >= 64 both ways, outputs of
at least 6x6: :func:`worthwhile`); elsewhere im2col is as fast or faster.
"""
from __future__ import annotations

from ..backend import Array, get_array_module
from .workspace import Workspace, scratch

MIN_CHANNELS = 64   # below this the (T, C) @ (C, O) GEMMs are too thin to gain
MIN_OUTPUT = 6      # smaller images waste most of their 2x2 tiles on padding


def worthwhile(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], stride, padding,
               dilation) -> bool:
    """Whether this convolution is one Winograd F(2x2, 3x3) handles and gains on."""
    _, c, h, w = x_shape
    o, _, kh, kw = weight_shape
    oh, ow = h + padding[0] + padding[1] - 2, w + padding[2] + padding[3] - 2
    return ((kh, kw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and min(c, o) >= MIN_CHANNELS and min(oh, ow) >= MIN_OUTPUT
            and max(padding) <= 2)


def tiles_per_chunk(x_shape: tuple[int, ...], padding) -> int:
    """Images per batch chunk: about 1024 tiles, so each GEMM has rows enough (measured
    97 GFLOP/s at 128 tiles, 117 at 512 for 128 channels), at least one image."""
    _, _, h, w = x_shape
    oh, ow = h + padding[0] + padding[1] - 2, w + padding[2] + padding[3] - 2
    per_image = ((oh + 1) // 2) * ((ow + 1) // 2)
    return max(1, 1024 // per_image)


# ---- the three transforms and their adjoints -------------------------------------------------
# B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
# G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
# A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

def filter_transform(weight: Array) -> Array:
    """``U = G g G^T`` per channel pair: weight (O, C, 3, 3) -> (16, C, O), xi = 4a + b."""
    xp = get_array_module(weight)
    g = weight.transpose(2, 3, 1, 0)                  # (3, 3, C, O)
    rows = xp.empty((4, 3) + g.shape[2:], dtype=weight.dtype)
    _g_rows(xp, g, rows)
    u = xp.empty((4, 4) + g.shape[2:], dtype=weight.dtype)
    _g_rows(xp, rows.transpose(1, 0, 2, 3), u.transpose(1, 0, 2, 3))
    return u.reshape((16,) + g.shape[2:])


def _g_rows(xp, g: Array, out: Array) -> None:
    """``out[a] = sum_i G[a, i] g[i]`` along axis 0 (3 -> 4)."""
    out[0] = g[0]
    xp.add(g[0], g[2], out=out[1])
    xp.subtract(out[1], g[1], out=out[2])
    out[1] += g[1]
    out[1] *= 0.5
    out[2] *= 0.5
    out[3] = g[2]


def filter_transform_adjoint(du: Array) -> Array:
    """The weight gradient from ``dU`` (16, C, O): ``G^T dU G`` -> (O, C, 3, 3)."""
    xp = get_array_module(du)
    d = du.reshape((4, 4) + du.shape[1:])
    rows = xp.empty((3, 4) + du.shape[1:], dtype=du.dtype)
    _gt_rows(xp, d, rows)
    g = xp.empty((3, 3) + du.shape[1:], dtype=du.dtype)
    _gt_rows(xp, rows.transpose(1, 0, 2, 3), g.transpose(1, 0, 2, 3))
    return xp.ascontiguousarray(g.transpose(3, 2, 0, 1))


def _gt_rows(xp, d: Array, out: Array) -> None:
    """``out[i] = sum_a G[a, i] d[a]`` along axis 0 (4 -> 3)."""
    half = xp.add(d[1], d[2])
    half *= 0.5
    xp.add(d[0], half, out=out[0])
    xp.subtract(d[1], d[2], out=out[1])
    out[1] *= 0.5
    xp.add(d[3], half, out=out[2])


def _bt_pass(xp, d: list, out: Array) -> None:
    """``out[a] = sum_k B^T[a, k] d[k]`` for the four views ``d`` (one tile axis)."""
    xp.subtract(d[0], d[2], out=out[0])
    xp.add(d[1], d[2], out=out[1])
    xp.subtract(d[2], d[1], out=out[2])
    xp.subtract(d[1], d[3], out=out[3])


def input_transform(xq: Array, th: int, tw: int, ws: Workspace | None) -> Array:
    """``V = B^T d B`` for every 4x4 tile (stride 2) of xq (Hq, Wq, nb, C):
    (16, th*tw*nb, C), xi = 4a + b."""
    xp = get_array_module(xq)
    wq, nb, c = xq.shape[1:]
    rows = scratch(ws, "wino_rows", (4, th, wq, nb, c), xq.dtype, xp)
    _bt_pass(xp, [xq[k:k + 2 * th:2] for k in range(4)], rows)
    v = scratch(ws, "wino_v", (4, 4, th, tw, nb, c), xq.dtype, xp)
    for a in range(4):
        _bt_pass(xp, [rows[a][:, m:m + 2 * tw:2] for m in range(4)], v[a])
    return v.reshape(16, th * tw * nb, c)


def _bt_adjoint_into(xp, dv: list, out: Array) -> None:
    """``out[2t + k] = sum over tiles t, a of B^T[a, k] dv[a][t]`` along axis 0 (tiles
    overlap by 2): ``dv`` four arrays (T, ...), ``out`` (2T + 2, ...) written, not added
    to -- even rows get tile t's k = 0 and tile t-1's k = 2 terms, odd rows k = 1 and 3:
    two writes and five in-place passes, no zero fill."""
    t = dv[0].shape[0]
    even, odd = out[0::2], out[1::2]                 # each T + 1 rows
    even[:t] = dv[0]
    even[t] = 0
    shifted = even[1:]
    shifted += dv[1]
    shifted += dv[2]
    shifted -= dv[0]                                 # B^T[:, 2] = (-1, 1, 1, 0)
    xp.subtract(dv[1], dv[2], out=odd[:t])
    odd[:t] += dv[3]                                 # B^T[:, 1] = (0, 1, -1, 1)
    odd[t] = 0
    odd[1:] -= dv[3]                                 # B^T[:, 3] = (0, 0, 0, -1)


def input_transform_adjoint(dv: Array, hq: int, wq: int, th: int, tw: int,
                            ws: Workspace | None) -> Array:
    """The adjoint of :func:`input_transform`: dV (16, th*tw*nb, C) -> dxq (hq, wq, nb, C)."""
    xp = get_array_module(dv)
    c = dv.shape[-1]
    nb = dv.shape[1] // (th * tw)
    d = dv.reshape(4, 4, th, tw, nb, c)
    rows = scratch(ws, "wino_drows", (4, th, wq, nb, c), dv.dtype, xp)
    for a in range(4):  # along the columns: tile axis 1, moved to the front (views)
        _bt_adjoint_into(xp, [xp.moveaxis(d[a, b], 1, 0) for b in range(4)],
                         xp.moveaxis(rows[a], 1, 0))
    dxq = scratch(ws, "wino_dxq", (hq, wq, nb, c), dv.dtype, xp)
    _bt_adjoint_into(xp, [rows[a] for a in range(4)], dxq)
    return dxq


def _at_pass(xp, m: list, out: Array) -> None:
    """``out[i] = sum_a A^T[i, a] m[a]``: out[0] = m0 + m1 + m2, out[1] = m1 - m2 - m3."""
    xp.add(m[0], m[1], out=out[0])
    out[0] += m[2]
    xp.subtract(m[1], m[2], out=out[1])
    out[1] -= m[3]


def output_transform(m: Array, th: int, tw: int, ws: Workspace | None) -> Array:
    """``Y = A^T M A``: M (16, th*tw*nb, O) -> (2, 2, th, tw, nb, O)."""
    xp = get_array_module(m)
    o = m.shape[-1]
    nb = m.shape[1] // (th * tw)
    mm = m.reshape(4, 4, th, tw, nb, o)
    rows = scratch(ws, "wino_mrows", (2, 4, th, tw, nb, o), m.dtype, xp)
    _at_pass(xp, [mm[a] for a in range(4)], rows)
    y = scratch(ws, "wino_y", (2, 2, th, tw, nb, o), m.dtype, xp)
    for i in range(2):
        _at_pass(xp, [rows[i, b] for b in range(4)], y[i])
    return y


def _at_adjoint_pass(xp, dy: list, out: Array) -> None:
    """``out[a] = sum_i A^T[i, a] dy[i]``: dy0, dy0 + dy1, dy0 - dy1, -dy1."""
    out[0] = dy[0]
    xp.add(dy[0], dy[1], out=out[1])
    xp.subtract(dy[0], dy[1], out=out[2])
    xp.negative(dy[1], out=out[3])


def output_transform_adjoint(dyt: Array, ws: Workspace | None) -> Array:
    """The adjoint of :func:`output_transform`: dY (2, 2, th, tw, nb, O) -> dM (16, T, O)."""
    xp = get_array_module(dyt)
    th, tw, nb, o = dyt.shape[2:]
    rows = scratch(ws, "wino_dmrows", (4, 2, th, tw, nb, o), dyt.dtype, xp)
    _at_adjoint_pass(xp, [dyt[i] for i in range(2)], rows)
    dm = scratch(ws, "wino_dm", (4, 4, th, tw, nb, o), dyt.dtype, xp)
    for a in range(4):
        _at_adjoint_pass(xp, [rows[a, j] for j in range(2)], dm[a])
    return dm.reshape(16, th * tw * nb, o)


# ---- one batch chunk -----------------------------------------------------------------------

def _geometry(x_shape, padding):
    _, _, h, w = x_shape
    oh, ow = h + padding[0] + padding[1] - 2, w + padding[2] + padding[3] - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    return oh, ow, th, tw, 2 * th + 2, 2 * tw + 2


def _tiles_input(x: Array, padding, ws: Workspace | None) -> tuple[Array, tuple]:
    """x (nb, C, H, W) zero-padded into the channels-last tile grid (Hq, Wq, nb, C); the
    border is zeroed once per buffer (the interior is all that is rewritten)."""
    xp = get_array_module(x)
    nb, c, h, w = x.shape
    geometry = _geometry(x.shape, padding)
    hq, wq = geometry[4:]
    xq = scratch(ws, "wino_xq", (hq, wq, nb, c), x.dtype, xp, "zeros_once",
                 layout=(h, w, padding[0], padding[2]))
    xq[padding[0]:padding[0] + h, padding[2]:padding[2] + w] = x.transpose(2, 3, 0, 1)
    return xq, geometry


def forward_chunk(x: Array, u: Array, bias: Array | None, padding, out: Array,
                  ws: Workspace | None) -> None:
    """y = conv3x3(x) for one chunk x (nb, C, H, W), ``u`` = :func:`filter_transform`
    (16, C, O), into ``out`` (nb, O, OH, OW) (bias added when given)."""
    xp = get_array_module(x, u)
    xq, (oh, ow, th, tw, _, _) = _tiles_input(x, padding, ws)
    v = input_transform(xq, th, tw, ws)
    m = scratch(ws, "wino_m", (16, v.shape[1], u.shape[2]), x.dtype, xp)
    xp.matmul(v, u, out=m)
    y = output_transform(m, th, tw, ws)                  # (2, 2, th, tw, nb, O)
    for i, j, rows, cols in _parities(oh, ow):
        block = y[i, j, :rows, :cols].transpose(2, 3, 0, 1)   # out[:, :, 2t+i, 2s+j]
        if bias is not None:
            xp.add(block, bias.reshape(1, -1, 1, 1), out=out[:, :, i::2, j::2])
        else:
            out[:, :, i::2, j::2] = block


def _parities(oh: int, ow: int):
    """``(i, j, rows, cols)``: output pixels (2t+i, 2s+j) of the 2x2 blocks, and how many
    of the blocks' rows/columns fall inside the (oh, ow) image."""
    for i in range(2):
        for j in range(2):
            yield i, j, (oh - i + 1) // 2, (ow - j + 1) // 2


def backward_chunk(dy: Array, x: Array, u: Array, padding, dx_out: Array | None,
                   du: Array | None, ws: Workspace | None) -> None:
    """One chunk's gradients: ``dx_out`` (nb, C, H, W) written when given, ``du``
    (16, C, O) accumulated (+=) when given (the weight gradient before
    :func:`filter_transform_adjoint`)."""
    xp = get_array_module(dy, x, u)
    nb, c, h, w = x.shape
    o = u.shape[2]
    oh, ow, th, tw, hq, wq = _geometry(x.shape, padding)
    # dy into the (2, 2, th, tw, nb, O) layout of Y, zero where tiles overhang the image
    dyt = scratch(ws, "wino_dyt", (2, 2, th, tw, nb, o), dy.dtype, xp, "zeros_once",
                  layout=(oh, ow))                       # the overhang is never written
    for i, j, rows, cols in _parities(oh, ow):
        dyt[i, j, :rows, :cols] = dy[:, :, i::2, j::2].transpose(2, 3, 0, 1)
    dm = output_transform_adjoint(dyt, ws)               # (16, T, O)
    if du is not None:
        xq, _ = _tiles_input(x, padding, ws)
        v = input_transform(xq, th, tw, ws)              # (16, T, C)
        du += xp.matmul(v.transpose(0, 2, 1), dm)
    if dx_out is None:
        return
    dv = scratch(ws, "wino_dv", (16, dm.shape[1], c), dy.dtype, xp)
    xp.matmul(dm, u.transpose(0, 2, 1), out=dv)
    dxq = input_transform_adjoint(dv, hq, wq, th, tw, ws)
    dx_out[...] = dxq[padding[0]:padding[0] + h, padding[2]:padding[2] + w].transpose(2, 3, 0, 1)
