"""Test-time augmentation: average a model's outputs over mirrored and shifted views.

Levels (airbench94's ``tta_level``):

- 0: the image itself;
- 1: the mean of the image and its left-right mirror (2 views);
- 2: ``0.5 * mirror_mean(x) + 0.25 * mirror_mean(up_left(x)) + 0.25 *
  mirror_mean(down_right(x))`` where ``up_left``/``down_right`` shift the image
  by one pixel along both axes with the border filled by reflection (6 views:
  weights 1/4, 1/4 for the image and its mirror, 1/8 for each of the four
  shifted views).

The average is over the model's outputs (logits for a classifier), as
airbench does. Works on any device: views are made with the array's own
``xp``.
"""
from __future__ import annotations

from typing import Any, Callable

from ..backend import Array, get_array_module, on_array_device

__all__ = ["TTA_LEVELS", "tta_views", "tta_forward"]

TTA_LEVELS = (0, 1, 2)


def _mirror(x: Array) -> Array:
    return x[..., ::-1]


def _shifts(x: Array) -> tuple[Array, Array]:
    """The one-pixel up-left and down-right shifts of ``x`` (N, C, H, W), reflect-filled."""
    xp = get_array_module(x)
    h, w = x.shape[2], x.shape[3]
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    return padded[:, :, 0:h, 0:w], padded[:, :, 2:h + 2, 2:w + 2]


@on_array_device
def tta_views(x: Array, level: int) -> list[tuple[float, Array]]:
    """``[(weight, view), ...]`` for ``x`` (N, C, H, W): the weighted views whose
    weighted sum of model outputs :func:`tta_forward` returns (weights sum to 1)."""
    check_level(level)
    if level == 0:
        return [(1.0, x)]
    if level == 1:
        return [(0.5, x), (0.5, _mirror(x))]
    up_left, down_right = _shifts(x)
    return [(0.25, x), (0.25, _mirror(x)), (0.125, up_left), (0.125, _mirror(up_left)),
            (0.125, down_right), (0.125, _mirror(down_right))]


def check_level(level: Any) -> int:
    if isinstance(level, bool) or level not in TTA_LEVELS:
        raise ValueError(f"tta level must be one of {TTA_LEVELS}, got {level!r}")
    return int(level)


@on_array_device
def tta_forward(forward: Callable[[Array], Array], x: Array, level: int) -> Array:
    """The weighted mean of ``forward(view)`` over :func:`tta_views` of ``x``; each view
    is made contiguous before the forward pass (convolutions want it)."""
    xp = get_array_module(x)
    out = None
    for weight, view in tta_views(x, level):
        y = forward(xp.ascontiguousarray(view))
        out = y * weight if out is None else out + y * weight
    return out
