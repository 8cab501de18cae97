"""How far maps lie from those an inverter was trained on: the guard against inverting the wrong maps.

Every inverter normalises its input with the per-channel mean and standard deviation of its training maps
(``feature_mean``, ``feature_std``). :func:`feature_distance` measures a map against those statistics: the root mean
square of its per-channel z-scores after removing each channel's spatial mean. Removing the spatial mean makes the
distance blind to edits that shift a channel everywhere (concept steering, :func:`~workbench.analysis.concepts.steer`
without a mask), and ablation only lowers it; what raises it is spatial structure the inverter never saw.

Measured on 128 tiny-world test images (2026-12-01, :func:`feature_distance`, medians over the batch):

=====================================  ===========  ===========  ============  ============
maps                                   cnn stages.2 cnn stages.3 vit blocks.2  vit blocks.5
=====================================  ===========  ===========  ============  ============
its own (largest single image)         0.90 (1.12)  0.73 (1.16)  0.84          0.75 (1.11)
steered, alpha 6 everywhere            0.90         0.73         0.84          0.75
steered, alpha 6 in the object mask    0.92         1.39         --            1.22
half the channels zero-ablated         0.64         0.51         0.59          0.53
another classifier's maps (*)           **1.84**     --           **1.52**      0.96
=====================================  ===========  ===========  ============  ============

(*) of the same shape: the ViT's ``blocks.0`` for the CNN's ``stages.2``, the CNN's ``stages.2`` for the ViT's layers.

:data:`OFF_DISTRIBUTION_THRESHOLD` (1.5) on the batch median lies above every edit but the strongest local ones
(masked steering at alpha 10 reaches 2.1 at ``stages.3``) and below the other classifier's maps of the same shape.
It cannot catch everything: the CNN's ``stages.2`` maps look like ``blocks.5``'s to this statistic (0.96), and so
do the ViT's own ``blocks.0`` maps (0.44).

Example:
    >>> d = feature_distance(inv, features)          # Tensor[B]; about 1 or less for the inverter's own maps
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import OffDistributionWarning
from .interface import Inverter

#: batch-median :func:`feature_distance` above which :func:`warn_if_off_distribution` warns.
OFF_DISTRIBUTION_THRESHOLD = 1.5


def _statistics(inverter: Inverter) -> nn.Module | None:
    """The submodule holding the inverter's ``feature_mean`` and ``feature_std`` buffers (None if it has none, or if
    they were never fitted: still the zeros and ones they start as, e.g. an untrained inverter)."""
    for module in inverter.modules():
        mean, std = getattr(module, "feature_mean", None), getattr(module, "feature_std", None)
        if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
            return None if bool((mean == 0).all() and (std == 1).all()) else module
    return None


@torch.no_grad()
def feature_distance(inverter: Inverter, features: torch.Tensor) -> torch.Tensor | None:
    """The distance of each map ``[B, C, h, w]`` from the inverter's training maps -> ``Tensor[B]`` on the CPU.

    ``sqrt(mean_{c,y,x} (z[c,y,x] - mean_{y,x} z[c])^2)`` with ``z = (features - feature_mean) / feature_std``; about
    1 or less for maps like the training ones. None for an inverter without fitted feature statistics (the
    optimisation baseline, an untrained inverter).
    """
    stats = _statistics(inverter)
    if stats is None:
        return None
    mean, std = stats.feature_mean.float().cpu(), stats.feature_std.float().cpu()
    z = (features.detach().float().cpu() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return (z - z.mean((2, 3), keepdim=True)).pow(2).mean((1, 2, 3)).sqrt()


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside workbench and torch, so the warning points at the user's line
    (``invert`` runs under a torch decorator, and ``evaluate`` or the studies call it in turn)."""
    inside = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))
    frame, level = sys._getframe(1), 2          # level 2: the caller of this function
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level - 1                            # relative to warn_if_off_distribution, which calls warnings.warn


def warn_if_off_distribution(inverter: Inverter, features: torch.Tensor, *,
                             threshold: float = OFF_DISTRIBUTION_THRESHOLD) -> torch.Tensor | None:
    """Warn (:class:`~workbench.errors.OffDistributionWarning`) when the batch median of :func:`feature_distance`
    exceeds ``threshold``, naming the inverter, the distance and the likely causes; returns the distances
    ``Tensor[B]`` (None for an inverter without feature statistics)."""
    distance = feature_distance(inverter, features)
    if distance is not None and distance.numel() and float(distance.median()) > threshold:
        name = f"{getattr(inverter, 'classifier_name', '?')}/{getattr(inverter, 'layer', '?')}"
        warnings.warn(
            f"these maps lie far from those the {type(inverter).__name__} of {name} was trained on (distance "
            f"{float(distance.median()):.2f}, median of {distance.numel()}; its own maps give about 1 or less, the "
            f"threshold is {threshold}). Most likely they come from another classifier or layer, or from images "
            f"preprocessed differently; capture them with wb.run_with_cache(wb.load_classifier("
            f"{getattr(inverter, 'classifier_name', '?')!r}), images, {getattr(inverter, 'layer', '?')!r}).",
            OffDistributionWarning, stacklevel=_caller_stacklevel())
    return distance
