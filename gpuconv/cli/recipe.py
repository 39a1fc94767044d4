"""``gpuconv train --recipe airbench``: the airbench94 recipe behind the CLI's settings.

``--recipe airbench`` changes the defaults of ``gpuconv train`` to airbench94's
(:mod:`gpuconv.recipes.airbench`): model ``airbench``, 9.9 epochs at batch
1024, Nesterov SGD with airbench's decoupled lr 11.5 / weight decay 0.0153 /
momentum 0.85 and BatchNorm shifts at 64x the lr, label smoothing 0.2 with the
loss summed over the batch, its warmup-then-decay lr, lookahead, whitening,
translate + alternating flip on a device-resident training set, no
validation split and no early stopping, and a test report with 6-view TTA.
``--width``, ``--epochs``, ``--batch-size``, ``--lr``, ``--weight-decay``,
``--momentum`` and ``--label-smoothing`` change the recipe's values; flags that
would replace one of its pieces (``--optimizer``, ``--schedule``,
``--augment``, ...) are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..backend import Device
from ..models import Sequential
from ..recipes import airbench as ab
from ..training.callbacks import Callback
from .common import CLIError

__all__ = ["RECIPES", "AIRBENCH_SETTINGS", "AIRBENCH_FIXED", "recipe_settings", "RecipeRun",
           "airbench_run"]

RECIPES = ("none", "airbench")

#: What ``--recipe airbench`` sets (on top of gpuconv train's defaults).
AIRBENCH_SETTINGS: dict[str, Any] = {
    "model": "airbench", "epochs": 9.9, "batch_size": 1024, "optimizer": "sgd",
    "lr": 11.5, "weight_decay": 0.0153, "momentum": 0.85, "label_smoothing": 0.2,
    "schedule": "airbench", "augment": "airbench", "val_split": 0, "patience": 0,
    "eval_batch_size": 2000, "tta": True,
}
#: Settings that are pieces of the recipe: giving another value is an error.
AIRBENCH_FIXED = ("model", "optimizer", "schedule", "augment", "patience", "step_size", "gamma",
                  "monitor")


def recipe_settings(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The settings of a new run: ``defaults``, the recipe's (if ``given`` names one),
    then what was given; a flag that contradicts the recipe is a CLIError."""
    recipe = given.get("recipe", defaults.get("recipe", "none"))
    if recipe == "none":
        return {**defaults, **given}
    if recipe != "airbench":
        raise CLIError(f"--recipe {recipe}: unknown recipe; choose one of {', '.join(RECIPES)}")
    clash = [k for k in AIRBENCH_FIXED if k in given
             and given[k] != AIRBENCH_SETTINGS.get(k, defaults.get(k))]
    if clash:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in clash)
        raise CLIError(f"--recipe airbench sets its own {', '.join(clash)}; drop {flags} (or "
                       "train without --recipe to choose them yourself)")
    return {**defaults, **AIRBENCH_SETTINGS, **given}


def to_recipe(settings: dict[str, Any]) -> ab.AirbenchRecipe:
    """The :class:`AirbenchRecipe` of a run's settings."""
    return ab.AirbenchRecipe(width=float(settings["width"]), epochs=float(settings["epochs"]),
                             batch_size=int(settings["batch_size"]), lr=float(settings["lr"]),
                             momentum=float(settings["momentum"]),
                             weight_decay=float(settings["weight_decay"]),
                             label_smoothing=float(settings["label_smoothing"]))


@dataclass
class RecipeRun:
    """Everything ``gpuconv train`` needs for one recipe run."""

    model: Sequential
    train_loader: Any
    val_loader: Any
    test_loader: Any
    optimizer: Any
    scheduler: Any
    loss: Any
    callbacks: list[Callback]
    epochs: int
    max_steps: int
    tta: int


def airbench_run(settings: dict[str, Any], data: Any, device: Device,
                 comm: Any = None) -> RecipeRun:
    """Build the airbench run for ``data`` (``.train``, ``.val`` or None, ``.test``
    ArrayDatasets) on ``device``; whitening is computed from the training images.
    ``comm`` (several ranks): the training and validation loaders yield this rank's
    shard of every global batch (the test loader the whole set: rank 0 reports)."""
    if settings["dtype"] != "float32":
        raise CLIError(f"--recipe airbench trains in float32 (and float16 with --amp on CUDA); "
                       f"drop --dtype {settings['dtype']}")
    recipe = to_recipe(settings)
    if len(data.train) < recipe.batch_size:
        raise CLIError(f"--recipe airbench: {len(data.train)} training images make no full "
                       f"batch of {recipe.batch_size}; lower --batch-size or raise --limit")
    seed = int(settings["seed"])
    model = ab.build_model(recipe, len(data.classes), device)
    train_loader = ab.build_loader(data.train, recipe, device, seed, comm=comm)
    ab.whiten(model, train_loader.normalized_images(recipe.whiten_images), recipe)
    def eval_loader(dataset: Any, shard: Any = None) -> Any:
        return None if dataset is None else ab.build_loader(
            dataset, recipe, device, train=False,
            eval_batch_size=int(settings["eval_batch_size"]), comm=shard)
    steps = ab.total_steps(len(data.train), recipe)
    optimizer = ab.build_optimizer(model, recipe)
    return RecipeRun(model=model, train_loader=train_loader,
                     val_loader=eval_loader(data.val, comm), test_loader=eval_loader(data.test),
                     optimizer=optimizer,
                     scheduler=ab.build_scheduler(optimizer, steps, recipe),
                     loss=ab.build_loss(recipe), callbacks=ab.build_callbacks(model, steps, recipe),
                     epochs=math.ceil(recipe.epochs), max_steps=steps,
                     tta=recipe.tta_level if settings.get("tta") else 0)
