"""Spatial splicing: one region of a map from image A, the rest from image B (FeatInv's "composite nature of the
feature space"). The inversion of a spliced map should show A's object in A's region and B's object in B's region;
:func:`splice_study` asks the inverted classifier and the independent judges whether each region keeps its object.

Example:
    >>> a, b, info = make_splice_pairs(8, seed=0)
    >>> table, samples = splice_study(cnn, inverter, a, b, info["mask"], num_inference_steps=8)
    >>> table[["keeps_a", "keeps_b"]].mean()
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import seeded_generator
from ..errors import AnalysisError
from ..inverters.sampler import Sampler, study_sampler
from . import check_mask, class_probabilities, downsample_mask, invert_edited
from .regions import region_probabilities

def splice(features_a: Tensor, features_b: Tensor, mask: Tensor) -> Tensor:
    """``mask * A + (1 - mask) * B``: the map of A inside the mask, the map of B outside.

    Args:
        features_a: ``Tensor[B, C, h, w]``.
        features_b: ``Tensor[B, C, h, w]``.
        mask: ``Tensor[h, w]`` or ``Tensor[B, 1, h, w]`` in [0, 1] (bool works); 1 takes A.

    Returns:
        ``Tensor[B, C, h, w]``.

    Raises:
        AnalysisError: maps of different shapes, or mask values outside [0, 1]. InterventionError: a mask that is
            not ``h x w``.

    Example:
        >>> left = torch.zeros(4, 4); left[:, :2] = 1
        >>> spliced = splice(fa, fb, left)
    """
    if features_a.shape != features_b.shape or features_a.ndim != 4:
        raise AnalysisError(f"features_a {list(features_a.shape)} and features_b {list(features_b.shape)} must be "
                            f"two Tensor[B, C, h, w] of one shape")
    m = check_mask(mask, features_a.shape[-2:], features_a.shape[0]).to(features_a)
    if m.numel() and not (bool(torch.isfinite(m).all()) and float(m.min()) >= 0 and float(m.max()) <= 1):
        raise AnalysisError(f"the mask's values lie in [{float(m.min()):g}, {float(m.max()):g}]; a splice mask is in "
                            "[0, 1] (1 takes A, 0 takes B): outside it, splice would extrapolate beyond both maps")
    return m * features_a + (1 - m) * features_b


def make_splice_pairs(n: int, *, seed: int = 0, size: float = 0.2) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Pairs of tiny-world images for splicing: A's object in the left half, B's (another class) in the right.

    Both images of a pair share one flat background; every other factor is drawn at random.

    Args:
        n: number of pairs.
        seed: seeds the draw.
        size: object size (fraction of the width; 0.2 keeps each object inside its half).

    Returns:
        ``(images_a, images_b, info)``: two ``Tensor[n, 3, 32, 32]`` and ``info`` with ``classes_a``,
        ``classes_b`` (``Tensor[n]``) and ``mask`` (``Tensor[32, 32]``, 1 on the left half).

    Example:
        >>> a, b, info = make_splice_pairs(4, seed=0)
    """
    from ..tinyworld import CLASSES, render

    g = seeded_generator(seed)
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    a_imgs, b_imgs, ca, cb = [], [], [], []
    for _ in range(n):
        k_a = int(torch.randint(len(CLASSES), (), generator=g))
        k_b = (k_a + 1 + int(torch.randint(len(CLASSES) - 1, (), generator=g))) % len(CLASSES)
        bg = {"background": "flat", "bg_hue": u(), "bg_saturation": 0.6, "bg_value": 0.15}
        for k, x, imgs in ((k_a, 0.25, a_imgs), (k_b, 0.75, b_imgs)):
            imgs.append(render(shape=CLASSES[k], hue=u(), saturation=0.8, value=1.0, size=size, x=x,
                               y=0.3 + 0.4 * u(), rotation=2 * math.pi * u(), **bg))
        ca.append(k_a)
        cb.append(k_b)
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1
    return torch.stack(a_imgs), torch.stack(b_imgs), {"classes_a": torch.tensor(ca), "classes_b": torch.tensor(cb),
                                                      "mask": mask}


