"""Raw CUDA kernels: NVRTC compile check here (no GPU needed); kernel vs xp reference on a GPU."""
import numpy as np
import pytest

from gpuconv.backend import cuda_is_available, cuda_unavailable_reason, to_device, to_numpy
from gpuconv.ops import cuda_source
from gpuconv.ops.fused import adam_update

KERNELS = [(name, dtype) for name in cuda_source.SOURCES for dtype in ("float32", "float64")]


def nvrtc_compile(source: str, name: str) -> bytes:
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(source, name + ".cu", [], [])
    try:
        nvrtc.compileProgram(program, ["-arch=compute_80"])
    except Exception as exc:  # the log says which line is wrong
        raise AssertionError(f"NVRTC failed on {name}:\n{nvrtc.getProgramLog(program)}") from exc
    return nvrtc.getPTX(program)


@pytest.mark.parametrize("name,dtype", KERNELS)
def test_kernel_compiles_with_nvrtc(name, dtype):
    source, kernel_name = cuda_source.render(name, dtype)
    ptx = nvrtc_compile(source, kernel_name)
    assert f".entry {kernel_name}".encode() in ptx


def test_nvrtc_check_can_fail():
    with pytest.raises(AssertionError, match="NVRTC failed"):
        nvrtc_compile('extern "C" __global__ void k(float* a) { a[0] = undefined_name; }', "bad")


def test_render_rejects_unsupported_dtype():
    with pytest.raises(TypeError, match="float16"):
        cuda_source.render("adam_update", "float16")


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_is_available(), reason=f"needs CUDA: {cuda_unavailable_reason()}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_kernel_matches_reference_on_gpu(dtype, decoupled):
    rng = np.random.default_rng(0)
    host = {k: rng.standard_normal(1000).astype(dtype) for k in ("p", "g", "m")}
    host["v"] = np.abs(rng.standard_normal(1000)).astype(dtype)
    results = []
    for use_kernel in (True, False):
        arrays = {k: to_device(v.copy(), "cuda") for k, v in host.items()}
        for step in range(1, 4):
            adam_update(arrays["p"], arrays["g"], arrays["m"], arrays["v"], lr=1e-2, beta1=0.9,
                        beta2=0.999, eps=1e-8, step=step, weight_decay=0.01,
                        decoupled=decoupled, use_kernel=use_kernel)
        results.append({k: to_numpy(v) for k, v in arrays.items()})
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for key in ("p", "m", "v"):
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=rtol, atol=rtol)


def _bn_inputs(shape, dtype, rng):
    channels = shape[1]
    host = {"x": rng.standard_normal(shape).astype(dtype),
            "dy": rng.standard_normal(shape).astype(dtype)}
    for name in ("inv_std", "gamma", "beta", "scale", "mean_dy", "mean_dy_xhat"):
        host[name] = (rng.random(channels) + 0.5).astype(dtype)
    return host


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_is_available(), reason=f"needs CUDA: {cuda_unavailable_reason()}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (6, 11)])
def test_batchnorm_and_relu_kernels_match_reference_on_gpu(dtype, shape):
    from gpuconv.ops.fused import batchnorm_input_grad, batchnorm_normalize, relu_grad

    host = _bn_inputs(shape, dtype, np.random.default_rng(1))
    outputs = []
    for use_kernel in (True, False):
        d = {k: to_device(v.copy(), "cuda") for k, v in host.items()}
        y = batchnorm_normalize(d["x"], d["inv_std"], d["gamma"], d["beta"], use_kernel)
        dx = batchnorm_input_grad(d["dy"], d["x"], d["scale"], d["mean_dy"], d["mean_dy_xhat"],
                                  use_kernel)
        relu = relu_grad(d["dy"], d["x"], use_kernel)
        outputs.append([to_numpy(a) for a in (d["x"], y, dx, relu)])
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for kernel_out, reference_out in zip(*outputs):
        np.testing.assert_allclose(kernel_out, reference_out, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (3, 5), (2, 3, 7)])
def test_batchnorm_reference_path_per_channel_rows_equal_plain_broadcasting(shape):
    """The NumPy path broadcasts per-channel values as whole-image rows (channel_rows);
    any layout (C-contiguous, Fortran-ordered, 2-D, 3-D) equals plain broadcasting."""
    from gpuconv.ops.fused import batchnorm_input_grad, batchnorm_normalize

    rng = np.random.default_rng(9)
    c = shape[1]
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    inv_std, gamma, beta, scale, mean_dy, coef = (rng.standard_normal(c) for _ in range(6))
    b = (1, c) + (1,) * (len(shape) - 2)
    want_y = x * (gamma * inv_std).reshape(b) + beta.reshape(b)
    want_dx = (x * -coef.reshape(b) + dy - mean_dy.reshape(b)) * scale.reshape(b)
    for layout in (np.ascontiguousarray, np.asfortranarray):
        xs, dys = layout(x), layout(dy)
        np.testing.assert_allclose(batchnorm_normalize(xs, inv_std, gamma, beta), want_y,
                                      rtol=1e-14, atol=1e-14)
        got = batchnorm_input_grad(dys, xs, scale, mean_dy, coef)
        assert got.shape == shape
        np.testing.assert_allclose(got, want_dx, rtol=1e-13, atol=1e-13)
