"""Mixed precision (float16 compute, float32 master weights) and dynamic loss scaling."""
from __future__ import annotations

import math
import types

import numpy
import pytest
import torch

import gpuconv
from gpuconv.backend import to_device, to_numpy
from gpuconv.cli import main
from gpuconv.layers import (AvgPool2D, BatchNorm1d, BatchNorm2d, Conv1D, Conv2D, Dense, Dropout,
                            Dropout2d, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Residual)
from gpuconv.layers.base import Parameter
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.ops import cuda_source, fused
from gpuconv.optim import SGD, Adam
from gpuconv import amp as amp_module
from gpuconv.amp import GradScaler, enable_mixed_precision
from gpuconv.io.checkpoint import load_checkpoint
from gpuconv.training.loop import ArrayBatches
from toy_data import blob_images

F16 = numpy.dtype(numpy.float16)
F32 = numpy.dtype(numpy.float32)


def small_cnn(seed: int = 0) -> gpuconv.Sequential:
    """No bias before BatchNorm (its true gradient is 0: float16 noise around 0 has no
    relative tolerance) and average pooling (a float16 near-tie in a max-pooling window
    routes one gradient element elsewhere: a real but discrete difference)."""
    gpuconv.seed(seed)
    return gpuconv.Sequential([
        Conv2D(1, 8, 3, padding=1, bias=False), BatchNorm2d(8), ReLU(), AvgPool2D(2),
        Residual([Conv2D(8, 8, 3, padding=1, bias=False), BatchNorm2d(8), ReLU()]),
        Flatten(), Dense(8 * 4 * 4, 16, bias=False), BatchNorm1d(16), ReLU(), Dense(16, 3)])


def host(model) -> dict[str, numpy.ndarray]:
    return {k: to_numpy(v).copy() for k, v in model.state_dict().items()}


def host_grads(model) -> dict[str, numpy.ndarray]:
    return {k: to_numpy(p.grad).copy() for k, p in model.named_parameters()}


def assert_close_fp16(actual, expected, rtol=1e-2):
    """Elementwise within rtol, with an absolute floor of rtol * max|expected|
    (float16 keeps ~3 decimal digits; tiny entries carry the error of big ones)."""
    expected = numpy.asarray(expected, dtype=numpy.float64)
    atol = rtol * max(float(numpy.abs(expected).max()), 1e-30)
    numpy.testing.assert_allclose(numpy.asarray(actual, dtype=numpy.float64), expected,
                                  rtol=rtol, atol=atol)


# ---- GradScaler vs torch.amp.GradScaler -----------------------------------------------

