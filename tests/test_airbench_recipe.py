"""gpuconv.recipes.airbench: the whole airbench94 training step equals the PyTorch
reference (benchmarks/airbench_torch.py) step by step in float64, and the
recipe trains end to end on real CIFAR-10."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import to_numpy
from gpuconv.layers import BatchNorm2d
from gpuconv.recipes import airbench as ab

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]


def load_reference():
    spec = importlib.util.spec_from_file_location("airbench_torch_ref",
                                                  REPO / "benchmarks" / "airbench_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_into_torch(model, net):
    load_reference().copy_from_gpuconv(model, net)


def lookahead_update_any_float(lookahead):
    """The reference's lookahead, also for float64 state (it checks half/float only)."""
    def update(net, decay):
        for ema, cur in zip(lookahead.ema.values(), net.state_dict().values()):
            if cur.dtype.is_floating_point:
                ema.lerp_(cur, 1 - decay)
                cur.copy_(ema)
    return update


def test_recipe_step_equals_the_pytorch_reference_in_float64():
    ref = load_reference()
    recipe = ab.AirbenchRecipe(width=0.125, batch_size=32)
    steps, batch = 12, 32
    gpuconv.seed(0)
    model = ab.build_model(recipe).astype("float64")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((steps * batch, 3, 32, 32))
    labels = rng.integers(0, 10, steps * batch)
    ab.whiten(model, images[:200], recipe)
    net = ref.build_net(0.125).double()
    copy_into_torch(model, net)
    torch_run = ref.Airbench(net, batch, steps)
    torch_run.lookahead.update = lookahead_update_any_float(torch_run.lookahead)

    batches = [(images[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch])
               for i in range(steps)]
    optimizer = ab.build_optimizer(model, recipe)
    model.fit(batches, epochs=1, optimizer=optimizer, loss=ab.build_loss(recipe),
              scheduler=ab.build_scheduler(optimizer, steps, recipe),
              callbacks=ab.build_callbacks(model, steps, recipe), verbose=0, max_steps=steps)
    net.train()
    for x, y in batches:
        torch_run.step(torch.from_numpy(x), torch.from_numpy(y))

    for (name, p), t in zip(model.named_parameters(), net.parameters()):
        ours = to_numpy(p.data)
        np.testing.assert_allclose(ours.T if ours.ndim == 2 else ours, t.detach().numpy(), rtol=1e-7, atol=1e-9,
                                   err_msg=name)
    theirs = [b for name, b in net.named_buffers() if "num_batches" not in name]
    for (name, b), t in zip(model.named_buffers(), theirs):
        np.testing.assert_allclose(to_numpy(b), t.numpy(), rtol=1e-7, atol=1e-9, err_msg=name)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        torch_run.optimizer.param_groups[0]["lr"], rel=1e-12)


def test_param_groups_hyperparameters_and_steps():
    recipe = ab.AirbenchRecipe(width=0.25)
    model = ab.build_model(recipe)
    norm, other = ab.param_groups(model, recipe)
    bn_biases = [layer.bias for layer in model if isinstance(layer, BatchNorm2d)]
    assert [id(p) for p in norm["params"]] == [id(p) for p in bn_biases]
    assert model[0].bias in other["params"] and model[0].weight not in other["params"]
    assert all(p.requires_grad for p in other["params"])
    hyper = ab.sgd_hyperparameters(recipe)
    kilostep = 1024 * (1 + 1 / 0.15)
    assert hyper["lr"] == pytest.approx(11.5 / kilostep)
    assert hyper["bias_lr"] == pytest.approx(64 * 11.5 / kilostep)
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(other["lr"] * other["weight_decay"])
    assert ab.total_steps(50_000, recipe) == math.ceil(9.9 * 48) == 476
    with pytest.raises(ValueError, match="no full batch"):
        ab.total_steps(100, recipe)


def test_recipe_trains_end_to_end_on_real_cifar10():
    from cifar_cache import cifar10_root
    from gpuconv.data import CIFAR10
    from gpuconv.datasets import ArrayDataset
    root = cifar10_root()
    train, test = CIFAR10(root, train=True), CIFAR10(root, train=False)
    train = ArrayDataset(train.images[:1024], train.labels[:1024], train.classes)
    test = ArrayDataset(test.images[:400], test.labels[:400], test.classes)
    recipe = ab.AirbenchRecipe(width=0.125, batch_size=128, epochs=1.5)
    result = ab.train(train, test, recipe, device="cpu", seed=0, verbose=0)
    assert result.steps == 12 and len(result.history) == 2
    assert 0.15 < result.accuracy <= 1 and 0.15 < result.tta_accuracy <= 1
    assert result.model.frozen_names()[0] == "0.weight"
    assert result.total_seconds >= result.train_seconds > 0


def test_short_runs_get_a_schedule_without_warmup():
    recipe = ab.AirbenchRecipe(width=0.125)
    model = ab.build_model(recipe)
    for steps in (1, 2, 4):  # int(0.23 * steps) == 0: no warmup segment
        optimizer = ab.build_optimizer(model, recipe)
        scheduler = ab.build_scheduler(optimizer, steps, recipe)
        assert scheduler.get_lr_at(0) == pytest.approx(optimizer.param_groups[0]["lr"])


def test_saved_model_in_the_torch_reference_gives_the_same_tta_logits(tmp_path):
    """A gpuconv airbench model saved to disk, read by the PyTorch reference
    (``load_gpuconv_model``, used by ``--evaluate-gpuconv``), gives the same plain and
    6-view TTA logits: gpuconv's test-time augmentation equals airbench's."""
    ref = load_reference()
    rng = np.random.default_rng(0)
    model = ab.build_model(ab.AirbenchRecipe(width=0.125), device="cpu")
    ab.whiten(model, rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):  # non-trivial statistics and shifts
            layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape) * 0.1
            layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)
            layer.bias.data[...] = rng.standard_normal(layer.bias.data.shape) * 0.1
    path = tmp_path / "model.npz"
    model.save(path)
    net = ref.load_gpuconv_model(str(path))
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    for level in (0, 2):
        ours = to_numpy(model.predict(x, tta=level))
        theirs = ref.infer(net, torch.from_numpy(x), tta_level=level).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
