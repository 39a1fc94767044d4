"""gpuconv.ops.special (erf, erfc, ndtr, GELU kernels) against 40-digit mpmath.

mpmath comes with PyTorch (via sympy), the test oracle; gpuconv never imports it.
Bounds are the measured errors with a little headroom (see the module docstring of
gpuconv.ops.special): float64 erf within 2.3e-16 absolute and ~1 ulp relative;
erfc / ndtr within (4 + a*a) * 1.1e-16 relative (a = |x| for erfc, |x|/sqrt(2)
for ndtr); float32 within a few float32 ulps of the exact value.
"""
from __future__ import annotations

import math

import mpmath
import numpy
import pytest

from gpuconv.backend import cuda_is_available, cuda_unavailable_reason, to_device, to_numpy
from gpuconv.ops import _erf_tables, special

mpmath.mp.dps = 40
EPS64 = numpy.finfo(numpy.float64).eps
EPS32 = float(numpy.finfo(numpy.float32).eps)


def _grid() -> numpy.ndarray:
    rng = numpy.random.default_rng(0)
    return numpy.concatenate([
        numpy.linspace(-30.0, 30.0, 2401), rng.uniform(-7, 7, 1500),
        rng.standard_normal(300) * 1e-3, rng.standard_normal(100) * 1e-9,
        [0.0, 0.5, -0.5, numpy.nextafter(0.5, 0), 1e-300, 5e-324, 26.5, 27.4, 27.5, 28.0, 40.0],
        # interval boundaries of the tables: both sides
        [4 * math.expm1(k / 16) * f for k in range(1, 34) for f in (1 - 1e-15, 1 + 1e-15)]])


GRID = _grid()


def _reference(fn, x: numpy.ndarray) -> numpy.ndarray:
    return numpy.array([float(fn(mpmath.mpf(float(v)))) for v in x])


REF = {"erf": _reference(mpmath.erf, GRID), "erfc": _reference(mpmath.erfc, GRID),
       "ndtr": _reference(mpmath.ncdf, GRID)}


def _relative(ours, exact, tiny):
    keep = numpy.abs(exact) > tiny
    return numpy.abs(ours[keep] - exact[keep]) / numpy.abs(exact[keep]), keep


def test_erf_float64_is_accurate_to_rounding():
    ours = special.erf(GRID)
    assert ours.dtype == numpy.float64 and ours.shape == GRID.shape
    assert numpy.abs(ours - REF["erf"]).max() <= 2.3e-16
    rel, _ = _relative(ours, REF["erf"], 1e-300)
    assert rel.max() <= 1.5 * EPS64  # relative accuracy near 0 too (the odd series)


@pytest.mark.parametrize("name", ["erfc", "ndtr"])
def test_erfc_and_ndtr_float64_relative_error_bound(name):
    ours = getattr(special, name)(GRID)
    a = numpy.abs(GRID) if name == "erfc" else numpy.abs(GRID) / math.sqrt(2)
    rel, keep = _relative(ours, REF[name], 1e-300)
    bound = (4 + numpy.minimum(a[keep], 27.5) ** 2) * 1.1 * EPS64
    worst = GRID[keep][numpy.argmax(rel / bound)]
    assert (rel <= bound).all(), f"worst {rel.max():.3g} at x={worst}"
    assert numpy.abs(ours - REF[name]).max() <= 2.3e-16


@pytest.mark.parametrize("name", ["erf", "erfc", "ndtr"])
def test_float32_is_accurate_to_float32_rounding(name):
    x32 = GRID.astype(numpy.float32)
    exact = _reference(getattr(mpmath, {"ndtr": "ncdf"}.get(name, name)), x32.astype(numpy.float64))
    ours = getattr(special, name)(x32)
    assert ours.dtype == numpy.float32
    ours = ours.astype(numpy.float64)
    assert numpy.abs(ours - exact).max() <= 1.5 * EPS32  # absolute: values are in [0, 2]
    # relative, where float32 has normal numbers: a few ulps (erfc: plus the a*a rounding)
    rel, keep = _relative(ours, exact, numpy.finfo(numpy.float32).tiny)
    a = numpy.abs(x32.astype(numpy.float64))[keep] / (math.sqrt(2) if name == "ndtr" else 1)
    bound = (3 + (a * a if name != "erf" else 0)) * 1.1 * EPS32
    assert (rel <= bound).all(), f"{name}: worst {rel.max() / EPS32:.1f} ulps"