GRADS = [1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0, math.nan, -2.0, 1.0, 1.0, 1.0, -math.inf, 0.5,
         1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("config", [
    dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
    dict(init_scale=1000.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=2),
    dict(init_scale=2.0 ** 125, growth_factor=4.0, backoff_factor=0.5, growth_interval=1),
], ids=["pow2", "odd-factors", "growth-overflows-float32"])
def test_grad_scaler_matches_torch(config):
    t_param = torch.nn.Parameter(torch.zeros(3))
    t_opt = torch.optim.SGD([t_param], lr=0.1)
    t_scaler = torch.amp.GradScaler("cpu", **config)
    g_param = Parameter(numpy.zeros(3, dtype=numpy.float32), "w")
    g_opt = SGD([g_param], lr=0.1)
    g_scaler = GradScaler(**config)
    for step, value in enumerate(GRADS):
        grad = numpy.array([value, 0.25, -1.0], dtype=numpy.float32)
        # torch: the loss is scaled; we inject the gradient that backward would give
        t_opt.zero_grad()
        t_scaler.scale(torch.ones(()))
        t_param.grad = torch.from_numpy(grad) * t_scaler.get_scale()
        before = t_param.detach().clone()
        t_scaler.step(t_opt)
        t_stepped = bool((t_param.detach() != before).any())
        t_unscaled = t_param.grad.numpy().copy()
        t_scaler.update()

        g_opt.zero_grad()
        g_param.grad[...] = g_scaler.scale_grad(grad)
        finite = g_scaler.unscale_([g_param])
        if finite:
            g_opt.step()
        g_scaler.update()

        assert finite == t_stepped, f"step {step}"
        numpy.testing.assert_array_equal(g_param.grad, t_unscaled, err_msg=f"step {step}")
        # (SGD itself may round its last bit differently from torch's fused add)
        numpy.testing.assert_allclose(g_param.data, t_param.detach().numpy(), rtol=1e-6)
        assert g_scaler.scale == t_scaler.get_scale(), f"step {step}"
        assert g_scaler.state_dict() == t_scaler.state_dict(), f"step {step}"


def test_grad_scaler_step_update_state_and_disabled():
    p = Parameter(numpy.ones(2, dtype=numpy.float32))
    opt = SGD([p], lr=1.0)
    scaler = GradScaler(init_scale=8.0, growth_interval=2)
    p.grad[...] = [numpy.inf, 8.0]
    assert scaler.step(opt) is False and opt.step_count == 0  # skipped: optimizer not touched
    scaler.update()
    assert scaler.scale == 4.0
    with pytest.raises(RuntimeError, match="update"):
        scaler.update()                                       # no unscale_ this step
    scaler.update(found_inf=False)
    scaler.update(found_inf=False)
    assert scaler.state_dict()["scale"] == 8.0 and scaler.state_dict()["_growth_tracker"] == 0
    scaler.unscale_([p])
    with pytest.raises(RuntimeError, match="already"):
        scaler.unscale_([p])
    restored = GradScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.scale == 8.0 and restored.growth_interval == 2

    off = GradScaler(enabled=False)
    g = numpy.array([numpy.inf], dtype=numpy.float32)
    assert off.scale == 1.0 and off.scale_grad(g) is g and off.unscale_([p]) is True
    off.update()
    assert off.state_dict() == {}
    for bad in (dict(init_scale=0.0), dict(growth_factor=1.0), dict(backoff_factor=1.0),
                dict(growth_interval=0)):
        with pytest.raises(ValueError):
            GradScaler(**bad)


def test_unscale_reads_the_device_once(device, monkeypatch):
    model = small_cnn().to(device)
    for p in model.parameters():
        p.grad[...] = 4.0
    reads = []
    real = amp_module.to_numpy
    monkeypatch.setattr(amp_module, "to_numpy", lambda a: reads.append(1) or real(a))
    scaler = GradScaler(init_scale=4.0)
    assert scaler.unscale_(model) is True
    assert len(reads) == 1 and len(model.parameters()) > 10
    assert all(float(to_numpy(p.grad).max()) == 1.0 for p in model.parameters())
    model.parameters()[3].grad[0] = numpy.nan
    scaler.update()
    assert scaler.unscale_(model) is False and len(reads) == 2


def test_unscale_skips_frozen_parameters():
    """A frozen parameter (requires_grad False) is neither unscaled nor checked, like a
    torch tensor without .grad: its overflow does not skip the step."""
    class Freezable(Parameter):
        pass

    frozen, live = Freezable(numpy.ones(2, dtype=numpy.float32)), \
        Parameter(numpy.ones(2, dtype=numpy.float32))
    frozen.requires_grad = False
    frozen.grad[...] = [numpy.inf, 8.0]
    live.grad[...] = 8.0
    opt = SGD([frozen, live], lr=1.0)
    scaler = GradScaler(init_scale=8.0)
    assert scaler.step(opt) is True and opt.step_count == 1
    numpy.testing.assert_array_equal(frozen.grad, [numpy.inf, 8.0])
    numpy.testing.assert_array_equal(live.data, [0.0, 0.0])  # 1 - lr * 8 / 8
    numpy.testing.assert_array_equal(frozen.data, [1.0, 1.0])


# ---- the compute-dtype policy -----------------------------------------------------------

def test_policy_reaches_every_layer_and_can_be_turned_off():
    model = gpuconv.Sequential([Conv2D(1, 2, 3), Residual([Conv2D(2, 2, 1)], [Conv2D(2, 2, 1)]),
                                ReLU(), Flatten(), Dense(2, 2)])
    enable_mixed_precision(model, "float16")

    def layers(layer):
        yield layer
        for child in layer.children():
            yield from layers(child)

    assert all(layer.compute_dtype == F16 for layer in layers(model))
    assert all(p.data.dtype == F32 for p in model.parameters())  # master weights untouched
    enable_mixed_precision(model, None)
    assert all(layer.compute_dtype is None for layer in layers(model))
    with pytest.raises(TypeError, match="narrower"):
        enable_mixed_precision(model, "float32")
    with pytest.raises(TypeError):
        model.set_compute_dtype("int8")


def test_dtype_errors_still_raise():
    dense = Dense(3, 2)
    with pytest.raises(TypeError, match="input dtype float64 does not match parameter dtype"):
        dense.forward(numpy.zeros((2, 3)))
    with pytest.raises(TypeError, match="dtype float16"):
        dense.forward(numpy.zeros((2, 3), dtype=numpy.float16))   # no policy: no float16
    enable_mixed_precision(dense)
    with pytest.raises(TypeError, match="float64"):                # policy: still no float64
        dense.forward(numpy.zeros((2, 3)))
    bn = BatchNorm1d(3).set_compute_dtype("float16")
    with pytest.raises(TypeError, match="float64"):
        bn.forward(numpy.zeros((4, 3)))


def test_every_layer_keeps_float16_forward_and_backward(device):
    """Outputs and input gradients stay float16 (no silent upcast); parameter gradients are
    float32; a float32 input gets a float32 gradient back."""
    gpuconv.seed(0)
    layers = [Conv2D(3, 8, 3, padding="same"), BatchNorm2d(8), ReLU(), MaxPool2D(2),
              Dropout2d(0.2), Residual([Conv2D(8, 8, 3, padding=1), BatchNorm2d(8)]),
              Residual([Conv2D(8, 4, 1)], [Conv2D(8, 4, 1)]), AvgPool2D(2),
              Conv2D(4, 8, 3, stride=2, padding=1), GlobalAvgPool2D(), Flatten(), Dense(8, 16),
              BatchNorm1d(16), Dropout(0.3), ReLU(), Dense(16, 10)]
    model = enable_mixed_precision(gpuconv.Sequential(layers).to(device))
    x = to_device(numpy.random.default_rng(0).standard_normal((4, 3, 16, 16))
                  .astype(numpy.float32), device)
    outs, h = [], x
    for layer in layers:
        h = layer.forward(h)
        outs.append(h.dtype)
    assert outs == [F16] * len(layers)
    g, grads = h * 0 + 1, []
    for layer in reversed(layers):
        g = layer.backward(g)
        grads.append(g.dtype)
    assert grads == [F16] * (len(layers) - 1) + [F32]  # the first Conv2D got float32 x
    assert all(p.grad.dtype == F32 and p.data.dtype == F32 for p in model.parameters())
    bn = layers[1]
    assert bn.running_mean.dtype == F32 and bn.running_var.dtype == F32

    conv1d = Conv1D(2, 3, 3, padding=1).to(device).set_compute_dtype("float16")
    y = conv1d.forward(to_device(numpy.ones((2, 2, 5), dtype=numpy.float32), device))
    assert y.dtype == F16 and conv1d.backward(y).dtype == F32
    # identity shortcut on a float32 input: float16 body + float32 skip promote; backward
    # gives each branch its own dtype
    res = Residual([Conv2D(3, 3, 1)]).to(device).set_compute_dtype("float16")
    y = res.forward(x)
    assert y.dtype == F32 and res.backward(y).dtype == F32


def scaled_step(model, x, y, scaler, params=None):
    loss = SoftmaxCrossEntropy()
    pred = model.forward(x)
    value = loss.forward(pred.astype(numpy.float32), y)
    model.backward(scaler.scale_grad(loss.backward()).astype(pred.dtype))
    return pred, value, scaler.unscale_(params if params is not None else model)


def test_amp_gradients_match_float32(device):
    x, y = blob_images(32)
    x, y = to_device(x, device), to_device(y, device)
    ref = small_cnn().to(device)
    mixed = enable_mixed_precision(small_cnn().to(device))
    loss = SoftmaxCrossEntropy()
    pred32 = ref.forward(x)
    value32 = loss.forward(pred32, y)
    ref.backward(loss.backward())
    pred16, value16, finite = scaled_step(mixed, x, y, GradScaler(init_scale=2.0 ** 10))
    assert finite and pred16.dtype == F16
    assert_close_fp16(to_numpy(pred16), to_numpy(pred32))
    assert abs(float(to_numpy(value16)) - float(to_numpy(value32))) < 1e-2
    want, got = host_grads(ref), host_grads(mixed)
    for name in want:
        assert_close_fp16(got[name], want[name], rtol=1e-2)
    for name, buf in host(mixed).items():  # running statistics too
        numpy.testing.assert_allclose(buf, host(ref)[name], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("make_opt", [lambda m: SGD(m, lr=0.1, momentum=0.9),
                                      lambda m: Adam(m, lr=1e-3)], ids=["sgd", "adam"])
def test_amp_update_of_master_weights_matches_float32(device, make_opt):
    gpuconv.seed(1)
    x, y = blob_images(16)
    x, y = to_device(x, device), to_device(y, device)

    def model():
        gpuconv.seed(3)
        return gpuconv.Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), Flatten(),
                                   Dense(4 * 8 * 8, 3)]).to(device)

    ref, mixed = model(), enable_mixed_precision(model())
    start = host(ref)
    ref_opt, mixed_opt, scaler = make_opt(ref), make_opt(mixed), GradScaler()
    loss = SoftmaxCrossEntropy()
    for _ in range(2):
        ref_opt.zero_grad()
        loss.forward(ref.forward(x), y)
        ref.backward(loss.backward())
        ref_opt.step()
        mixed_opt.zero_grad()
        _, _, finite = scaled_step(mixed, x, y, scaler)
        assert finite
        mixed_opt.step()
        scaler.update()
    want, got = host(ref), host(mixed)
    for name in want:
        assert got[name].dtype == F32
        step = want[name] - start[name]
        assert_close_fp16(got[name] - start[name], step, rtol=2e-2)


