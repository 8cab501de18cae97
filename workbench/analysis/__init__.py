"""Analyses of feature maps, one module per family; every function returns tensors, dataclasses or DataFrames.

======================  ================================================================================
module                  what it answers
======================  ================================================================================
``pca``                 which directions of a layer's map carry its variance, and what they encode
``ablation``            which channels matter, and what disappears from the image without them
``composition``         is the map spatially composite: splices, interpolations, factor probes
``concepts``            concept directions and subspaces, found from labels or from the maps alone
``steering``            moving maps along a concept, and the edits a steering study inverts
``steering_studies``    inverting edited maps along ``alpha``, and comparing edit methods
``dictionary``          sparse autoencoders and other dictionaries, fitted and scored by reconstruction
``atoms``               what a dictionary's atoms mean: factor scores, coverage, top images, steering
======================  ================================================================================

The helpers here are shared by the families: :func:`map_logits` runs the classifier with a layer's map
replaced, :func:`class_probabilities` and :func:`score_inversions` score images and their inversions, and
:func:`invert_edited` inverts maps a study edited on purpose, reporting how far they lie from the inverter's training
maps (a ``feature_distance`` column) instead of warning.
The edits themselves (ablating channels, moving along a direction) and their checks
(:func:`check_channels`, :func:`check_mask`) live in :mod:`workbench.interventions`, shared with the hooks.
Figures live in :mod:`workbench.plot` (section "analysis").

Example:
    >>> from workbench import analysis
    >>> pca = analysis.pca.fit_pca(features, layer="stages.3")       # features: Tensor[N, C, h, w]
    >>> rgb = pca.rgb(features[:4], size=32)                          # Tensor[4, 3, 32, 32]
"""
from __future__ import annotations

import importlib
import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..hooks import _device
from ..interventions import check_channels, check_mask
from ..tinyworld import CATEGORICAL_FACTORS, FACTOR_PERIODS

_SUBMODULES = ("pca", "ablation", "composition", "concepts", "steering", "steering_studies", "dictionary", "atoms")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'workbench.analysis' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))


# ------------------------------------------------------------------------------------------ factors
def factor_kind(factor: str) -> str:
    """How a tiny-world factor is compared: ``"categorical"`` (shape, background, ...), ``"circular"`` (the factors
    of :data:`~workbench.tinyworld.FACTOR_PERIODS`: hue, rotation) or ``"continuous"``.

    Example:
        >>> factor_kind("shape"), factor_kind("hue"), factor_kind("size")      # categorical, circular, continuous
    """
    if factor in CATEGORICAL_FACTORS:
        return "categorical"
    return "circular" if factor in FACTOR_PERIODS else "continuous"


def factor_radians(values, factor: str) -> np.ndarray:
    """A circular factor's values in radians: one period of :data:`~workbench.tinyworld.FACTOR_PERIODS` is 2 pi.

    Example:
        >>> factor_radians([0.0, 0.25], "hue")                                  # hue in turns: [0, pi / 2]
    """
    return 2 * math.pi * (np.asarray(values, dtype=float) / FACTOR_PERIODS[factor])