def test_special_values_and_symmetry():
    x = numpy.array([0.0, -0.0, numpy.inf, -numpy.inf, numpy.nan, 1e308, -1e308])
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):  # no warnings
        erf, erfc, ndtr = special.erf(x), special.erfc(x), special.ndtr(x)
    numpy.testing.assert_array_equal(erf, [0.0, -0.0, 1.0, -1.0, numpy.nan, 1.0, -1.0])
    numpy.testing.assert_array_equal(erfc, [1.0, 1.0, 0.0, 2.0, numpy.nan, 0.0, 2.0])
    numpy.testing.assert_array_equal(ndtr, [0.5, 0.5, 1.0, 0.0, numpy.nan, 1.0, 0.0])
    assert numpy.signbit(erf[1])
    y = numpy.random.default_rng(1).standard_normal(1000) * 4
    numpy.testing.assert_array_equal(special.erf(-y), -special.erf(y))
    numpy.testing.assert_allclose(special.ndtr(y) + special.ndtr(-y), 1.0, rtol=0, atol=2 * EPS64)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_shape_dtype_layout_and_chunking(dtype):
    rng = numpy.random.default_rng(2)
    big = (rng.standard_normal((3, 5, 47, 61)) * 3).astype(dtype)  # > CHUNK elements
    assert big.size > special.CHUNK
    for fn in (special.erf, special.erfc, special.ndtr, special.gelu,
               lambda t: special.gelu(t, "tanh")):
        whole = fn(big)
        assert whole.shape == big.shape and whole.dtype == big.dtype
        assert whole.flags.c_contiguous
        pieces = numpy.stack([fn(big[i]) for i in range(3)])  # each below/around the chunk size
        numpy.testing.assert_array_equal(whole, pieces)
        strided = fn(numpy.asfortranarray(big)[:, :, ::2])
        numpy.testing.assert_array_equal(strided, whole[:, :, ::2])
    dy = rng.standard_normal(big.shape).astype(dtype)
    for approximate in ("none", "tanh"):
        whole = special.gelu_grad(dy, big, approximate)
        assert whole.shape == big.shape and whole.dtype == big.dtype
        numpy.testing.assert_array_equal(
            whole, numpy.stack([special.gelu_grad(dy[i], big[i], approximate) for i in range(3)]))


def test_rejects_integer_arrays_and_bad_approximate():
    with pytest.raises(TypeError, match="floating"):
        special.erf(numpy.arange(3))
    with pytest.raises(ValueError, match="approximate"):
        special.gelu(numpy.zeros(2), "sigmoid")


def test_gelu_float64_matches_the_exact_function():
    x = GRID
    exact = numpy.array([float(mpmath.mpf(float(v)) * mpmath.ncdf(float(v))) for v in x])
    ours = special.gelu(x)
    assert numpy.abs(ours - exact).max() <= 4 * EPS64 * max(1.0, numpy.abs(x).max())
    rel, _ = _relative(ours, exact, 1e-300)
    bound = (8 + numpy.minimum(x * x / 2, 27.5 ** 2)) * 1.1 * EPS64
    assert (rel <= bound[numpy.abs(exact) > 1e-300]).all()


def test_gelu_grad_float64_matches_the_exact_derivative():
    x = GRID[numpy.abs(GRID) < 38]
    exact = numpy.array([float(mpmath.ncdf(v) + v * mpmath.npdf(v))
                         for v in (mpmath.mpf(float(t)) for t in x)])
    ours = special.gelu_grad(numpy.ones_like(x), x)
    assert numpy.abs(ours - exact).max() <= 4 * EPS64


