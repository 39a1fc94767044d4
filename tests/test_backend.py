"""The device boundary: device selection, array-module dispatch, transfers, seeding."""
from __future__ import annotations

import numpy
import pytest

import gpuconv
from gpuconv import backend
from gpuconv.backend import (Device, cuda_is_available, cuda_unavailable_reason, device_of,
                             get_array_module, get_device, to_device, to_numpy)
from gpuconv.backend import devices as devices_module
from gpuconv.containers import Sequential
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Dropout, Flatten, ReLU

import fakecupy

no_cuda = pytest.mark.skipif(cuda_is_available(), reason="CUDA is usable here")


# ---- device selection -------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu "])
def test_cpu_spec(spec, monkeypatch):
    monkeypatch.delenv("GPUCONV_DEVICE", raising=False)
    device = get_device(spec)
    assert device == Device("cpu", 0) and str(device) == "cpu" and device.xp is numpy


def test_env_variable_selects_the_default(monkeypatch):
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    assert get_device() == Device("cpu")
    monkeypatch.setenv("GPUCONV_DEVICE", "fakecupy")
    assert get_device().kind == "fakecupy"
    monkeypatch.setenv("GPUCONV_DEVICE", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        get_device()


@no_cuda
def test_auto_falls_back_to_cpu_with_one_notice(monkeypatch, capsys):
    monkeypatch.setattr(devices_module, "_notice_printed", False)
    monkeypatch.setenv("GPUCONV_DEVICE", "auto")
    assert get_device() == Device("cpu")
    assert get_device("auto") == Device("cpu")
    err = capsys.readouterr().err
    assert err.count("gpuconv: using the CPU") == 1, err
    assert cuda_unavailable_reason() in err
    monkeypatch.setenv("GPUCONV_DEVICE", "")
    assert get_device() == Device("cpu")  # empty means auto


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", "CUDA"])
def test_asking_for_cuda_without_it_raises_runtime_error_with_reason(spec, monkeypatch):
    reason = cuda_unavailable_reason()
    assert reason, "a reason must be given when CUDA is unusable"
    with pytest.raises(RuntimeError) as info:
        get_device(spec)
    assert reason in str(info.value) and "cpu" in str(info.value)
    monkeypatch.setenv("GPUCONV_DEVICE", spec)
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        get_device()


@pytest.mark.parametrize("spec", ["gpu", "tpu", "cuda:x", "cuda:-1", "cpu:a", "", "cpu0"])
def test_bad_specs_raise_value_error(spec):
    with pytest.raises(ValueError):
        get_device(spec)


def test_device_passthrough_and_layer_device():
    d = Device("fakecupy", 0)
    assert get_device(d) is d
    assert str(d) == "fakecupy:0"
    layer = Dense(2, 2)
    assert layer.device == Device("cpu")
    layer.to("fakecupy")
    assert layer.device == Device("fakecupy", 0)
    assert ReLU().device is None


# ---- get_array_module ---------------------------------------------------------------------

def test_get_array_module():
    a, f = numpy.ones(2), to_device(numpy.ones(2), "fakecupy")
    assert get_array_module(a) is numpy
    assert get_array_module(f) is fakecupy.xp
    assert get_array_module() is numpy
    assert get_array_module(1, 2.0, None, numpy.float32(1)) is numpy
    assert get_array_module(f, 3.0, None, f) is fakecupy.xp
    assert get_array_module(f[0]) is fakecupy.xp  # 0-d device arrays are still device arrays
    with pytest.raises(TypeError, match="different devices"):
        get_array_module(a, f)
    with pytest.raises(TypeError, match="different devices"):
        get_array_module(f, 1.0, a)
    # the message names the two array types that met (not a scalar or None before them)
    with pytest.raises(TypeError, match="numpy.ndarray and fakecupy.ndarray"):
        get_array_module(None, 2.0, a, f)


# ---- transfers -------------------------------------------------------------------------------

def test_to_device_and_to_numpy():
    a = numpy.arange(6.0).reshape(2, 3)
    assert to_device(a, "cpu") is a  # no copy when already there
    assert to_numpy(a) is a
    f = to_device(a, "fakecupy")
    assert isinstance(f, fakecupy.FakeArray) and device_of(f) == Device("fakecupy", 0)
    assert to_device(f, "fakecupy") is f
    a[0, 0] = 100.0
    assert float(f[0, 0]) == 0.0, "host->device must copy"
    back = to_device(f, "cpu")
    assert isinstance(back, numpy.ndarray) and back.dtype == a.dtype
    numpy.testing.assert_array_equal(back, numpy.arange(6.0).reshape(2, 3))
    numpy.testing.assert_array_equal(to_numpy(f), back)
    # non-contiguous host arrays arrive contiguous, dtype kept
    nc = numpy.arange(12, dtype=numpy.float32).reshape(3, 4).T
    fd = to_device(nc, "fakecupy")
    assert fd.flags.c_contiguous and fd.dtype == numpy.float32
    numpy.testing.assert_array_equal(to_numpy(fd), nc)


def test_device_of_rejects_non_arrays():
    with pytest.raises(TypeError):
        device_of([1, 2, 3])
    assert device_of(numpy.float32(1) * numpy.ones(1)) == Device("cpu")


def test_unregistered_backend_is_unknown():
    backend.unregister_backend("fakecupy")
    try:
        with pytest.raises(ValueError):
            get_device("fakecupy")
    finally:
        fakecupy.register()
    assert get_device("fakecupy").kind == "fakecupy"


# ---- seeding --------------------------------------------------------------------------------

def _init_weights(device: str = "cpu"):
    layer = Conv2D(3, 4, 3)
    layer.to(device)
    return to_numpy(layer.weight.data).copy()


@pytest.mark.parametrize("device", ["cpu", "fakecupy"])
def test_seed_makes_initialisation_reproducible(device):
    gpuconv.seed(123)
    a = _init_weights(device)
    gpuconv.seed(123)
    b = _init_weights(device)
    gpuconv.seed(124)
    c = _init_weights(device)
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(a, c)
    assert numpy.isfinite(a).all() and a.std() > 0


def test_seed_reproduces_a_sequence_of_draws_and_state_roundtrip():
    gpuconv.seed(5)
    first = [_init_weights() for _ in range(3)]
    gpuconv.seed(5)
    again = [_init_weights() for _ in range(3)]
    for x, y in zip(first, again):
        numpy.testing.assert_array_equal(x, y)
    assert not numpy.array_equal(first[0], first[1]), "successive draws must differ"

    gpuconv.seed(9)
    _init_weights()
    state = backend.get_state()
    host_a = backend.host_generator().integers(0, 10**9, 4)
    w_a = _init_weights()
    backend.set_state(state)
    host_b = backend.host_generator().integers(0, 10**9, 4)
    w_b = _init_weights()
    numpy.testing.assert_array_equal(host_a, host_b)
    numpy.testing.assert_array_equal(w_a, w_b)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None])
