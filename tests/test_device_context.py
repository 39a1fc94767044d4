"""One GPU per rank: gpuconv computes on its arrays' GPU whatever device is current.

CuPy allocates new arrays and launches kernels on the *current* device; with
the model on ``cuda:1`` and GPU 0 current (every rank but the first of a
one-GPU-per-rank job, or any user code), gpuconv must enter the arrays'
device itself. The strict fake CuPy has two fake GPUs and raises like CuPy
without peer access, so these run without a GPU. The layer, loss, optimizer,
metric, augmentation and fit suites run on ``"fakecupy:1"`` too (modules that
use ``device_fixture_with_second_gpu``); here: the fake's device rules
themselves, and the pieces those suites cannot reach.
"""
from __future__ import annotations

import numpy
import pytest

import fakecupy
import gpuconv
from gpuconv import backend
from gpuconv.backend import device_of, get_device, to_device, to_numpy
from gpuconv.cli.report import collect_logits
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.models import Sequential
from gpuconv.training.loop import ArrayBatches
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Flatten, GlobalAvgPool2D, ReLU
from gpuconv.ops import cuda_source
from gpuconv.optim import SGD, Adam

xp = fakecupy.xp
GPU1 = "fakecupy:1"


def on(index: int, a: numpy.ndarray) -> fakecupy.FakeArray:
    return fakecupy.from_host(numpy.asarray(a), index)


# ---- the fake's rules (what CuPy does without peer access) -------------------------------

def test_current_device_is_per_thread_and_nests():
    import threading

    assert xp.cuda.Device().id == 0
    with xp.cuda.Device(1):
        assert xp.cuda.Device().id == 1 and xp.zeros(2).device.id == 1
        with xp.cuda.Device(0):
            assert xp.zeros(2).device.id == 0
        seen = []
        thread = threading.Thread(target=lambda: seen.append(xp.cuda.Device().id))
        thread.start()
        thread.join()
        assert seen == [0], "another host thread keeps its own current device"
    assert xp.cuda.Device().id == 0
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        xp.cuda.Device(2)


def test_work_on_another_devices_array_raises_like_cupy():
    a1 = on(1, numpy.arange(6.0).reshape(2, 3))
    a0 = on(0, numpy.ones((2, 3)))
    for work in (lambda: a1 + 1, lambda: a1.sum(), lambda: xp.exp(a1), lambda: a1.copy(),
                 lambda: a0 + a1, lambda: a1[xp.asarray([0])], lambda: a1.astype("float32"),
                 lambda: a1.__setitem__(0, 1.0), lambda: a0.__iadd__(a1)):
        with pytest.raises(ValueError, match=r"resides \(1\) is different from the current "
                                             r"device \(0\)"):
            work()
    with xp.cuda.Device(1):
        numpy.testing.assert_array_equal((a1 + 1).get(), numpy.arange(6.0).reshape(2, 3) + 1)
        with pytest.raises(ValueError, match=r"resides \(0\)"):
            a0 + a1


def test_views_metadata_and_host_copies_work_from_any_device():
    a1 = on(1, numpy.arange(6.0).reshape(2, 3))
    for view in (a1[0], a1[:, 1:], a1.T, a1.reshape(3, 2), a1.transpose(1, 0), a1[None]):
        assert view.device.id == 1
    assert a1.shape == (2, 3) and a1.dtype == numpy.float64 and float(a1[1, 2]) == 5.0
    numpy.testing.assert_array_equal(a1.get(), numpy.arange(6.0).reshape(2, 3))
    assert "fakearray" in repr(a1)
    assert a1.data.ptr == a1.get().__array_interface__["data"][0] or a1.data.ptr != 0


def test_a_generator_draws_only_on_its_device():
    gen = xp.random.default_rng(0)
    gen.random(3)
    with xp.cuda.Device(1):
        with pytest.raises(ValueError, match="resides"):
            gen.random(3)


# ---- gpuconv on fake GPU 1 with GPU 0 current ---------------------------------------------

