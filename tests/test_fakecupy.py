"""The fake CuPy double is only useful if it is at least as strict as CuPy: prove it."""
from __future__ import annotations

import cupy
import numpy
import pytest

import fakecupy
from fakecupy import FakeArray, xp
from gpuconv import backend


def dev(a):
    return xp.asarray(numpy.asarray(a, dtype=numpy.float64))


# ---- names ----------------------------------------------------------------------

def test_module_exposes_only_names_cupy_and_numpy_share():
    public = {n for n in vars(xp) if not n.startswith("_")}
    assert public, "fake module is empty"
    not_in_cupy = sorted(n for n in public if not hasattr(cupy, n))
    # cupy.cuda (devices, streams) is the one CuPy-only namespace the fake offers
    not_in_numpy = sorted(n for n in public if not hasattr(numpy, n) and n != "cuda")
    assert not not_in_cupy, f"fake exposes names CuPy lacks: {not_in_cupy}"
    cuda_names = {n for n in vars(xp.cuda) if not n.startswith("_")}
    assert cuda_names <= set(dir(cupy.cuda)), cuda_names - set(dir(cupy.cuda))
    assert {"getDeviceCount", "getDevice"} <= set(dir(cupy.cuda.runtime))
    assert not not_in_numpy, f"fake exposes names NumPy lacks: {not_in_numpy}"
    for name in ("zeros", "empty", "where", "maximum", "exp", "sqrt", "copyto", "matmul",
                 "tensordot", "ascontiguousarray", "float32", "float64", "random", "linalg"):
        assert hasattr(xp, name), name


@pytest.mark.parametrize("name", ["errstate", "seterr", "lib", "get_array_module",
                                  "fromregex", "nditer", "asmatrix"])
def test_known_traps_are_missing(name):
    # errstate: NumPy only; get_array_module: CuPy only; lib: no stride_tricks helpers
    assert not hasattr(xp, name)


def test_random_submodule_is_restricted():
    public = {n for n in vars(xp.random) if not n.startswith("_")}
    assert public <= set(dir(cupy.random))
    assert not hasattr(xp.random, "Philox")  # NumPy's bit generator, absent in CuPy


@pytest.mark.parametrize("name", ["permutation", "normal", "choice", "shuffle", "permuted",
                                  "bit_generator", "spawn", "bytes"])
def test_generator_lacks_methods_cupy_generator_lacks(name):
    gen = xp.random.default_rng(0)
    assert not hasattr(gen, name)
    assert not hasattr(cupy.random.Generator, name)


def test_generator_methods_and_dtypes():
    gen = xp.random.default_rng(3)
    for method in ("random", "standard_normal"):
        a = getattr(gen, method)((4, 5), dtype=numpy.float32)
        assert isinstance(a, FakeArray) and a.dtype == numpy.float32 and a.shape == (4, 5)
    u = gen.uniform(-1.0, 2.0, (1000,), dtype=numpy.float32)
    assert u.dtype == numpy.float32 and -1 <= float(u.min()) and float(u.max()) < 2
    i = gen.integers(0, 7, (100,))
    assert isinstance(i, FakeArray) and 0 <= int(i.min()) and int(i.max()) < 7
    # seeded: same seed -> same numbers
    a = xp.random.default_rng(5).random((3,)).get()
    b = xp.random.default_rng(5).random((3,)).get()
    numpy.testing.assert_array_equal(a, b)


# ---- arrays -------------------------------------------------------------------------

def test_fake_array_is_not_an_ndarray():
    a = dev([1.0, 2.0])
    assert not isinstance(a, numpy.ndarray)
    assert isinstance(a, xp.ndarray)


def test_implicit_conversion_raises():
    a = dev([1.0, 2.0])
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        numpy.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.array(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        a.__array__()
    host = numpy.zeros(2)
    with pytest.raises(TypeError):
        host[...] = a
    with pytest.raises(TypeError):
        numpy.testing.assert_allclose(a, [1.0, 2.0])


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "//", "**", "<", "==", "@"])
def test_operators_mixing_host_and_device_raise(op):
    a, h = dev([[1.0, 2.0], [3.0, 4.0]]), numpy.ones((2, 2))
    with pytest.raises(TypeError):
        eval(f"a {op} h")
    with pytest.raises(TypeError):
        eval(f"h {op} a")


@pytest.mark.parametrize("op", ["+=", "-=", "*=", "/="])
def test_inplace_operators_mixing_raise(op):
    a, h = dev([1.0, 2.0]), numpy.ones(2)
    with pytest.raises(TypeError):
        exec(f"a {op} h")
    with pytest.raises(TypeError):
        exec(f"h {op} a")


def test_ufuncs_functions_and_methods_mixing_raise():
    a, h = dev([1.0, -2.0]), numpy.ones(2)
    with pytest.raises(TypeError):
        xp.maximum(a, h)
    with pytest.raises(TypeError):
        xp.exp(h)
    with pytest.raises(TypeError):
        numpy.maximum(h, a)  # numpy ufunc reaching __array_ufunc__
    with pytest.raises(TypeError):
        numpy.add(a, a, out=numpy.empty(2))
    with pytest.raises(TypeError):
        xp.add(a, a, out=h)
    with pytest.raises(TypeError):
        xp.concatenate([a, h])
    with pytest.raises(TypeError):
        numpy.concatenate([a, h])  # __array_function__
    with pytest.raises(TypeError):
        xp.where(a > 0, h, 0.0)
    with pytest.raises(TypeError):
        xp.copyto(a, h)
    with pytest.raises(TypeError):
        a.dot(h)
    with pytest.raises(TypeError):
        a.clip(h, 3)
    with pytest.raises(TypeError):
        xp.zeros_like(h)
    with pytest.raises(TypeError):
        xp.ascontiguousarray(h)
    with pytest.raises(TypeError):
        xp.add.at(a, numpy.array([0]), 1.0)
    with pytest.raises(TypeError):
        a + [1.0, 2.0]  # CuPy refuses Python lists as operands too