# ------------------------------------------------------------------------------------------ masks
def downsample_mask(mask: Tensor, size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """A pixel mask ``Tensor[H, W]`` -> a map mask ``Tensor[h, w]`` (area average, then ``>= threshold``).

    Example:
        >>> left = torch.zeros(32, 32); left[:, :16] = 1
        >>> downsample_mask(left, (4, 4))[0]           # tensor([1., 1., 0., 0.])
    """
    m = torch.nn.functional.adaptive_avg_pool2d(mask.float().view(1, 1, *mask.shape[-2:]), tuple(size))[0, 0]
    return (m >= threshold).float()


# ------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def class_probabilities(classifier: nn.Module, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """Softmax over the classifier's logits: ``Tensor[N, 3, H, W]`` in [0, 1] -> ``Tensor[N, K]`` on the CPU.

    Example:
        >>> p = class_probabilities(cnn, x)      # rows sum to 1
    """
    dev = _device(classifier)
    return torch.cat([classifier(images[s:s + batch_size].to(dev)).float().softmax(-1).cpu()
                      for s in range(0, len(images), batch_size)])


@torch.no_grad()
def map_logits(classifier: nn.Module, images: Tensor, layer: str, features: Tensor, *,
               batch_size: int = 256) -> Tensor:
    """Logits with the map at ``layer`` replaced by ``features``: what the rest of the network makes of an edit.

    The forward pass runs on ``images`` up to ``layer``, where the map is swapped for ``features``. For a
    ViT, prefix tokens (class token) keep their original values, so editing the last block's patch map
    does not reach a class-token head; compare inversions there instead.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        images: ``Tensor[N, 3, H, W]`` in [0, 1], the images the maps came from.
        layer: the layer name, e.g. ``"stages.3"``.
        features: ``Tensor[N, C, h, w]``, the edited maps.

    Returns:
        ``Tensor[N, K]`` logits on the CPU.

    Example:
        >>> f = wb.extract_features(cnn, x, "stages.3")
        >>> map_logits(cnn, x, "stages.3", f).allclose(cnn(x), atol=1e-4)   # True
    """
    from ..hooks import run_with_hooks

    if len(images) != len(features):
        raise AnalysisError(f"images ({len(images)}) and features ({len(features)}) differ in number; "
                            f"pass one map per image")
    dev = _device(classifier)
    out = []
    for s in range(0, len(images), batch_size):
        f = features[s:s + batch_size].to(dev)

        def replace(act: Tensor, *, name: str, f: Tensor = f) -> Tensor:
            if act.shape != f.shape:
                raise AnalysisError(f"features {list(f.shape)} do not fit layer {name!r} of shape {list(act.shape)}")
            return f.to(act.dtype)

        out.append(run_with_hooks(classifier, images[s:s + batch_size].to(dev), {layer: replace}).float().cpu())
    return torch.cat(out)


def invert_edited(inverter, originals: Tensor, edited: Tensor, **invert_kwargs) -> tuple[Tensor, Tensor | None]:
    """Invert maps a study edited on purpose (steered, ablated, truncated, spliced).

    Edits move maps away from those the inverter was trained on by design, so the inversion of ``edited`` raises no
    :class:`~workbench.errors.OffDistributionWarning`; each edited map's distance is returned for the study's table
    instead. The unedited ``originals`` are checked as ``invert`` would check them, so that maps of another
    classifier or layer still warn (Python shows a repeated warning once per line of the caller).
    The distance is the guard's: blind to edits uniform over space (steering everywhere; see
    :mod:`~workbench.inverters.feature_distance`), raised by local ones (steering in a mask, splices).

    Args:
        inverter: an inverter with ``invert(features, **invert_kwargs)``.
        originals: ``Tensor[N, C, h, w]`` the unedited maps.
        edited: ``Tensor[B, C, h, w]`` the maps to invert.
        invert_kwargs: passed to ``inverter.invert``.

    Returns:
        ``(samples, distance)``: the inversion ``Tensor[B, S, 3, H, W]`` and each edited map's
        :func:`~workbench.inverters.feature_distance.feature_distance`, ``Tensor[B]`` (None for an inverter
        without fitted feature statistics).
    """
    import warnings

    from ..errors import OffDistributionWarning
    from ..inverters.feature_distance import feature_distance, warn_if_off_distribution

    warn_if_off_distribution(inverter, originals)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OffDistributionWarning)
        samples = inverter.invert(edited, **invert_kwargs)
    return samples, feature_distance(inverter, edited)


@torch.no_grad()
def score_inversions(classifier: nn.Module, layer: str, targets: Tensor, samples: Tensor, *,
                     reference_logits: Tensor | None = None, batch_size: int = 256, judges="default",
                     reader="default"):
    """How faithful each inverted sample is to the map it was inverted from.

    Args:
        classifier: the classifier whose layer was inverted.
        layer: its layer name.
        targets: ``Tensor[B, C, h, w]``, the maps that were inverted (possibly edited).
        samples: ``Tensor[B, S, 3, H, W]``, the inverter's output for ``targets``.
        reference_logits: ``Tensor[B, K]`` the sample's predicted class is compared against (default: the
            logits of the unedited image are unknown here, so agreement is left out).
        judges, reader: the independent graders (:func:`~workbench.judges.judge_readings`; ``"default"``: the
            shipped ones, for tiny-world images; ``None``: leave them out).

    Returns:
        pandas.DataFrame, one row per (image, sample): ``image``, ``sample``, ``feature_cosine`` (between the
        sample's map and the target map), ``predicted`` (class index), ``confidence`` and, with
        ``reference_logits``, ``agrees`` (predicted == reference argmax): the inverted classifier's own readings.
        The independent graders add ``judge_predicted``, ``judge_confidence`` and ``read_<factor>`` (the factor
        reader).

    Example:
        >>> samples = inverter.invert(f, num_samples=2)
        >>> score_inversions(cnn, "stages.3", f, samples).feature_cosine.mean()
    """
    import pandas as pd

    from ..hooks import extract_features

    if samples.ndim != 5 or samples.shape[0] != targets.shape[0]:
        raise AnalysisError(f"samples are [B, S, 3, H, W] with B = {targets.shape[0]} (one row per target map), "
                            f"got {list(samples.shape)}")
    b, s = samples.shape[:2]
    flat = samples.reshape(b * s, *samples.shape[2:])
    feats = extract_features(classifier, flat, layer, batch_size=batch_size).float().cpu().flatten(1)
    tgt = targets.float().cpu().flatten(1).repeat_interleave(s, 0)
    cos = torch.nn.functional.cosine_similarity(feats, tgt, dim=1)
    probs = class_probabilities(classifier, flat, batch_size=batch_size)
    table = pd.DataFrame({"image": torch.arange(b).repeat_interleave(s).numpy(), "sample": torch.arange(s).repeat(b).numpy(),
                          "feature_cosine": cos.numpy(), "predicted": probs.argmax(1).numpy(),
                          "confidence": probs.max(1).values.numpy()})
    if reference_logits is not None:
        table["agrees"] = (probs.argmax(1) == reference_logits.argmax(1).repeat_interleave(s)).numpy()
    from ..judges import judge_readings

    graded = judge_readings(flat, judges=judges, reader=reader, batch_size=batch_size)
    if "judge_probs" in graded:
        table["judge_predicted"] = graded["judge_predicted"].numpy()
        table["judge_confidence"] = graded["judge_probs"].max(1).values.numpy()
    for key, value in graded.items():
        if key.startswith("read_"):
            table[key] = value.numpy()
    return table
