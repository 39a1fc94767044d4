"""Real-GPU tests (CuPy on CUDA): same results as NumPy. Skipped, with the reason, without CUDA.

Run only these with ``pytest -m gpu``. Float32 tolerances are relative to
each tensor's largest magnitude (rtol 1e-4: cuBLAS and NumPy's BLAS sum in
different orders; TF32, if enabled with CUPY_TF32=1, would need more).
"""
from __future__ import annotations

import numpy
import pytest

import gpuconv
from gpuconv.backend import (cuda_is_available, cuda_unavailable_reason, device_of, to_device,
                             to_numpy)
from gpuconv.containers import Sequential
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Dropout, Flatten, ReLU
from layer_checks import CASES, make_input, make_layer, seed_cnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_is_available(),
                       reason=f"CUDA not usable: {cuda_unavailable_reason() or '?'}"),
]

RTOL = {"float32": 1e-4, "float64": 1e-10}


def close(actual, expected, dtype, what):
    actual, expected = to_numpy(actual), to_numpy(expected)
    rtol = RTOL[str(numpy.dtype(dtype))]
    scale = float(numpy.abs(expected).max()) if expected.size else 0.0
    numpy.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def forward_backward(model, x, dy, device):
    model.to(device)
    model.zero_grad()
    y = model.forward(to_device(x, device))
    dx = model.backward(to_device(dy, device))
    assert device_of(y).kind == device.split(":")[0] and device_of(dx).kind == device.split(":")[0]
    return (to_numpy(y), to_numpy(dx),
            {n: to_numpy(p.grad) for n, p in model.named_parameters()},
            {n: to_numpy(b) for n, b in model.named_buffers()})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_seed_cnn_cpu_and_cuda_agree(dtype):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((32, 3, 32, 32)).astype(dtype)
    dy = rng.standard_normal((32, 10)).astype(dtype)
    gpuconv.seed(1)
    cpu = seed_cnn(dtype)
    gpuconv.seed(1)
    gpu = seed_cnn(dtype)
    cancelled = {f"{i}.bias" for i, (a, b) in enumerate(zip(cpu.layers, cpu.layers[1:]))
                 if isinstance(a, Conv2D) and isinstance(b, BatchNorm2d)}
    for step in range(2):  # two steps: BN running statistics move
        y0, dx0, g0, b0 = forward_backward(cpu, x * (step + 1), dy, "cpu")
        y1, dx1, g1, b1 = forward_backward(gpu, x * (step + 1), dy, "cuda")
        close(y1, y0, dtype, f"step {step} forward")
        close(dx1, dx0, dtype, f"step {step} input gradient")
        for name in g0:
            if name in cancelled and dtype == "float32":
                # d(bias) of a conv feeding a training-mode BatchNorm is exactly 0: float32
                # leaves roundoff that changes with the summation order; near 0 on both
                assert numpy.abs(g1[name]).max() <= 4 * numpy.abs(g0[name]).max() + 1e-6, name
                continue
            close(g1[name], g0[name], dtype, f"step {step} gradient of {name}")
        for name in b0:
            close(b1[name], b0[name], dtype, f"step {step} buffer {name}")
    cpu.eval()
    gpu.eval()
    close(gpu.forward(to_device(x, "cuda")), cpu.forward(x), dtype, "eval forward")


@pytest.mark.parametrize("case", [c for c in CASES if c.reseed is None],
                         ids=[c.id for c in CASES if c.reseed is None])
def test_every_layer_cpu_and_cuda_agree(case):
    rng = numpy.random.default_rng(2)
    x = make_input(case, rng, numpy.float32)
    probe = make_layer(case, "float32", seed=5)
    dy = rng.standard_normal(probe.forward(x).shape).astype(numpy.float32)
    r0 = forward_backward(make_layer(case, "float32", seed=5), x, dy, "cpu")
    r1 = forward_backward(make_layer(case, "float32", seed=5), x, dy, "cuda")
    close(r1[0], r0[0], "float32", "forward")
    close(r1[1], r0[1], "float32", "input gradient")
    for name in r0[2]:
        close(r1[2][name], r0[2][name], "float32", name)
    for name in r0[3]:
        close(r1[3][name], r0[3][name], "float32", name)


def test_model_to_cuda_and_back_roundtrip():
    gpuconv.seed(3)
    model = Sequential([Conv2D(3, 4, 3), BatchNorm2d(4), ReLU(), Flatten(), Dense(4 * 4 * 4, 2)])
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.to("cuda")
    for v in model.state_dict().values():
        assert device_of(v).kind == "cuda"
    model.to("cpu")
    for k, v in model.state_dict().items():
        assert isinstance(v, numpy.ndarray)
        numpy.testing.assert_array_equal(v, before[k])


def test_mixed_device_input_raises_type_error():
    layer = Conv2D(3, 2, 3).to("cuda")
    with pytest.raises(TypeError, match="Conv2D"):
        layer.forward(numpy.ones((1, 3, 5, 5), numpy.float32))
    cpu_layer = Dense(4, 2)
    with pytest.raises(TypeError, match="Dense"):
        cpu_layer.forward(to_device(numpy.ones((2, 4), numpy.float32), "cuda"))


def test_dropout_on_cuda_statistics_and_seeding():
    x = to_device(numpy.ones((256, 256), numpy.float32), "cuda")
    gpuconv.seed(7)
    a = to_numpy(Dropout(0.3).forward(x))
    gpuconv.seed(7)
    b = to_numpy(Dropout(0.3).forward(x))
    numpy.testing.assert_array_equal(a, b)
    kept = (a != 0).mean()
    assert abs(kept - 0.7) < 0.01
    numpy.testing.assert_allclose(a[a != 0], 1 / 0.7, rtol=1e-6)


def test_seeded_init_is_reproducible_on_cuda():
    from gpuconv.layers import init
    from gpuconv.backend import get_device
    xp = get_device("cuda").xp
    gpuconv.seed(11)
    a = to_numpy(init.HeNormal()((3, 4), 3, 4, xp, numpy.float32))
    gpuconv.seed(11)
    b = to_numpy(init.HeNormal()((3, 4), 3, 4, xp, numpy.float32))
    numpy.testing.assert_array_equal(a, b)