def test_backend_generators_are_per_gpu():
    gpuconv.seed(4)
    first = backend.to_numpy(backend.generator(xp).random(3))
    with get_device(GPU1).context():
        gen1 = backend.generator(xp)  # without one generator per GPU: CuPy's error
        second = backend.to_numpy(gen1.random(3))
        assert gen1.random(1).device.id == 1
    numpy.testing.assert_array_equal(first, second)  # the same stream on every GPU
    assert backend.generator(xp) is not gen1


def test_raw_kernels_launch_on_their_arrays_gpu(monkeypatch):
    """A kernel given GPU-1 pointers must be fetched and launched with GPU 1 current."""
    launched = []

    def fake_kernel(xp_, name, dtype, device_id=None):
        def run(grid, block, args):
            launched.append((name, device_id, xp.cuda.Device().id))
        return run

    monkeypatch.setattr(cuda_source, "get_kernel", fake_kernel)
    dy, y, dx = (on(1, numpy.ones(5, numpy.float32)) for _ in range(3))
    cuda_source.launch(xp, "relu_grad", numpy.float32, 5, (dy, y, dx, xp.int64(5)))
    assert launched == [("relu_grad", 1, 1)]
    assert xp.cuda.Device().id == 0


def _model() -> Sequential:
    gpuconv.seed(0)
    return Sequential([Conv2D(3, 4, 3, padding="same"), BatchNorm2d(4), ReLU(),
                       GlobalAvgPool2D(), Flatten(), Dense(4, 3)])


@pytest.mark.parametrize("make", [lambda m: Adam(m, lr=0.01),
                                  lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01)],
                         ids=["Adam", "SGD"])
def test_optimizer_state_follows_the_model_to_another_gpu(make):
    """After ``model.to("cuda:1")`` the optimizer's state must move too (the stale-state check
    compares devices, not only array types), and steps equal the CPU's."""
    rng = numpy.random.default_rng(1)
    grads = [rng.standard_normal(p.shape) for p in _model().parameters()]

    def run(first: str, then: str) -> list[numpy.ndarray]:
        model = _model().astype("float64").to(first)
        opt = make(model)
        for step in range(3):
            if step == 1:
                model.to(then)
            for p, g in zip(model.parameters(), grads):
                p.zero_grad()
                with device_of(p.grad).context():
                    p.grad += to_device(g * (step + 1), device_of(p.grad))
            opt.step()
        for state in opt.state:
            for buf in state.values():
                assert device_of(buf) == get_device(then)
        return [to_numpy(p.data) for p in model.parameters()]

    expected = run("cpu", "cpu")
    for got, want in zip(run("fakecupy", GPU1), expected):
        numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_training_step_and_report_on_gpu1_equal_the_cpu():
    """fit one epoch and the final report's logits (cli.report.collect_logits) with the model
    on fake GPU 1 and GPU 0 current: the CPU's numbers."""
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((24, 3, 6, 6))
    y = rng.integers(0, 3, 24)
    results = []
    for device in ("cpu", GPU1):
        model = _model().astype("float64").to(device)
        history = model.fit(ArrayBatches(x, y, 8, seed=3),
                            epochs=2, optimizer=Adam(model, lr=0.01),
                            loss=SoftmaxCrossEntropy(), verbose=0)
        batches = [(to_device(x[i:i + 8], device), to_device(y[i:i + 8], device))
                   for i in range(0, 24, 8)]
        logits, labels = collect_logits(model, batches, tta=2)
        assert xp.cuda.Device().id == 0
        results.append((history.history["loss"], logits, labels))
    (loss0, logits0, labels0), (loss1, logits1, labels1) = results
    numpy.testing.assert_allclose(loss1, loss0, rtol=1e-10)
    # the conv bias before BatchNorm has a zero gradient: its float64 roundoff (another
    # summation order on the device) moves it by ~1e-12 per step
    numpy.testing.assert_allclose(logits1, logits0, rtol=1e-8, atol=1e-10)
    numpy.testing.assert_array_equal(labels1, labels0)


def test_layer_given_an_input_on_another_gpu_names_both_devices():
    layer = Dense(3, 2).to(GPU1)
    with pytest.raises(TypeError, match=r"Dense.*fakecupy:0.*fakecupy:1"):
        layer.forward(on(0, numpy.ones((2, 3), numpy.float32)))
