"""gpuconv.init.patch_whitening: airbench's data-dependent whitening conv weight.

Checked against an independent float64 NumPy computation (patches by explicit
slicing, numpy.linalg.eigh), by what the weight does as a convolution (it whitens
the patches' second moments), and for determinism, subset selection and errors.
"""
from __future__ import annotations

import numpy
import pytest

import gpuconv
from gpuconv.layers import Conv2D


def correlated_images(n: int, h: int = 9, w: int = 8, seed: int = 0) -> numpy.ndarray:
    """Images whose patch covariance has distinct, spread-out eigenvalues."""
    rng = numpy.random.default_rng(seed)
    base = rng.standard_normal((n, 3, h + 1, w + 1))
    smooth = base[:, :, 1:, 1:] + 0.7 * base[:, :, :-1, 1:] + 0.4 * base[:, :, 1:, :-1]
    mix = numpy.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.6], [0.0, 0.0, 0.3]])
    return numpy.einsum("dc,nchw->ndhw", mix, smooth) + 0.2


def reference_whitening(images: numpy.ndarray, p: int, eps: float):
    """(eigenvalues descending, W (D, C, p, p)) computed the plain way, float64."""
    x = images.astype(numpy.float64)
    n, c, h, w = x.shape
    patches = [x[:, :, i:i + p, j:j + p].reshape(n, -1)
               for i in range(h - p + 1) for j in range(w - p + 1)]
    flat = numpy.concatenate(patches)  # every patch, flattened in (C, p, p) order
    second_moment = flat.T @ flat / len(flat)
    values, vectors = numpy.linalg.eigh(second_moment)
    values, vectors = values[::-1], vectors[:, ::-1]
    return values, (vectors / numpy.sqrt(values + eps)).T.reshape(-1, c, p, p)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_matches_an_independent_float64_eigendecomposition(p):
    images = correlated_images(12)
    eps = 5e-4
    weight = gpuconv.init.patch_whitening(images, patch_size=p, eps=eps)
    dim = 3 * p * p
    assert weight.shape == (2 * dim, 3, p, p) and weight.dtype == numpy.float64
    values, expected = reference_whitening(images, p, eps)
    assert numpy.all(numpy.diff(values) < 0) and values[-1] > 1e-3  # distinct: V is unique
    first, second = weight[:dim], weight[dim:]
    numpy.testing.assert_array_equal(second, -first)
    for i in range(dim):  # eigenvectors are unique up to sign
        sign = numpy.sign(numpy.vdot(first[i], expected[i]))
        numpy.testing.assert_allclose(first[i], sign * expected[i], rtol=1e-9, atol=1e-9,
                                      err_msg=f"filter {i}")
        # the sign convention: the largest-magnitude entry is positive
        flat = first[i].reshape(-1)
        assert flat[numpy.argmax(numpy.abs(flat))] > 0


def test_as_a_convolution_it_whitens_the_patches():
    images = correlated_images(16).astype(numpy.float32)
    eps = 5e-4
    conv = Conv2D(3, 24, 2, bias=False, dtype="float64")
    conv.weight.data[...] = gpuconv.init.patch_whitening(images.astype(numpy.float64), eps=eps)
    y = conv.forward(images.astype(numpy.float64))
    assert y.shape == (16, 24, 8, 7)
    features = y.transpose(1, 0, 2, 3).reshape(24, -1)
    moments = features @ features.T / features.shape[1]  # uncentred, like the covariance
    values, _ = reference_whitening(images, 2, eps)
    expected = numpy.diag(values / (values + eps))
    numpy.testing.assert_allclose(moments[:12, :12], expected, atol=1e-10)
    numpy.testing.assert_allclose(moments[12:, 12:], expected, atol=1e-10)  # -W: same moments
    numpy.testing.assert_allclose(moments[:12, 12:], -expected, atol=1e-10)
    big = values > 100 * eps
    assert big.sum() >= 8
    numpy.testing.assert_allclose(numpy.diag(moments)[:12][big], 1.0, atol=0.01)


def test_float32_images_give_a_float32_weight_close_to_float64():
    images = correlated_images(10)
    w64 = gpuconv.init.patch_whitening(images)
    w32 = gpuconv.init.patch_whitening(images.astype(numpy.float32))
    assert w32.dtype == numpy.float32 and w32.flags.c_contiguous
    numpy.testing.assert_allclose(w32, w64, rtol=1e-4, atol=1e-4 * numpy.abs(w64).max())
    w16 = gpuconv.init.patch_whitening(images.astype(numpy.float16))
    assert w16.dtype == numpy.float32


def test_subset_is_deterministic_for_a_seed_and_uses_max_images():
    images = correlated_images(40, seed=1)
    a = gpuconv.init.patch_whitening(images, max_images=15, seed=4)
    b = gpuconv.init.patch_whitening(images, max_images=15, seed=4)
    c = gpuconv.init.patch_whitening(images, max_images=15, seed=5)
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.allclose(a, c)
    chosen = numpy.sort(numpy.random.default_rng(4).choice(40, 15, replace=False))
    numpy.testing.assert_allclose(a, gpuconv.init.patch_whitening(images[chosen]), rtol=1e-12,
                                  atol=1e-12)
    # all images when N <= max_images (the seed is irrelevant then)
    numpy.testing.assert_array_equal(gpuconv.init.patch_whitening(images, seed=1),
                                     gpuconv.init.patch_whitening(images, seed=2))
    # seed=None: the first max_images, as airbench's images[:5000]
    numpy.testing.assert_allclose(gpuconv.init.patch_whitening(images, max_images=15, seed=None),
                                  gpuconv.init.patch_whitening(images[:15]), rtol=1e-12,
                                  atol=1e-12)


def test_many_images_are_processed_in_chunks_with_the_same_result(monkeypatch):
    import gpuconv.layers.init as init_module

    images = correlated_images(9)
    whole = init_module.patch_whitening(images)
    monkeypatch.setattr(init_module, "_PATCHES_PER_CHUNK", 1)  # one image per chunk
    numpy.testing.assert_allclose(init_module.patch_whitening(images), whole, rtol=1e-12,
                                  atol=1e-12)
    assert gpuconv.init.patch_whitening is init_module.patch_whitening


def test_input_is_not_modified_and_bad_arguments_raise():
    images = correlated_images(4)
    before = images.copy()
    gpuconv.init.patch_whitening(images)
    numpy.testing.assert_array_equal(images, before)
    for bad, match in [(dict(images=images[0]), "N, C, H, W"),
                       (dict(images=images.astype(numpy.int32)), "floating"),
                       (dict(images=images, patch_size=0), "patch_size"),
                       (dict(images=images, patch_size=9), "patch_size"),
                       (dict(images=images, patch_size=2.0), "patch_size"),
                       (dict(images=images, eps=0.0), "eps"),
                       (dict(images=images, eps=float("nan")), "eps"),
                       (dict(images=images, max_images=0), "max_images"),
                       (dict(images=images[:0]), "empty")]:
        with pytest.raises(ValueError, match=match):
            gpuconv.init.patch_whitening(**bad)