def test_bad_seed_raises(bad):
    with pytest.raises(ValueError):
        gpuconv.seed(bad)


def test_generators_are_per_device():
    gpuconv.seed(1)
    g_cpu = backend.generator(numpy)
    g_fake = backend.generator(fakecupy.xp)
    assert g_cpu is not g_fake and backend.generator(numpy) is g_cpu
    assert isinstance(g_fake, fakecupy.FakeGenerator)
    gpuconv.seed(1)
    assert backend.generator(numpy) is not g_cpu, "seed() must recreate generators"


def test_reseed_for_epoch_restarts_only_non_cpu_generators():
    def draws(xp):
        return numpy.asarray(backend.to_numpy(backend.generator(xp).random(4)))

    gpuconv.seed(3)
    cpu_first = draws(numpy)
    draws(fakecupy.xp)
    g_cpu = backend.generator(numpy)
    backend.reseed_for_epoch(2)
    assert backend.generator(numpy) is g_cpu, "the CPU generator is never reseeded"
    epoch2 = draws(fakecupy.xp)
    expected = numpy.random.default_rng(backend.epoch_seed(3, 2)).random(4)
    numpy.testing.assert_array_equal(epoch2, expected)
    assert backend.epoch_seed(3, 2) == 3 * 1_000_003 + 2

    # the same epoch again (another process, a resume): the same draws, whatever came before
    gpuconv.seed(3)
    backend.reseed_for_epoch(2)
    numpy.testing.assert_array_equal(draws(fakecupy.xp), epoch2)
    numpy.testing.assert_array_equal(draws(numpy), cpu_first)
    backend.reseed_for_epoch(3)
    assert not numpy.array_equal(draws(fakecupy.xp), epoch2)

    # device generator states are never checkpointed; seed()/set_state() forget the epoch
    state = backend.get_state()
    assert set(state) == {"seed", "host", "cpu"}
    backend.set_state(state)
    numpy.testing.assert_array_equal(draws(fakecupy.xp), numpy.random.default_rng(3).random(4))
    with pytest.raises(ValueError):
        backend.reseed_for_epoch(-1)