# ---- fit ------------------------------------------------------------------------------------

def amp_kwargs(model, device, scaler=None) -> dict:
    """fit's mixed-precision arguments: ``amp=True`` off the CPU; on the CPU, where
    ``amp=True`` is refused, the same float16 policy and scaler set up by hand."""
    if device == "cpu":
        enable_mixed_precision(model, "float16")
        return {"grad_scaler": scaler or GradScaler()}
    return {"amp": True, **({} if scaler is None else {"grad_scaler": scaler})}


def test_fit_amp_true_is_refused_on_the_cpu():
    """NumPy has no float16 BLAS: fit(amp=True) on the CPU says so instead of training
    hundreds of times slower, and changes nothing."""
    x, y = blob_images(32)
    model = small_cnn()
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        model.fit(ArrayBatches(x, y, batch_size=16), 1, Adam(model, lr=0.01),
                  SoftmaxCrossEntropy(), verbose=0, amp=True)
    assert model.compute_dtype is None


def test_fit_with_amp_learns(device):
    x, y = blob_images(96)
    model = small_cnn().to(device)
    history = model.fit(ArrayBatches(x, y, batch_size=32), 4, Adam(model, lr=0.01),
                        SoftmaxCrossEntropy(), val_data=ArrayBatches(x[:32], y[:32], 32),
                        verbose=0, **amp_kwargs(model, device))
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(math.isfinite(v) for v in losses + history.history["val_loss"])
    assert all(r["amp_skipped"] < 3 for r in history.records)
    assert all(r["amp_scale"] >= 1.0 for r in history.records)
    assert model.compute_dtype == F16 and model.predict(to_device(x[:4], device)).dtype == F16
    assert all(p.data.dtype == F32 for p in model.parameters())
    assert history.records[-1]["accuracy"] > 0.6