@torch.no_grad()
def splice_study(classifier: nn.Module, inverter, images_a: Tensor, images_b: Tensor, mask: Tensor, *,
                 classes_a: Tensor | None = None, classes_b: Tensor | None = None, num_samples: int = 1,
                 num_inference_steps: int | None = None, seed: int = 0, progress: bool = True,
                 sampler: Sampler | None = None):
    """Splice A's map inside ``mask`` with B's outside, invert, and ask whether each region keeps its object.

    Args:
        classifier: the classifier the inverter was trained on.
        inverter: a FeatInv.
        images_a: ``Tensor[B, 3, H, W]``; its object lies inside ``mask``.
        images_b: ``Tensor[B, 3, H, W]``; its object lies outside ``mask``.
        mask: ``Tensor[H, W]`` pixel mask (1 = A's region); it is area-downsampled to the map.
        classes_a, classes_b: ``Tensor[B]`` true classes (default: the classifier's predictions on the originals).
        num_samples, num_inference_steps, seed, progress: passed to ``inverter.invert``.
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps), passed to ``inverter.invert`` and recorded in
            the table's ``attrs["sampler"]``.

    Returns:
        ``(table, samples)``: one row per (pair, sample) with ``class_a``, ``class_b``, ``pred_a`` / ``pred_b``
        (region classes of the reconstruction, read by the inverted classifier), ``keeps_a`` / ``keeps_b``, the same
        read by the independent judges' consensus (``judge_pred_a`` / ``judge_pred_b``, ``judge_keeps_a`` /
        ``judge_keeps_b``; tiny-world images only, :mod:`workbench.judges`) and, as a reference,
        ``original_keeps_a`` / ``original_keeps_b`` (the region classifier on the unspliced originals) and
        ``feature_distance`` (the spliced map's distance from the inverter's training maps,
        :func:`~workbench.analysis.invert_edited`; absent without feature statistics); ``samples`` is
        ``Tensor[B, S, 3, H, W]``.

    Example:
        >>> table, samples = splice_study(cnn, inverter, a, b, info["mask"], classes_a=info["classes_a"])
    """
    import pandas as pd

    from ..hooks import extract_features

    fa = extract_features(classifier, images_a, inverter.layer).float().cpu()
    fb = extract_features(classifier, images_b, inverter.layer).float().cpu()
    spliced = splice(fa, fb, downsample_mask(mask, fa.shape[-2:]))
    out, distance = invert_edited(inverter, torch.cat([fa, fb]), spliced, num_samples=num_samples, seed=seed,
                                  sampler=sampler, num_inference_steps=num_inference_steps, progress=progress)
    b, s = out.shape[:2]
    ca = class_probabilities(classifier, images_a).argmax(1) if classes_a is None else torch.as_tensor(classes_a)
    cb = class_probabilities(classifier, images_b).argmax(1) if classes_b is None else torch.as_tensor(classes_b)
    flat = out.reshape(b * s, *out.shape[2:])
    pa = region_probabilities(classifier, flat, mask).argmax(1)
    pb = region_probabilities(classifier, flat, 1 - mask).argmax(1)
    ref_a = region_probabilities(classifier, images_a, mask).argmax(1) == ca
    ref_b = region_probabilities(classifier, images_b, 1 - mask).argmax(1) == cb
    rep = lambda t: t.repeat_interleave(s).numpy()  # noqa: E731
    table = pd.DataFrame({"pair": rep(torch.arange(b)), "sample": torch.arange(s).repeat(b).numpy(),
                          "class_a": rep(ca), "class_b": rep(cb), "pred_a": pa.numpy(), "pred_b": pb.numpy()})
    table["keeps_a"] = table.pred_a == table.class_a
    table["keeps_b"] = table.pred_b == table.class_b
    table["original_keeps_a"], table["original_keeps_b"] = rep(ref_a), rep(ref_b)
    judged = _judge_regions(flat, mask)
    if judged is not None:  # the independent judges' region classes (the region classifier above is the inverted one)
        table["judge_pred_a"], table["judge_pred_b"] = judged[0].numpy(), judged[1].numpy()
        table["judge_keeps_a"] = table.judge_pred_a == table.class_a
        table["judge_keeps_b"] = table.judge_pred_b == table.class_b
    if distance is not None:
        table["feature_distance"] = rep(distance)
    table.attrs["sampler"] = study_sampler(inverter, sampler, {"num_inference_steps": num_inference_steps})[0]
    return table, out


def _judge_regions(flat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """The shipped judges' consensus class inside ``mask`` and outside it, for tiny-world images ``[N, 3, 32, 32]``
    (None for images of another size)."""
    from ..judges import shipped_graders

    if tuple(flat.shape[-2:]) != (32, 32):
        return None
    judges = shipped_graders(flat.device)[0]
    inside = torch.stack([region_probabilities(j, flat, mask) for j in judges.values()]).mean(0).argmax(1)
    outside = torch.stack([region_probabilities(j, flat, 1 - mask) for j in judges.values()]).mean(0).argmax(1)
    return inside, outside
