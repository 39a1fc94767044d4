"""Conv workspaces: reused buffers never leak one call's data into the next."""
import numpy as np
import pytest

from gpuconv.layers import Conv2D
from gpuconv.ops.conv import conv2d_forward
from gpuconv.ops.workspace import Workspace


def test_same_layer_on_transposed_geometries_matches_fresh_buffers():
    # 8x10 and 10x8 inputs pad to buffers of the same flat size (10*12 == 12*10):
    # a zero border kept from the first geometry must not be reused for the second
    rng = np.random.default_rng(0)
    layer = Conv2D(3, 4, 3, padding=1).astype("float64")
    for shape in [(2, 3, 8, 10), (2, 3, 10, 8), (2, 3, 8, 10)]:
        x = rng.standard_normal(shape)
        y = layer.forward(x)
        fresh, _ = conv2d_forward(x, layer.weight.data, layer.bias.data, (1, 1), (1, 1, 1, 1),
                                  (1, 1))
        np.testing.assert_allclose(y, fresh, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fill", ["zeros", "zeros_once", "empty"])
def test_workspace_reuse_rules(fill):
    ws = Workspace()
    a, fresh = ws.get("buf", (4, 5), np.float32, np, fill, layout="A")
    assert fresh and a.shape == (4, 5) and a.dtype == np.float32
    a[...] = 7
    b, fresh = ws.get("buf", (4, 5), np.float32, np, fill, layout="A")
    assert b is a and not fresh
    assert (b == 0).all() if fill == "zeros" else (b == 7).all()
    c, fresh = ws.get("buf", (4, 5), np.float32, np, fill, layout="B")
    assert fresh and c is not a
    d, fresh = ws.get("buf", (4, 5), np.float64, np, fill, layout="B")
    assert fresh and d.dtype == np.float64
