"""Keller Jordan's airbench94 recipe for CIFAR-10, from gpuconv's own pieces.

airbench94 (``legacy/airbench94.py`` in KellerJordan/cifar10-airbench) reaches
94.01 % mean test accuracy on the original CIFAR-10 in 9.9 epochs. Its pieces,
each a public gpuconv feature:

=======================  ==============================================================
network                  :func:`gpuconv.models.presets.airbench` (``width`` multiplier)
whitening                :func:`gpuconv.init.patch_whitening` of the first 5000
                         normalised training images -> layer 0's frozen weight;
                         its bias trains for 3 epochs (:class:`FreezeAfter`)
optimizer                Nesterov :class:`gpuconv.optim.SGD`, momentum 0.85, two
                         parameter groups: BatchNorm shifts at 64x the lr
hyperparameters          lr 11.5 and weight decay 0.0153 "per 1024 examples",
                         decoupled (:func:`sgd_hyperparameters`)
loss                     softmax cross-entropy, label smoothing 0.2, summed over the batch
schedule                 lr factor 0.2 -> 1.0 over the first 23 % of the steps, then
                         -> 0.07 at the end, stepped every batch
weight averaging         :class:`gpuconv.training.averaging.Lookahead` every 5 steps
data                     :class:`gpuconv.data.DeviceDataLoader`: the set on the device,
                         2-pixel reflect translation, alternating flip, batch 1024,
                         only full batches
length                   ``ceil(9.9 * 48) = 476`` steps (``fit(max_steps=...)``)
evaluation               6-view test-time augmentation (``predict(tta=True)``)
=======================  ==============================================================

Differences from the published script: float32 everywhere (airbench computes in
float16 with float32 BatchNorm on the GPU; ``amp=True`` gives gpuconv's float16
path on CUDA); the lookahead average starts from the whitened network (airbench
copies the weights just before whitening, a difference of about 1e-6 at the
first update); random numbers come from gpuconv's generators.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..backend import Device, get_device
from ..backend import seed as seed_everything
from ..data import CIFAR10_MEAN, CIFAR10_STD, DeviceDataLoader
from ..layers import BatchNorm1d, BatchNorm2d
from ..layers.init import patch_whitening
from ..losses import SoftmaxCrossEntropy
from ..models import Sequential, build_preset
from ..optim import SGD, airbench_sgd_hyperparameters
from ..optim.lr_scheduler import PiecewiseLinear
from ..training.averaging import Lookahead
from ..training.callbacks import Callback, FreezeAfter

__all__ = ["AirbenchRecipe", "sgd_hyperparameters", "build_model", "whiten", "param_groups",
           "build_optimizer", "build_scheduler", "build_loss", "build_loader",
           "build_callbacks", "total_steps", "train", "AirbenchResult"]


@dataclass(frozen=True)
class AirbenchRecipe:
    """airbench94's hyperparameters (its ``hyp`` dict); ``width`` scales the network."""

    width: float = 1.0
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5                # per 1024 examples (decoupled, see sgd_hyperparameters)
    momentum: float = 0.85
    weight_decay: float = 0.0153    # per 1024 examples, decoupled from the lr
    bias_scaler: float = 64.0       # lr multiplier (not weight decay) of BatchNorm shifts
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    whiten_images: int = 5000
    whiten_eps: float = 5e-4
    translate: int = 2
    flip: str = "alternating"
    lookahead_every: int = 5
    warmup: float = 0.23            # fraction of the steps spent warming up
    lr_factors: tuple[float, float, float] = (0.2, 1.0, 0.07)
    tta_level: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def sgd_hyperparameters(recipe: AirbenchRecipe) -> dict[str, Any]:
    """airbench's decoupled lr / weight decay as torch-style Nesterov SGD values
    (:func:`gpuconv.optim.airbench_sgd_hyperparameters` of the recipe's numbers)."""
    return airbench_sgd_hyperparameters(recipe.batch_size, recipe.lr, recipe.weight_decay,
                                        recipe.momentum, recipe.bias_scaler)