# ---- two devices in one process ---------------------------------------------------------------

def _small_model():
    return Sequential([Conv2D(2, 4, 3, padding=1), BatchNorm2d(4), ReLU(), Flatten(),
                       Dropout(0.0), Dense(4 * 5 * 5, 3)])


def test_cpu_and_fakecupy_models_live_in_one_process():
    gpuconv.seed(8)
    cpu_model = _small_model()
    gpuconv.seed(8)
    dev_model = _small_model().to("fakecupy")
    rng = numpy.random.default_rng(0)
    for step in range(3):  # interleaved use; neither model's arrays leak into the other
        x = rng.standard_normal((4, 2, 5, 5)).astype(numpy.float32)
        dy = rng.standard_normal((4, 3)).astype(numpy.float32)
        cpu_model.zero_grad()
        dev_model.zero_grad()
        y_cpu = cpu_model.forward(x)
        y_dev = dev_model.forward(to_device(x, "fakecupy"))
        dx_cpu = cpu_model.backward(dy)
        dx_dev = dev_model.backward(to_device(dy, "fakecupy"))
        assert isinstance(y_cpu, numpy.ndarray) and isinstance(y_dev, fakecupy.FakeArray)
        numpy.testing.assert_allclose(to_numpy(y_dev), y_cpu, rtol=1e-6, atol=1e-6)
        numpy.testing.assert_allclose(to_numpy(dx_dev), dx_cpu, rtol=1e-6, atol=1e-6)
        for (name, p), q in zip(cpu_model.named_parameters(), dev_model.parameters()):
            assert isinstance(p.grad, numpy.ndarray) and isinstance(q.grad, fakecupy.FakeArray)
            # 0.bias feeds a training-mode BatchNorm: its gradient is exactly 0, float32
            # roundoff (~1e-6) in another summation order on the device
            atol = 1e-5 if name == "0.bias" else 1e-6
            numpy.testing.assert_allclose(to_numpy(q.grad), p.grad, rtol=1e-5, atol=atol,
                                          err_msg=name)
            p.data -= 0.1 * p.grad  # a plain SGD step on each device
            q.data -= 0.1 * q.grad
    for (name, a), (_, b) in zip(cpu_model.named_buffers(), dev_model.named_buffers()):
        numpy.testing.assert_allclose(to_numpy(b), a, rtol=1e-6, atol=1e-7, err_msg=name)
    with pytest.raises(TypeError):
        cpu_model.forward(to_device(numpy.zeros((1, 2, 5, 5), numpy.float32), "fakecupy"))
    with pytest.raises(TypeError):
        dev_model.forward(numpy.zeros((1, 2, 5, 5), numpy.float32))


def test_cpu_device_has_no_other_index():
    with pytest.raises(ValueError, match="cpu:1"):
        backend.get_device("cpu:1")