@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")  # on purpose
def test_overflowing_steps_are_skipped_not_nan_errors(device):
    """A scale far too large makes every gradient inf: no update, Adam untouched,
    the scale backs off once per step, and fit does not raise."""
    x, y = blob_images(48)
    model = small_cnn().to(device)
    before = host(model)
    opt = Adam(model, lr=0.01)
    scaler = GradScaler(init_scale=2.0 ** 40)
    history = model.fit(ArrayBatches(x, y, batch_size=16), 1, opt, SoftmaxCrossEntropy(),
                        verbose=0, **amp_kwargs(model, device, scaler))
    assert history.records[0]["amp_skipped"] == 3 and opt.step_count == 0
    assert scaler.scale == 2.0 ** 37
    after = host(model)
    for name, value in before.items():
        if "running" not in name:  # BatchNorm running statistics follow the forward pass
            numpy.testing.assert_array_equal(after[name], value)
    assert all(math.isfinite(v) for v in history.history["loss"])


@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")  # on purpose
def test_checkpoint_resume_restores_the_scaler(tmp_path):
    x, y = blob_images(64)

    def run(epochs, **kwargs):
        model = small_cnn()
        scaler = GradScaler(init_scale=2.0 ** 20, growth_interval=3)
        opt = Adam(model, lr=0.01)
        model.fit(ArrayBatches(x, y, batch_size=16), epochs, opt, SoftmaxCrossEntropy(),
                  verbose=0, **amp_kwargs(model, "cpu", scaler), **kwargs)
        return model, scaler

    full_model, full_scaler = run(3)
    path = tmp_path / "ckpt.npz"
    _, first_scaler = run(1, checkpoint_path=path)
    saved = load_checkpoint(path).extra["grad_scaler"]
    assert saved == first_scaler.state_dict() and saved["scale"] != 2.0 ** 20  # it moved
    resumed_model, resumed_scaler = run(3, resume_from=path)
    assert resumed_scaler.state_dict() == full_scaler.state_dict()
    for name, value in host(full_model).items():
        numpy.testing.assert_array_equal(host(resumed_model)[name], value, err_msg=name)


