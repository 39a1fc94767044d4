"""Raw CUDA sources and their lazy compilation with CuPy.

Every kernel here has a pure-``xp`` reference implementation next to its
caller (see :mod:`.fused`); the test suite compiles each source with NVRTC
(no GPU needed) and, where CUDA exists, compares kernel and reference.

Sources are templates over the element type ``T`` (float or double); use
:func:`render` to get the source for one dtype.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

from ..backend import backend_of_module, device_context_of

# One thread per element. Scalars arrive as T or long long; bias corrections
# are computed on the host (Python floats), so the kernel never syncs.
ADAM_SOURCE = r"""
extern "C" __global__ void adam_update_${T}(
        ${T}* __restrict__ param, const ${T}* __restrict__ grad,
        ${T}* __restrict__ exp_avg, ${T}* __restrict__ exp_avg_sq,
        const ${T} lr, const ${T} beta1, const ${T} beta2, const ${T} eps,
        const ${T} step_size, const ${T} bias_correction2_sqrt,
        const ${T} weight_decay, const int decoupled, const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        ${T} p = param[i];
        ${T} g = grad[i];
        if (decoupled) {
            p = p * (${T})(1 - lr * weight_decay);
        } else if (weight_decay != 0) {
            g = g + weight_decay * p;
        }
        ${T} m = beta1 * exp_avg[i] + (1 - beta1) * g;
        ${T} v = beta2 * exp_avg_sq[i] + (1 - beta2) * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        ${T} denom = sqrt(v) / bias_correction2_sqrt + eps;
        param[i] = p - step_size * (m / denom);
    }
}
"""

# Per-channel kernels see the array as (N, C, inner) in C order: inner = H*W for
# BatchNorm2d, 1 for BatchNorm1d; the channel of flat index i is (i / inner) % C.
BN_NORMALIZE_SOURCE = r"""
extern "C" __global__ void bn_normalize_${T}(
        const ${T}* __restrict__ centred, ${T}* __restrict__ y, const ${T}* __restrict__ inv_std,
        const ${T}* __restrict__ gamma, const ${T}* __restrict__ beta,
        const long long inner, const long long channels, const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long c = (i / inner) % channels;
        y[i] = centred[i] * inv_std[c] * gamma[c] + beta[c];
    }
}
"""

BN_INPUT_GRAD_SOURCE = r"""
extern "C" __global__ void bn_input_grad_${T}(
        const ${T}* __restrict__ dy, const ${T}* __restrict__ centred, ${T}* __restrict__ dx,
        const ${T}* __restrict__ scale, const ${T}* __restrict__ mean_dy,
        const ${T}* __restrict__ centred_coef,
        const long long inner, const long long channels, const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long c = (i / inner) % channels;
        dx[i] = scale[c] * (dy[i] - mean_dy[c] - centred[i] * centred_coef[c]);
    }
}
"""

RELU_GRAD_SOURCE = r"""
extern "C" __global__ void relu_grad_${T}(
        const ${T}* __restrict__ dy, const ${T}* __restrict__ y, ${T}* __restrict__ dx,
        const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        dx[i] = y[i] > (${T})0 ? dy[i] : (${T})0;
    }
}
"""

# CUDA's own erf/erfc (float and double overloads); op 0 erf, 1 erfc, 2 the normal CDF.
SPECIAL_UNARY_SOURCE = r"""
extern "C" __global__ void special_unary_${T}(
        const ${T}* __restrict__ x, ${T}* __restrict__ y, const int op, const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const ${T} v = x[i];
        if (op == 0) {
            y[i] = erf(v);
        } else if (op == 1) {
            y[i] = erfc(v);
        } else {
            y[i] = (${T})0.5 * erfc(-v * (${T})0.70710678118654752440);
        }
    }
}
"""

# GELU: exact x * Phi(x) (tanh_form 0) or the tanh approximation (1); backward is
# dy * (Phi(x) + x phi(x)) or the tanh form's derivative. Reads x only (nothing cached).
GELU_FORWARD_SOURCE = r"""
extern "C" __global__ void gelu_forward_${T}(
        const ${T}* __restrict__ x, ${T}* __restrict__ y, const int tanh_form,
        const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const ${T} v = x[i];
        if (tanh_form) {  // clamped: tanh is +-1 beyond 20, and v^3 cannot overflow
            const ${T} vc = v > (${T})20 ? (${T})20 : (v < (${T})-20 ? (${T})-20 : v);
            const ${T} inner = (${T})0.79788456080286535588 * (vc + (${T})0.044715 * vc * vc * vc);
            y[i] = (${T})0.5 * v * ((${T})1 + tanh(inner));
        } else {
            y[i] = v * (${T})0.5 * erfc(-v * (${T})0.70710678118654752440);
        }
    }
}
"""

GELU_BACKWARD_SOURCE = r"""
extern "C" __global__ void gelu_backward_${T}(
        const ${T}* __restrict__ dy, const ${T}* __restrict__ x, ${T}* __restrict__ dx,
        const int tanh_form, const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const ${T} v = x[i];
        ${T} d;
        if (tanh_form) {  // clamped: 1 - t*t is 0 beyond 20 (no inf * 0)
            const ${T} vc = v > (${T})20 ? (${T})20 : (v < (${T})-20 ? (${T})-20 : v);
            const ${T} k = (${T})0.79788456080286535588;
            const ${T} c = (${T})0.044715;
            const ${T} t = tanh(k * (vc + c * vc * vc * vc));
            d = (${T})0.5 * ((${T})1 + t)
                + (${T})0.5 * vc * ((${T})1 - t * t) * k * ((${T})1 + (${T})3 * c * vc * vc);
        } else {
            const ${T} cdf = (${T})0.5 * erfc(-v * (${T})0.70710678118654752440);
            const ${T} pdf = (${T})0.39894228040143267794 * exp((${T})-0.5 * v * v);
            d = cdf + v * pdf;
        }
        dx[i] = dy[i] * d;
    }
}
"""

SOURCES = {"adam_update": ADAM_SOURCE, "bn_normalize": BN_NORMALIZE_SOURCE,
           "bn_input_grad": BN_INPUT_GRAD_SOURCE, "relu_grad": RELU_GRAD_SOURCE,
           "special_unary": SPECIAL_UNARY_SOURCE, "gelu_forward": GELU_FORWARD_SOURCE,
           "gelu_backward": GELU_BACKWARD_SOURCE}

_C_TYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}


def render(name: str, dtype: Any) -> tuple[str, str]:
    """``(source, kernel_name)`` of kernel ``name`` specialised for ``dtype``."""
    c_type = _C_TYPES.get(numpy.dtype(dtype))
    if c_type is None:
        raise TypeError(f"CUDA kernel {name!r}: unsupported dtype {numpy.dtype(dtype)}; "
                        "expected float32 or float64")
    return SOURCES[name].replace("${T}", c_type), f"{name}_{c_type}"


_compiled: dict[tuple[str, str], Any] = {}


def get_kernel(xp: ModuleType, name: str, dtype: Any, device_id: "int | None" = None) -> Any:
    """The compiled ``RawKernel`` for ``name`` and ``dtype``, cached per device
    (``device_id``; default the current one).

    ``xp`` must be the cupy module (taken from the arrays, never imported here).
    """
    source, kernel_name = render(name, dtype)
    key = (kernel_name, int(xp.cuda.Device().id if device_id is None else device_id))
    kernel = _compiled.get(key)
    if kernel is None:
        kernel = xp.RawKernel(source, kernel_name)
        _compiled[key] = kernel
    return kernel


THREADS = 256
MAX_BLOCKS = 4096


def use_kernel(xp: ModuleType, *arrays: Any) -> bool:
    """True where a raw kernel can take ``arrays``: CuPy, C-contiguous, one float32/64 dtype.

    Anything else (float16 under mixed precision, the fake CuPy) runs the xp path.
    """
    return (backend_of_module(xp).name == "cuda" and all(a.flags.c_contiguous for a in arrays)
            and len({a.dtype for a in arrays}) == 1
            and arrays[0].dtype.name in ("float32", "float64"))


def launch(xp: ModuleType, name: str, dtype: Any, n: int, args: tuple) -> None:
    """Run raw kernel ``name`` over ``n`` elements (grid-stride loop inside the kernel)
    on the device of the first array in ``args``.

    That device is made current here: CuPy launches on the current device without
    checking the arguments, and a kernel handed another GPU's pointers faults.
    """
    first = next(a for a in args if isinstance(a, xp.ndarray))
    blocks = max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS))
    with device_context_of(first):
        get_kernel(xp, name, dtype, first.device.id)((blocks,), (THREADS,), args)
