"""Feature consistency for inverters that must follow edited maps (issue 28's lever, in the style of ControlNet++).

An inverter trained on real maps only learns to read what real maps vary together, and snaps an edit back to the
nearest real image. Two pieces let training see edits and reward drawing them:

* :func:`edited_maps` replaces a fraction of a batch's maps by class-steered ones: each picked map moves along the
  class-mean direction (:func:`~workbench.analysis.steering.steer`) of a random *other* class by ``alpha`` drawn
  uniformly from ``alpha_range`` (in units of the concept's scale). These rows have no teacher target.
* :func:`feature_consistency` is ``1 - cosine`` between the classifier's map of the decoded clean estimate and the
  map the inverter was given, per row: it rewards drawing what the map says, edits included.

The reward uses the inverted classifier's own gradients, so such an inverter's steering must be graded by the
independent judges (:mod:`workbench.judges`), never by that classifier.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def edited_maps(maps: torch.Tensor, labels: torch.Tensor, concepts: Mapping[int, object], *, fraction: float,
                alpha_range: tuple[float, float], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps', edited)``: ``maps [B, C, h, w]`` with a ``fraction`` of rows (at least one when ``fraction > 0``)
    steered towards a random other class, and the bool mask ``[B]`` of those rows.

    Args:
        maps: real maps of one layer; labels: ``[B]`` their classes.
        concepts: class index -> :class:`~workbench.analysis.concepts.Concept` of that layer.
        fraction: the share of rows to edit, in [0, 1].
        alpha_range: ``(low, high)`` of the uniform alpha.
        generator: a CPU generator (which rows, which class, which alpha).
    """
    from ..analysis.steering import steer

    b = len(maps)
    k = 0 if fraction <= 0 else max(1, round(fraction * b))
    edited = torch.zeros(b, dtype=torch.bool)
    out = maps.clone()
    if k == 0:
        return out, edited
    rows = torch.randperm(b, generator=generator)[:k]
    classes = sorted(concepts)
    for i in rows.tolist():
        others = [c for c in classes if c != int(labels[i])]
        target = others[int(torch.randint(len(others), (1,), generator=generator))]
        low, high = alpha_range
        alpha = low + (high - low) * float(torch.rand((), generator=generator))
        out[i:i + 1] = steer(maps[i:i + 1].float().cpu(), concepts[target], alpha).to(out.device, out.dtype)
        edited[i] = True
    return out, edited


def feature_consistency(classifier: nn.Module, layer: str, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``1 - cosine`` per row ``[B]`` between ``classifier``'s flattened map at ``layer`` of ``images [B, 3, H, W]``
    in [0, 1] (with gradients to the images) and the given ``maps [B, C, h, w]``."""
    from ..hooks import run_with_cache
    from ..models import classifier_view

    _, cache = run_with_cache(classifier, classifier_view(images, classifier), layer, detach=False)
    return 1 - F.cosine_similarity(cache[layer].flatten(1).float(), maps.flatten(1).float(), dim=1)