def test_tables_are_what_the_generator_produces():
    """The committed tables equal a fresh run of tests/make_erf_tables.py."""
    import make_erf_tables

    built = make_erf_tables.build()
    assert tuple(built["centres"]) == _erf_tables.CENTRES
    for dtype in ("float64", "float32"):
        assert tuple(tuple(r) for r in built[f"log_erfcx_{dtype}"]) == \
            getattr(_erf_tables, f"LOG_ERFCX_{dtype.upper()}")
        assert tuple(built[f"erf_small_{dtype}"]) == \
            getattr(_erf_tables, f"ERF_SMALL_{dtype.upper()}")
    assert (_erf_tables.LOG_C, _erf_tables.PER_UNIT, _erf_tables.A_MAX, _erf_tables.SMALL) == \
        (make_erf_tables.LOG_C, make_erf_tables.PER_UNIT, make_erf_tables.A_MAX,
         make_erf_tables.SMALL)
    assert tuple(built["gelu32_poly"]) == _erf_tables.GELU32_POLY
    assert (_erf_tables.GELU32_K, _erf_tables.GELU32_A_MAX) == \
        (make_erf_tables.GELU32_K, make_erf_tables.GELU32_A_MAX)


def test_float32_gelu_polynomial_fit_is_within_a_sixth_of_an_ulp():
    """The Remez fit of S(u) = erfcx(a / sqrt 2) / 2 itself (40 digits), everywhere on
    [0, GELU32_A_MAX], so float32 rounding dominates the GELU error."""
    import make_erf_tables

    k = mpmath.mpf(_erf_tables.GELU32_K)
    u_max = k * _erf_tables.GELU32_A_MAX / (1 + k * _erf_tables.GELU32_A_MAX)
    worst = 0
    for i in range(1, 801):
        u = u_max * i / 800
        p = mpmath.mpf(0)
        for c in _erf_tables.GELU32_POLY:
            p = (p + c) * u
        worst = max(worst, abs((p + 0.5) / make_erf_tables.gelu32_target(u) - 1))
    assert worst <= 1.1e-8


def test_float32_gelu_negative_tail_is_relatively_accurate():
    """GELU(x) = max(x, 0) - |x| Phi(-|x|) keeps relative accuracy where GELU(x) is tiny
    (x << 0), and so does the derivative: within (4 + x*x/2) float32 epsilons (the
    rounding of x*x), down to x = -13 (below, the results are float32 denormals)."""
    x = -numpy.linspace(0.0, 13.0, 1301).astype(numpy.float32)
    y, d = special.gelu_with_derivative(x)
    exact_y = numpy.array([float(v * mpmath.ncdf(v)) for v in map(mpmath.mpf, x.tolist())])
    exact_d = numpy.array([float(mpmath.ncdf(v) + v * mpmath.npdf(v))
                           for v in map(mpmath.mpf, x.tolist())])
    bound = (4 + x.astype(numpy.float64) ** 2 / 2) * EPS32
    keep = x < 0
    assert (numpy.abs(y[keep] - exact_y[keep]) <= bound[keep] * numpy.abs(exact_y[keep])).all()
    far = x < -1.5  # away from the derivative's zero near x = -0.75
    assert (numpy.abs(d[far] - exact_d[far]) <= bound[far] * numpy.abs(exact_d[far])).all()


