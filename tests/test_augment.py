"""Device-side augmentations: each checked on known images, on the CPU and on
the strict fake CuPy, for determinism under gpuconv.seed and serialisation."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import get_array_module, to_device, to_numpy
from gpuconv.data import augment as A
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()


def dev(x, device):
    return to_device(np.ascontiguousarray(x), device)


def run(aug, x, device):
    """Apply on ``device``; check the result stays there and the input is untouched."""
    before = x.copy()
    xd = dev(x, device)
    out = aug(xd)
    assert get_array_module(out) is get_array_module(xd)
    assert out is not xd
    np.testing.assert_array_equal(to_numpy(xd), before)
    return to_numpy(out)


def gradient_images(n, c=3, h=8, w=8):
    """Every pixel distinct: value depends on (image, channel, row, column)."""
    return (np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w) + 1) / (n * c * h * w)


# -- flip ---------------------------------------------------------------------

def test_flip(device):
    x = gradient_images(64)
    out = run(A.RandomHorizontalFlip(0.5), x, device)
    flipped = np.array([np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped ^ kept)  # each image exactly one of the two
    assert 10 < flipped.sum() < 54
    np.testing.assert_array_equal(run(A.RandomHorizontalFlip(0.0), x, device), x)
    np.testing.assert_array_equal(run(A.RandomHorizontalFlip(1.0), x, device), x[..., ::-1])


# -- crop ---------------------------------------------------------------------

def test_random_crop_offsets_and_content(device):
    n, pad = 60, 3
    x = gradient_images(n, h=10, w=12)
    out = run(A.RandomCrop((10, 12), padding=pad), x, device)
    assert out.shape == x.shape and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = []
    for i in range(n):
        matches = [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                   if np.array_equal(out[i], padded[i, :, oy:oy + 10, ox:ox + 12])]
        assert len(matches) == 1, (i, matches)
        offsets.append(matches[0])
    offsets = np.array(offsets)
    assert offsets.min() >= 0 and offsets.max() <= 2 * pad
    for axis in (0, 1):  # both extreme offsets occur (the range is inclusive)
        assert {0, 2 * pad} <= set(offsets[:, axis].tolist())
    assert len({tuple(o) for o in offsets}) > 15  # offsets vary per image
    assert (offsets != pad).any(axis=1).mean() > 0.5  # content actually shifted


def test_random_crop_without_padding_and_fill(device):
    x = gradient_images(20, c=2, h=9, w=9)
    out = run(A.RandomCrop(5, padding=0), x, device)
    assert out.shape == (20, 2, 5, 5)
    for i in range(20):
        assert any(np.array_equal(out[i], x[i, :, a:a + 5, b:b + 5])
                   for a in range(5) for b in range(5))
    big = run(A.RandomCrop(13, padding=2, fill=[-1.0, -2.0]), x, device)  # whole padded image
    np.testing.assert_array_equal(big[:, :, 2:11, 2:11], x)
    assert (big[:, 0, 0] == -1).all() and (big[:, 1, :, -1] == -2).all()
    with pytest.raises(ValueError, match="larger than the padded"):
        A.RandomCrop(14, padding=2)(dev(x, device))


# -- cutout -------------------------------------------------------------------

def _box(mask):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows, cols


def test_cutout_zeroes_one_clipped_square(device):
    n, h, w, length = 300, 16, 16, 6
    x = np.ones((n, 3, h, w), np.float32)
    out = run(A.Cutout(length), x, device)
    clipped = 0
    for img in out:
        hole = img == 0
        assert (hole == hole[0]).all()  # same pixels in every channel
        rows, cols = _box(hole[0])
        # a filled rectangle ...
        assert hole[0].sum() == len(rows) * len(cols)
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
        assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
        # ... of side `length`, shorter only where it meets the border
        for idx, size in ((rows, h), (cols, w)):
            if 0 < idx[0] and idx[-1] < size - 1:
                assert len(idx) == length
            else:
                assert length // 2 <= len(idx) <= length
                clipped += len(idx) < length
        assert (img[~hole] == 1).all()
    assert clipped > 10


def test_cutout_holes_fill_and_cover(device):
    x = np.ones((50, 3, 10, 10), np.float32)
    two = run(A.Cutout(3, n_holes=2), x, device)
    holes = (two[:, 0] == 0).sum(axis=(1, 2))
    assert holes.max() <= 18 and (holes > 9).any()
    filled = run(A.Cutout(4, fill=[0.25, 0.5, 0.75]), x, device)
    cut = filled[:, 0] != 1
    assert set(np.unique(filled[:, 1][cut])) == {0.5}
    everything = run(A.Cutout(20), x, device)  # length >= 2 * size covers every image
    assert (everything == 0).all()


# -- colour -------------------------------------------------------------------

def _gray(x):
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(a, b, f):
    return np.clip(f * a + (1 - f) * b, 0, 1)


def _rgb(n=6, seed=0):
    return np.random.default_rng(seed).random((n, 3, 7, 5), dtype=np.float32)


def test_color_jitter_zero_is_identity(device):
    x = _rgb()
    np.testing.assert_array_equal(run(A.ColorJitter(), x, device), x)
    np.testing.assert_array_equal(run(A.ColorJitter(0, 0, 0), x, device), x)
    one = A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1))
    np.testing.assert_array_equal(run(one, x, device), x)


@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 1.7])
def test_color_functions_match_torchvision_formulas(device, factor):
    x = _rgb()
    xd = dev(x, device)
    rtol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(A.adjust_brightness(xd, factor)),
                               np.clip(x * factor, 0, 1), **rtol)
    np.testing.assert_allclose(to_numpy(A.adjust_contrast(xd, factor)),
                               _blend(x, _gray(x).mean(axis=(1, 2, 3), keepdims=True), factor),
                               **rtol)
    np.testing.assert_allclose(to_numpy(A.adjust_saturation(xd, factor)),
                               _blend(x, _gray(x), factor), **rtol)
    # fixed-factor ColorJitter = the three steps in order
    jitter = A.ColorJitter(brightness=(factor, factor), contrast=(factor, factor),
                           saturation=(factor, factor))
    want = np.clip(x * factor, 0, 1)
    want = _blend(want, _gray(want).mean(axis=(1, 2, 3), keepdims=True), factor)
    want = _blend(want, _gray(want), factor)
    np.testing.assert_allclose(run(jitter, x, device), want, **rtol)


def test_color_extremes():
    x = _rgb()
    gray = A.adjust_saturation(x, 0.0)
    np.testing.assert_allclose(gray, np.repeat(_gray(x), 3, axis=1), rtol=1e-6)
    flat = A.adjust_contrast(x, 0.0)
    assert np.ptp(flat, axis=(1, 2, 3)).max() < 1e-6
    one_channel = x[:, :1]
    np.testing.assert_allclose(A.adjust_saturation(one_channel, 0.3), one_channel, rtol=1e-6)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        A.adjust_saturation(np.zeros((1, 2, 3, 3), np.float32), 0.5)


def test_color_jitter_random_factors_per_image(device):
    x = np.full((200, 3, 4, 4), 0.5, np.float32)
    out = run(A.ColorJitter(brightness=0.4), x, device)
    factors = out[:, 0, 0, 0] / 0.5
    assert (out == out[:, :1, :1, :1]).all()  # one factor per image
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.std() > 0.15  # uniform on [0.6, 1.4] has std 0.23
    with pytest.raises(ValueError, match=">= 0"):
        A.ColorJitter(brightness=-0.1)


# -- rotation -----------------------------------------------------------------

@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_rotation_zero_and_quarter_turns(device, interp):
    x = gradient_images(4, h=9, w=9)
    np.testing.assert_array_equal(run(A.RandomRotation(0, interp), x, device), x)
    for angle, k in ((90, 1), (-90, -1), (180, 2)):
        out = run(A.RandomRotation((angle, angle), interp), x, device)
        np.testing.assert_allclose(out, np.rot90(x, k, axes=(2, 3)), atol=1e-5)
    rect = gradient_images(3, h=6, w=10)  # 180 degrees works on any shape
    out = run(A.RandomRotation((180, 180), interp), rect, device)
    np.testing.assert_allclose(out, rect[:, :, ::-1, ::-1], atol=1e-5)


def test_rotation_matches_torch_grid_sample(device):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((3, 2, 12, 12), dtype=np.float32)
    for angle in (7.5, -23.0, 40.0):
        out = run(A.RandomRotation((angle, angle)), x, device)
        t = np.deg2rad(angle)
        theta = torch.tensor([[[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0]]] * 3,
                             dtype=torch.float64)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=True)
        ref = torch.nn.functional.grid_sample(torch.tensor(x, dtype=torch.float64), grid,
                                              mode="bilinear", padding_mode="zeros",
                                              align_corners=True).numpy()
        np.testing.assert_allclose(out, ref, atol=2e-5)


def test_rotation_random_angles_and_fill(device):
    x = np.ones((100, 1, 15, 15), np.float32)
    out = run(A.RandomRotation(30, "nearest", fill=-1.0), x, device)
    corners = out[:, 0, 0, 0]
    assert set(np.unique(out)) <= {1.0, -1.0}
    assert (corners == -1).any() and (out[:, 0, 7, 7] == 1).all()  # centre stays inside
    # bigger angles lose more corner pixels: angles really differ per image
    lost = (out == -1).sum(axis=(1, 2, 3))
    assert lost.std() > 0 and lost.max() < 15 * 15 * 0.25


# -- determinism, composition, config ----------------------------------------

ALL = [
    A.RandomCrop(8, padding=2),
    A.RandomHorizontalFlip(0.5),
    A.Cutout(3, n_holes=2),
    A.ColorJitter(0.3, 0.3, 0.3),
    A.RandomRotation(15),
    A.Compose([A.RandomCrop(8, 1), A.RandomHorizontalFlip(), A.Cutout(2),
               A.ColorJitter(0.2, 0.1, 0.1), A.RandomRotation(5)]),
]


@pytest.mark.parametrize("aug", ALL, ids=lambda a: type(a).__name__)
def test_deterministic_under_seed(device, aug):
    x = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    gpuconv.seed(1)
    a = run(aug, x, device)
    b = run(aug, x, device)
    gpuconv.seed(1)
    again = run(aug, x, device)
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, b)  # the generator advanced
    assert a.dtype == np.float32


@pytest.mark.parametrize("aug", ALL + [A.Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])],
                         ids=lambda a: type(a).__name__)
def test_config_round_trip(aug):
    cfg = aug.config()
    assert json.loads(json.dumps(cfg)) == cfg
    rebuilt = A.from_config(cfg)
    assert type(rebuilt) is type(aug) and rebuilt.config() == cfg
    x = np.random.default_rng(4).random((4, 3, 8, 8), dtype=np.float32)
    gpuconv.seed(2)
    a = aug(x)
    gpuconv.seed(2)
    np.testing.assert_array_equal(rebuilt(x), a)
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.from_config({"name": "Sharpen"})


def test_compose_order_and_empty(device):
    x = gradient_images(5)
    crop_then_flip = A.Compose([A.RandomCrop(4, padding=0), A.RandomHorizontalFlip(1.0)])
    gpuconv.seed(4)
    out = run(crop_then_flip, x, device)
    gpuconv.seed(4)
    ref = to_numpy(A.RandomCrop(4, padding=0)(dev(x, device)))[..., ::-1]
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(run(A.Compose([]), x, device), x)


def test_normalize(device):
    x = _rgb()
    out = run(A.Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0]), x, device)
    want = (x - np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)) / \
        np.array([0.5, 0.25, 2.0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    single = run(A.Normalize([0.5], [0.5]), x, device)
    np.testing.assert_allclose(single, (x - 0.5) / 0.5, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="std > 0"):
        A.Normalize([0.0], [0.0])


@pytest.mark.parametrize("aug", ALL, ids=lambda a: type(a).__name__)
def test_input_checks(device, aug):
    with pytest.raises(TypeError, match="floating-point"):
        aug(dev(np.zeros((2, 3, 8, 8), np.uint8), device))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        aug(dev(np.zeros((3, 8, 8), np.float32), device))


@pytest.mark.parametrize("aug", ALL, ids=lambda a: type(a).__name__)
def test_empty_batch_and_float64(device, aug):
    out = run(aug, np.zeros((0, 3, 8, 8), np.float32), device)
    assert out.shape[0] == 0
    x64 = gradient_images(3).astype(np.float64)
    assert run(aug, x64, device).dtype == np.float64