def test_setitem_and_getitem_refuse_host_arrays():
    a = dev(numpy.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError):
        a[0] = numpy.ones(3)
    with pytest.raises(TypeError):
        a[numpy.array([True, False])] = 0.0
    with pytest.raises(TypeError):
        a[numpy.array([1])]
    with pytest.raises(TypeError):
        a[:, numpy.array([0, 2])]


def test_scalars_are_allowed():
    a = dev([1.0, 2.0])
    for s in (2, 2.0, True, numpy.float32(2), numpy.int64(2), numpy.float64(2)):
        assert isinstance(a * s, FakeArray)
        assert isinstance(s * a, FakeArray)
        b = a.copy()
        b += s
        b[0] = s
    assert isinstance(xp.maximum(a, numpy.float32(0)), FakeArray)
    with pytest.raises(TypeError):  # a 0-d numpy *array* is still a host array
        a * numpy.array(2.0)


def test_size_one_conversions_and_zero_d_results():
    a = dev([[1.5, 2.5], [3.5, 4.5]])
    s = a.sum()
    assert isinstance(s, FakeArray) and s.shape == ()  # CuPy reductions return 0-d arrays
    assert isinstance(a[0, 0], FakeArray) and a[0, 0].shape == ()
    assert float(s) == 12.0 and int(a[1, 1]) == 4 and bool(a[0, 0] > 1)
    assert a.max().item() == 4.5
    with pytest.raises(TypeError):
        float(a)


def test_array_behaviour_matches_numpy():
    h = numpy.random.default_rng(0).standard_normal((3, 4, 5))
    a = xp.asarray(h)
    checks = {
        "T": (a.T, h.T), "transpose": (a.transpose(2, 0, 1), h.transpose(2, 0, 1)),
        "reshape": (a.reshape(12, 5), h.reshape(12, 5)), "sum": (a.sum(axis=(0, 2)), h.sum(axis=(0, 2))),
        "mean": (a.mean(axis=1, keepdims=True), h.mean(axis=1, keepdims=True)),
        "max": (a.max(axis=-1), h.max(axis=-1)), "min": (a.min(), h.min()),
        "argmax": (a.argmax(axis=1), h.argmax(axis=1)), "astype": (a.astype(numpy.float32), h.astype(numpy.float32)),
        "ravel": (a.ravel(), h.ravel()), "repeat": (a.repeat(2, axis=1), h.repeat(2, axis=1)),
        "clip": (a.clip(-0.5, 0.5), h.clip(-0.5, 0.5)), "dot": (a[0].dot(a[1].T), h[0].dot(h[1].T)),
        "slice": (a[:, ::2, 1:], h[:, ::2, 1:]), "mask": (a[a > 0], h[h > 0]),
        "fancy": (a[xp.asarray(numpy.array([2, 0]))], h[[2, 0]]),
        "ops": (-(a * 2 - 1) / 3 + a ** 2, -(h * 2 - 1) / 3 + h ** 2),
        "ufunc": (numpy.exp(a), numpy.exp(h)), "where": (xp.where(a > 0, a, 0.0), numpy.where(h > 0, h, 0.0)),
        "matmul": (a @ a.transpose(0, 2, 1), h @ h.transpose(0, 2, 1)),
        "tensordot": (xp.tensordot(a, a, axes=([1, 2], [1, 2])), numpy.tensordot(h, h, axes=([1, 2], [1, 2]))),
    }
    for name, (fake, ref) in checks.items():
        assert isinstance(fake, FakeArray), name
        numpy.testing.assert_array_equal(fake.get(), ref, err_msg=name)
    assert a.shape == h.shape and a.dtype == h.dtype and a.ndim == 3 and a.size == h.size
    assert a.strides == h.strides and a.flags.c_contiguous and not a.T.flags.c_contiguous


def test_views_write_through_and_inplace_keep_identity():
    a = xp.zeros((4, 4))
    v = a[1:3, ::2]
    v += 1.0
    assert float(a.sum()) == 4.0
    b = a
    b *= 2.0
    assert b is a and float(a.sum()) == 8.0
    m = a > 0
    a[m] = -1.0
    assert float(a.sum()) == -4.0
    out = xp.empty((4, 4))
    assert xp.multiply(a, 2.0, out=out) is out
    a.fill(3.0)
    assert float(a.mean()) == 3.0
    assert a.astype(numpy.float64, copy=False) is a


def test_host_transfers_copy():
    h = numpy.ones(3)
    a = xp.asarray(h)
    h[0] = 5.0
    assert float(a[0]) == 1.0, "asarray(ndarray) must copy (host->device transfer)"
    g = a.get()
    assert isinstance(g, numpy.ndarray)
    g[1] = 7.0
    assert float(a[1]) == 1.0, "get() must copy (device->host transfer)"


def test_registered_as_a_gpuconv_backend():
    h = numpy.arange(4.0)
    a = backend.to_device(h, fakecupy.DEVICE)
    assert isinstance(a, FakeArray)
    assert backend.get_array_module(a) is xp
    assert str(backend.device_of(a)) == "fakecupy:0"
    assert backend.to_device(a, "fakecupy") is a
    back = backend.to_numpy(a)
    assert isinstance(back, numpy.ndarray)
    numpy.testing.assert_array_equal(back, h)
    with pytest.raises(TypeError):
        backend.get_array_module(a, h)