def test_gelu_with_derivative_equals_gelu_and_gelu_grad():
    x = (numpy.random.default_rng(6).standard_normal((3, 5, 47, 61)) * 3).astype(numpy.float32)
    x.reshape(-1)[:9] = [0.0, -0.0, numpy.inf, -numpy.inf, numpy.nan, 1e30, -1e30, 14.0, -14.0]
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):  # infinities: no warnings
        y, d = special.gelu_with_derivative(x)
    numpy.testing.assert_array_equal(y, special.gelu(x))
    numpy.testing.assert_array_equal(d, special.gelu_grad(numpy.ones_like(x), x))
    numpy.testing.assert_array_equal(
        y.reshape(-1)[:7], numpy.array([0, 0, numpy.inf, 0, numpy.nan, 1e30, 0], numpy.float32))
    numpy.testing.assert_array_equal(d.reshape(-1)[:7], [0.5, 0.5, 1, 0, numpy.nan, 1, 0])
    finite = x.reshape(-1)[9:]
    for dtype, approximate in (("float64", "none"), ("float16", "none"), ("float32", "tanh")):
        y, d = special.gelu_with_derivative(finite.astype(dtype), approximate)
        assert d is None and y.dtype == dtype  # these keep x and compute GELU' in backward
        numpy.testing.assert_array_equal(y, special.gelu(finite.astype(dtype), approximate))


def test_xp_path_on_fake_cupy_equals_numpy():
    x = (numpy.random.default_rng(3).standard_normal((4, 3, 5)) * 5)
    dy = numpy.random.default_rng(4).standard_normal(x.shape)
    for dtype in ("float32", "float64"):
        xs, dys = x.astype(dtype), dy.astype(dtype)
        xd, dyd = to_device(xs, "fakecupy"), to_device(dys, "fakecupy")
        for name in ("erf", "erfc", "ndtr", "gelu"):
            numpy.testing.assert_array_equal(to_numpy(getattr(special, name)(xd)),
                                             getattr(special, name)(xs))
        y, d = special.gelu_with_derivative(xd)
        y_host, d_host = special.gelu_with_derivative(xs)
        numpy.testing.assert_array_equal(to_numpy(y), y_host)
        assert (d is None) == (d_host is None) == (dtype == "float64")
        if d is not None:
            numpy.testing.assert_array_equal(to_numpy(d), d_host)
        for approximate in ("none", "tanh"):
            numpy.testing.assert_array_equal(
                to_numpy(special.gelu_grad(dyd, xd, approximate)),
                special.gelu_grad(dys, xs, approximate))


# ---- CUDA kernels (CUDA's erf/erfc) against the xp path -----------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not cuda_is_available(), reason=f"needs CUDA: {cuda_unavailable_reason()}")
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_cuda_kernels_match_the_xp_path(dtype):
    import cupy

    rng = numpy.random.default_rng(5)
    host = {"x": (rng.standard_normal((3, 4, 33, 17)) * 4).astype(dtype),
            "dy": rng.standard_normal((3, 4, 33, 17)).astype(dtype)}
    host["x"].reshape(-1)[:6] = [0.0, -0.0, 30.0, -30.0, 9.5, -9.5]
    x, dy = to_device(host["x"], "cuda"), to_device(host["dy"], "cuda")
    tol = {"float16": 2e-3, "float32": 4 * EPS32, "float64": 8 * EPS64}[dtype]
    for name in ("erf", "erfc", "ndtr"):
        kernel = to_numpy(getattr(special, name)(x)).astype(numpy.float64)
        reference = getattr(special, name)(host["x"]).astype(numpy.float64)
        numpy.testing.assert_allclose(kernel, reference, rtol=tol, atol=tol, err_msg=name)
    for approximate in ("none", "tanh"):
        for kernel, reference in [
                (special.gelu(x, approximate), special.gelu(host["x"], approximate)),
                (special.gelu_grad(dy, x, approximate),
                 special.gelu_grad(host["dy"], host["x"], approximate))]:
            assert isinstance(kernel, cupy.ndarray) and kernel.dtype == dtype
            kernel = to_numpy(kernel).astype(numpy.float64)
            reference = reference.astype(numpy.float64)
            numpy.testing.assert_allclose(kernel, reference, rtol=tol,
                                          atol=tol * numpy.abs(reference).max(),
                                          err_msg=approximate)