# ---- CLI and the CUDA kernels' dtype guard ---------------------------------------------------

def test_cli_amp_on_cpu_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "--amp", "--device", "cpu", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--amp needs a CUDA device" in err and "float16" in err
    assert not (tmp_path / "r").exists()


def test_fused_cuda_kernels_only_for_one_float32_or_float64_dtype(monkeypatch):
    monkeypatch.setattr(cuda_source, "backend_of_module",
                        lambda xp: types.SimpleNamespace(name="cuda"))
    a32, a16 = numpy.zeros(4, numpy.float32), numpy.zeros(4, numpy.float16)
    assert fused._use_cuda_kernel(numpy, a32, a32)
    assert fused._use_cuda_kernel(numpy, a32.astype(numpy.float64))
    assert not fused._use_cuda_kernel(numpy, a16, a16)   # no float16 kernels: xp path
    assert not fused._use_cuda_kernel(numpy, a32, a16)   # mixed dtypes: xp path


@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
def test_cli_amp_run_on_fake_cupy_records_amp(tmp_path):
    """The whole command under --amp on the strict fake CuPy (a non-CPU device)."""
    import json

    import fakecupy
    from synthetic_cifar import write_cifar

    fakecupy.register()
    root = write_cifar(tmp_path / "data", n_train=48, n_test=8, layout="py")
    out = tmp_path / "run"
    assert main(["train", "--amp", "--device", fakecupy.DEVICE, "--data-dir", str(root),
                 "--model", "tiny-cnn", "--epochs", "1", "--val-split", "16",
                 "--batch-size", "16", "--eval-batch-size", "16", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["amp"] is True
    assert load_checkpoint(out / "checkpoint.npz").extra["grad_scaler"]["scale"] > 0