def build_model(recipe: AirbenchRecipe = AirbenchRecipe(), num_classes: int = 10,
                device: "str | Device | None" = "cpu") -> Sequential:
    """The airbench network at ``recipe.width`` on ``device`` (whitening not yet set)."""
    return build_preset("airbench", num_classes, width=recipe.width).to(device)


def whiten(model: Sequential, images: Any, recipe: AirbenchRecipe = AirbenchRecipe()) -> None:
    """Set layer 0's frozen weight to the patch-whitening transform of the first
    ``recipe.whiten_images`` of ``images`` (N, 3, H, W), normalised, on the model's device."""
    layer = model[0]
    weight = patch_whitening(images, patch_size=layer.kernel_size[0], eps=recipe.whiten_eps,
                             max_images=recipe.whiten_images, seed=None)
    if tuple(weight.shape) != tuple(layer.weight.data.shape):
        raise ValueError(f"whiten: the whitening weight has shape {tuple(weight.shape)}, layer "
                         f"0 needs {tuple(layer.weight.data.shape)}")
    layer.weight.data[...] = weight.astype(layer.weight.data.dtype)


def param_groups(model: Sequential, recipe: AirbenchRecipe = AirbenchRecipe()) -> list[dict]:
    """Two torch-style groups: the BatchNorm shifts (trainable BatchNorm parameters) at
    ``bias_lr``, every other trainable parameter (whitening bias included) at ``lr``."""
    hyper = sgd_hyperparameters(recipe)
    norm_ids = {id(p) for layer in _layers(model) if isinstance(layer, (BatchNorm1d, BatchNorm2d))
                for p in layer.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    norm = [p for p in trainable if id(p) in norm_ids]
    other = [p for p in trainable if id(p) not in norm_ids]
    return [{"params": norm, "lr": hyper["bias_lr"], "weight_decay": hyper["bias_weight_decay"]},
            {"params": other, "lr": hyper["lr"], "weight_decay": hyper["weight_decay"]}]


def _layers(layer: Any):
    yield layer
    for child in layer.children():
        yield from _layers(child)


def build_optimizer(model: Sequential, recipe: AirbenchRecipe = AirbenchRecipe()) -> SGD:
    hyper = sgd_hyperparameters(recipe)
    return SGD(param_groups(model, recipe), lr=hyper["lr"], momentum=recipe.momentum,
               nesterov=True)


def total_steps(num_train: int, recipe: AirbenchRecipe = AirbenchRecipe()) -> int:
    """Optimizer steps of the whole run: ``ceil(epochs * (num_train // batch_size))``."""
    per_epoch = num_train // recipe.batch_size
    if per_epoch < 1:
        raise ValueError(f"airbench: {num_train} training images make no full batch of "
                         f"{recipe.batch_size}; lower the batch size")
    return math.ceil(recipe.epochs * per_epoch)


def build_scheduler(optimizer: SGD, steps: int,
                    recipe: AirbenchRecipe = AirbenchRecipe()) -> PiecewiseLinear:
    """airbench's lr factor: linear 0.2 -> 1.0 until step ``int(0.23 * steps)``, then
    linear to 0.07 at ``steps``, applied after every batch. Runs too short for a
    warmup (``int(0.23 * steps)`` of 0) go straight from the peak down to the end."""
    if steps < 1:
        raise ValueError(f"airbench: the schedule needs at least one step, got {steps}")
    warmup = int(steps * recipe.warmup)
    start, peak, end = recipe.lr_factors
    if warmup == 0:
        return PiecewiseLinear(optimizer, milestones=[0, steps], factors=[peak, end])
    return PiecewiseLinear(optimizer, milestones=[0, warmup, steps], factors=[start, peak, end])


def build_loss(recipe: AirbenchRecipe = AirbenchRecipe()) -> SoftmaxCrossEntropy:
    return SoftmaxCrossEntropy(label_smoothing=recipe.label_smoothing, reduction="sum")


def build_loader(dataset: Any, recipe: AirbenchRecipe = AirbenchRecipe(),
                 device: "str | Device | None" = None, seed: "int | None" = None,
                 train: bool = True, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD,
                 eval_batch_size: int = 2000, comm: Any = None) -> DeviceDataLoader:
    """The device-resident loader: training (shuffled, full batches only, translate +
    alternating flip) or evaluation (in order, no augmentation, ``eval_batch_size``).
    ``comm``: data parallel, each rank yields its shard of every global batch."""
    if train:
        return DeviceDataLoader(dataset, recipe.batch_size, shuffle=True, drop_last=True,
                                seed=seed, device=device, normalize=(mean, std),
                                translate=recipe.translate, flip=recipe.flip, comm=comm)
    return DeviceDataLoader(dataset, eval_batch_size, device=device, normalize=(mean, std),
                            comm=comm)


def build_callbacks(model: Sequential, steps: int,
                    recipe: AirbenchRecipe = AirbenchRecipe()) -> list[Callback]:
    """Whitening bias trained for ``whiten_bias_epochs``, then lookahead averaging."""
    return [FreezeAfter([model[0].bias], recipe.whiten_bias_epochs),
            Lookahead(total_steps=steps, every=recipe.lookahead_every)]


@dataclass
class AirbenchResult:
    """What :func:`train` returns: the model, its history, test accuracies (plain and
    with TTA; None without test data) and wall times in seconds."""

    model: Sequential
    history: Any
    accuracy: float | None = None
    tta_accuracy: float | None = None
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    steps: int = 0
    extra: dict = field(default_factory=dict)


def evaluate_tta(model: Sequential, loader: DeviceDataLoader, level: int) -> float:
    """Test accuracy of ``model`` on ``loader`` with TTA ``level`` (0 = plain)."""
    return float(model.evaluate(loader, tta=level)["accuracy"])


def train(train_set: Any, test_set: Any = None, recipe: AirbenchRecipe = AirbenchRecipe(),
          device: "str | Device | None" = None, seed: int = 0, verbose: int = 1,
          **fit_kwargs: Any) -> AirbenchResult:
    """Train airbench on ``train_set`` (``.images`` uint8 (N, 3, 32, 32), ``.labels``)
    and score it on ``test_set``; ``fit_kwargs`` go to :meth:`Sequential.fit`
    (``checkpoint_path``, ``resume_from``, ``amp``, extra ``callbacks``, ``comm`` ...;
    with a ``comm`` the training loader yields this rank's shard of every global
    batch)."""
    start = time.perf_counter()
    seed_everything(seed)
    device = get_device(device)
    model = build_model(recipe, len(getattr(train_set, "classes", None) or range(10)), device)
    loader = build_loader(train_set, recipe, device, seed, comm=fit_kwargs.get("comm"))
    whiten(model, loader.normalized_images(recipe.whiten_images), recipe)
    steps = total_steps(loader.num_samples, recipe)
    optimizer = build_optimizer(model, recipe)
    callbacks = build_callbacks(model, steps, recipe) + list(fit_kwargs.pop("callbacks", ()))
    train_start = time.perf_counter()
    history = model.fit(loader, epochs=math.ceil(recipe.epochs), optimizer=optimizer,
                        loss=build_loss(recipe), scheduler=build_scheduler(optimizer, steps, recipe),
                        callbacks=callbacks, verbose=verbose, max_steps=steps, **fit_kwargs)
    result = AirbenchResult(model, history, train_seconds=time.perf_counter() - train_start,
                            steps=steps)
    if test_set is not None:
        test = build_loader(test_set, recipe, device, train=False)
        result.accuracy = evaluate_tta(model, test, 0)
        result.tta_accuracy = evaluate_tta(model, test, recipe.tta_level)
    result.total_seconds = time.perf_counter() - start
    return result
