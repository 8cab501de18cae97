"""Steering a layer's maps: moving them along a concept, and the edits that a steering study inverts.

:func:`steer` moves a map along a :class:`~workbench.analysis.concepts.Concept`, everywhere or inside a mask, with
:func:`workbench.interventions.shift_features`, the edit that the hook :func:`workbench.add_direction` applies too.

A direction that flips the classifier's head need not change what the inverter draws: the inverter was trained on
real maps and resolves an edited map to the nearest natural image. So there is more than one way to edit. An
:class:`Edit` is ``edit(features, alpha) -> features`` with ``alpha = 0`` the identity: along a direction
(:func:`direction_edit`, everywhere or at the :func:`object_mask`), a class's object vector put where the object is
(:func:`transplant_edit`), towards the nearest real maps of the target class (:func:`retrieval_edit`), or towards a
map optimised for the target under a :class:`MapPrior` of real maps (:func:`manifold_edit`).
:mod:`~workbench.analysis.steering_studies` sweeps them over ``alpha`` and measures both sides.

Example:
    >>> steered = steer(feats[:2], star, alpha=2.0, layer="stages.2")
    >>> edit = direction_edit(star, where="object"); edit(feats, 2.0).shape == feats.shape
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_result
from ..errors import AnalysisError, NonFiniteResultError
from ..interventions import check_alpha, check_direction, check_mask, shift_features
from . import map_logits
from .concepts import Concept


def steer(features: Tensor, concept: Concept, alpha: float, mask: Tensor | None = None, *,
          layer: str | None = None) -> Tensor:
    """Move maps along a concept: ``features + alpha * scale * direction`` at every (masked) position.

    Args:
        features: ``Tensor[B, C, h, w]`` from the concept's layer.
        concept: a :class:`Concept`.
        alpha: step in units of ``concept.scale`` (0 leaves the map unchanged; negative removes the concept).
        mask: optional ``Tensor[h, w]`` or ``Tensor[B, 1, h, w]`` weighting positions (1 = full step).
        layer: the layer ``features`` came from; if given it must be the concept's.

    Returns:
        ``Tensor[B, C, h, w]``.

    Raises:
        AnalysisError: maps from another layer or with another channel count than the concept's.
        InterventionError: a mask of the wrong layout or spatial size, or a NaN or infinite ``alpha``.
        NonFiniteResultError: an ``alpha`` so large that finite maps come out infinite (``alpha=1e38``).

    Example:
        >>> steer(feats, star, 2.0, mask=left_half, layer="stages.3")
    """
    concept.check(features, layer=layer)
    alpha = check_alpha(alpha)
    try:
        return shift_features(features, concept.direction, alpha * concept.scale, mask)
    except NonFiniteResultError:
        raise NonFiniteResultError(f"steer(alpha={alpha:g}) moved finite maps to infinity: a step of alpha times "
                                   f"the concept's scale {concept.scale:g} overflows {features.dtype}; use an alpha "
                                   "of a few units") from None


def steering_sweep(features: Tensor, concept: Concept, alphas: Sequence[float], mask: Tensor | None = None, *,
                   layer: str | None = None) -> Tensor:
    """:func:`steer` for each ``alpha``: ``Tensor[B, C, h, w]`` -> ``Tensor[B, A, C, h, w]``.

    Example:
        >>> seq = steering_sweep(feats[:2], star, [0, 1, 2])
    """
    return torch.stack([steer(features, concept, a, mask, layer=layer) for a in alphas], 1)


@torch.no_grad()
def steering_logits(classifier: nn.Module, images: Tensor, concept: Concept, alphas: Sequence[float],
                    mask: Tensor | None = None) -> Tensor:
    """The classifier's logits with the map at ``concept.layer`` steered by each ``alpha`` (no inversion).

    Returns:
        ``Tensor[B, A, K]``.

    Example:
        >>> steering_logits(cnn, x[:4], star, [0, 1, 2])[..., 3]     # the star logit rises along alpha
    """
    from ..hooks import extract_features

    f = extract_features(classifier, images, concept.layer).float().cpu()
    return torch.stack([map_logits(classifier, images, concept.layer, steer(f, concept, a, mask)) for a in alphas], 1)


# ------------------------------------------------------------------------------------------ edits
@dataclass(repr=False)
class Edit:
    """A steering edit of one layer's maps, ``edit(features, alpha) -> features`` (``Tensor[B, C, h, w]`` both),
    with ``alpha = 0`` leaving the maps unchanged.

    Build one with :func:`direction_edit` (a concept direction, everywhere or at the object),
    :func:`transplant_edit` (the target's object vector put where the object is) or :func:`manifold_edit`
    (a map optimised towards the target class near real maps); :func:`steering_study` sweeps it over ``alpha``.

    Attributes:
        name: a readable name, used as the method's name in tables.
        layer: the layer whose maps it edits.
        apply: ``(features, alpha) -> features``.
        concept: the concept it moves along, if any (then :func:`steering_study` reads the concept out).
    """

    name: str
    layer: str
    apply: Callable[[Tensor, float], Tensor]
    concept: Concept | None = None

    def __call__(self, features: Tensor, alpha: float) -> Tensor:
        alpha = check_alpha(alpha)
        return _checked_edit(features, self.apply(features, alpha), self.name, alpha)

    def __repr__(self) -> str:
        return f"Edit({self.name!r}, layer={self.layer!r})"


def object_mask(features: Tensor, *, threshold: float = 0.4) -> Tensor:
    """Where the object is, read off the map itself: the positions that differ most from the map's background.

    The background is the map's median vector over positions (objects cover a minority of them); a position is
    in the mask when its distance to that vector lies at least ``threshold`` of the way from the map's closest
    position to its farthest. (The raw channel norm does not work everywhere: at ``stages.2`` of the tiny CNN
    textured backgrounds have the larger norm.)

    Args:
        features: ``Tensor[B, C, h, w]``.
        threshold: in [0, 1]; 0 selects every position, 1 only the strongest.

    Returns:
        ``Tensor[B, 1, h, w]`` of 0s and 1s; every map has at least one 1.

    Example:
        >>> object_mask(feats[:2]).shape        # torch.Size([2, 1, 4, 4])
    """
    if features.ndim != 4:
        raise AnalysisError(f"features are Tensor[B, C, h, w], got {list(features.shape)}")
    if not 0 <= threshold <= 1:
        raise AnalysisError(f"threshold is a fraction in [0, 1], got {threshold}")
    f = features.detach().float()
    background = f.flatten(2).median(2).values[..., None, None]                    # [B, C, 1, 1]
    distance = (f - background).norm(dim=1, keepdim=True)                          # [B, 1, h, w]
    low, high = distance.amin((2, 3), keepdim=True), distance.amax((2, 3), keepdim=True)
    return (distance - low >= threshold * (high - low)).float()


def prototype(features: Tensor, positive, *, threshold: float = 0.4) -> Tensor:
    """A class's object vector: the mean feature vector over the :func:`object_mask` positions of its maps.

    Args:
        features: ``Tensor[N, C, h, w]``.
        positive: ``N`` booleans: which maps belong to the class.
        threshold: of :func:`object_mask`.

    Returns:
        ``Tensor[C]``.

    Example:
        >>> star_vector = prototype(feats, y == CLASSES.index("star"))
    """
    pos = torch.as_tensor(np.asarray(positive)).bool().reshape(-1)
    if features.ndim != 4 or len(pos) != len(features) or not pos.any():
        raise AnalysisError(f"prototype needs maps Tensor[N, C, h, w] and N booleans with at least one True; got "
                            f"{list(features.shape)} and {len(pos)} labels ({int(pos.sum())} True)")
    f = features[pos].detach().float().cpu()
    m = object_mask(f, threshold=threshold)
    return (f * m).sum((0, 2, 3)) / m.sum()


def transplant(features: Tensor, vector: Tensor, alpha: float, mask: Tensor) -> Tensor:
    """Replace the map by ``vector`` inside ``mask``, by a fraction ``alpha``: ``f + alpha * mask * (vector - f)``.

    Args:
        features: ``Tensor[B, C, h, w]``.
        vector: ``Tensor[C]``, e.g. a :func:`prototype`.
        alpha: 0 leaves the map unchanged, 1 replaces the masked positions.
        mask: ``Tensor[h, w]`` or ``Tensor[B, 1, h, w]``, e.g. :func:`object_mask`.

    Raises:
        InterventionError: a vector that is not ``Tensor[C]``, or a mask that does not fit the map.

    Example:
        >>> transplant(f, star_vector, 1.0, object_mask(f))
    """
    check_direction(vector, features.shape[1])
    alpha = check_alpha(alpha)
    m = check_mask(mask, features.shape[-2:], features.shape[0]).to(features)
    return _checked_edit(features, features + alpha * m * (vector.to(features).view(1, -1, 1, 1) - features),
                         "transplant", alpha)


def _checked_edit(features: Tensor, edited: Tensor, what: str, alpha: float) -> Tensor:
    """``edited``, unless finite ``features`` came out NaN or infinite: then the step overflowed, and
    :func:`~workbench.checks.check_result` names ``alpha``."""
    if bool(torch.isfinite(features).all()):
        check_result(edited, what, f"alpha={alpha:g}, a step so large that it overflows {features.dtype}; use an "
                                   "alpha of a few units")
    return edited


def direction_edit(concept: Concept, *, where: str | Tensor = "everywhere", threshold: float = 0.4) -> Edit:
    """Steer along ``concept`` (:func:`steer`; ``alpha`` in units of ``concept.scale``) at every position, only at
    the object (``where="object"``, :func:`object_mask` with ``threshold``), or inside a given mask.

    Example:
        >>> edit = direction_edit(star, where="object"); edit(feats, 2.0).shape == feats.shape
    """
    if isinstance(where, Tensor):
        return Edit(f"{concept.name} direction (masked)", concept.layer, lambda f, a: steer(f, concept, a, where),
                    concept)
    if where == "everywhere":
        return Edit(f"{concept.name} direction", concept.layer, lambda f, a: steer(f, concept, a), concept)
    if where == "object":
        return Edit(f"{concept.name} direction at the object", concept.layer,
                    lambda f, a: steer(f, concept, a, object_mask(f, threshold=threshold)), concept)
    raise AnalysisError(f"where is 'everywhere', 'object' or a mask Tensor[h, w], got {where!r}")


def transplant_edit(vector: Tensor, *, layer: str, name: str = "transplant", threshold: float = 0.4) -> Edit:
    """Put ``vector`` (a target class's :func:`prototype`) where the object is (:func:`transplant` inside
    :func:`object_mask`); ``alpha`` from 0 (unchanged) to 1 (replaced).

    Example:
        >>> edit = transplant_edit(prototype(feats, y == 3), layer="stages.3")
    """
    vector = vector.detach().float().cpu()
    return Edit(name, layer, lambda f, a: transplant(f, vector, a, object_mask(f, threshold=threshold)))


def towards_edit(targets: Tensor, *, layer: str, name: str = "towards") -> Edit:
    """Move each map a fraction ``alpha`` of the way to its own target map: ``f + alpha * (target - f)``.

    Args:
        targets: ``Tensor[B, C, h, w]``, one per map the edit will see (the same images, in the same order).

    Example:
        >>> edit = towards_edit(optimise_map(cnn, x, f, 3, layer="stages.3"), layer="stages.3")
    """
    targets = targets.detach().float().cpu()

    def apply(features: Tensor, alpha: float) -> Tensor:
        if features.shape != targets.shape:
            raise AnalysisError(f"edit {name!r} holds target maps {list(targets.shape)}, one per image it was built "
                                f"for, but got maps {list(features.shape)}; steer the same images")
        return features + alpha * (targets.to(features) - features)

    return Edit(name, layer, apply)


def nearest_maps(features: Tensor, bank: Tensor, *, k: int = 1, batch_size: int = 256) -> Tensor:
    """For each map, the mean of its ``k`` nearest maps (Euclidean, whole map) in ``bank``: real maps of a class.

    Args:
        features: ``Tensor[B, C, h, w]``.
        bank: ``Tensor[N, C, h, w]``, e.g. the training maps of the target class.
        k: neighbours averaged (1: the nearest real map itself).

    Returns:
        ``Tensor[B, C, h, w]``.

    Example:
        >>> nearest_maps(f, feats[y == 3], k=1)        # the real star map closest to each map
    """
    if features.ndim != 4 or bank.ndim != 4 or features.shape[1:] != bank.shape[1:] or not 1 <= k <= len(bank):
        raise AnalysisError(f"nearest_maps needs maps and a bank of one shape [*, C, h, w] and 1 <= k <= len(bank); "
                            f"got {list(features.shape)}, {list(bank.shape)} and k={k}")
    flat = bank.detach().float().cpu().flatten(1)
    out = []
    for s in range(0, len(features), batch_size):
        q = features[s:s + batch_size].detach().float().cpu().flatten(1)
        nearest = torch.cdist(q, flat).topk(k, dim=1, largest=False).indices          # [b, k]
        out.append(flat[nearest].mean(1))
    return torch.cat(out).view(-1, *features.shape[1:])


def retrieval_edit(bank: Tensor, *, layer: str, k: int = 1, where: str = "everywhere", threshold: float = 0.4,
                   name: str | None = None) -> Edit:
    """Move each map towards its nearest real maps of the target class (:func:`nearest_maps` in ``bank``):
    ``f + alpha * mask * (nearest - f)``, everywhere or only where either map has its object (:func:`object_mask`).
    At ``alpha = 1`` (everywhere, ``k = 1``) the map *is* a real map of the class: an edit on the data manifold by
    construction, whose neighbour shares what dominates the map's distance (background, position, size).

    Example:
        >>> edit = retrieval_edit(feats[y == 3], layer="stages.3", where="object")
    """
    bank = bank.detach().float().cpu()
    if where not in ("everywhere", "object"):
        raise AnalysisError(f"where is 'everywhere' or 'object', got {where!r}")

    def apply(features: Tensor, alpha: float) -> Tensor:
        target = nearest_maps(features, bank, k=k)
        if where == "everywhere":
            return features + alpha * (target - features)
        mask = torch.maximum(object_mask(features, threshold=threshold), object_mask(target, threshold=threshold))
        return features + alpha * mask * (target - features)

    return Edit(name or f"nearest real map ({where})", layer, apply)


# ------------------------------------------------------------------------------------------ on-manifold edits
@dataclass
class MapPrior:
    """A Gaussian model of a layer's real maps (probabilistic PCA on whole flattened maps), to keep edits near them.

    Attributes:
        layer: the layer it was fitted at.
        shape: ``(C, h, w)`` of the maps.
        mean: ``Tensor[D]``, the mean map flattened (``D = C * h * w``).
        components: ``Tensor[K, D]``, orthonormal top principal directions.
        variances: ``Tensor[K]``, the variance along each.
        residual_variance: the mean variance per dimension outside them.
    """

    layer: str
    shape: tuple[int, int, int]
    mean: Tensor = field(repr=False)
    components: Tensor = field(repr=False)
    variances: Tensor = field(repr=False)
    residual_variance: float

    def _centred(self, features: Tensor) -> Tensor:
        if tuple(features.shape[1:]) != self.shape:
            raise AnalysisError(f"the prior was fitted on {self.layer!r} maps of shape {list(self.shape)}, got "
                                f"{list(features.shape)}; fit it on this layer's maps")
        return features.flatten(1).float() - self.mean.to(features.device)

    def penalty(self, features: Tensor) -> Tensor:
        """Half the squared Mahalanobis distance of each map ``[B, C, h, w]`` from the real maps, per dimension
        (about 0.5 for a typical real map) -> ``Tensor[B]``; differentiable."""
        x = self._centred(features)
        z = x @ self.components.T.to(x)
        inside = (z * z / self.variances.to(x)).sum(1)
        outside = ((x * x).sum(1) - (z * z).sum(1)).clamp_min(0) / self.residual_variance
        return 0.5 * (inside + outside) / x.shape[1]

    def project(self, features: Tensor) -> Tensor:
        """Each map's projection on the mean plus the top principal subspace, ``Tensor[B, C, h, w]``."""
        z = self._centred(features) @ self.components.T.to(features)
        return (self.mean.to(features) + z @ self.components.to(features)).view_as(features)


def fit_map_prior(features: Tensor, *, layer: str, n_components: int = 32) -> MapPrior:
    """Fit a :class:`MapPrior` on real maps ``Tensor[N, C, h, w]`` (e.g. a few thousand training images).

    Example:
        >>> prior = fit_map_prior(feats, layer="stages.3"); prior.penalty(feats).mean()     # about 0.5
    """
    if features.ndim != 4 or not 1 <= n_components < min(len(features), features[0].numel()):
        raise AnalysisError(f"fit_map_prior needs maps Tensor[N, C, h, w] and 1 <= n_components < min(N, C*h*w); "
                            f"got {list(features.shape)} and n_components={n_components}")
    x = features.detach().float().cpu().flatten(1)
    mean = x.mean(0)
    _, s, v = torch.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2 / (len(x) - 1)
    residual = float(var[n_components:].sum() / (x.shape[1] - n_components))
    return MapPrior(layer, tuple(features.shape[1:]), mean, v[:n_components].contiguous(), var[:n_components],
                    max(residual, 1e-8))


def optimise_map(classifier: nn.Module, images: Tensor, features: Tensor, target_class: int, *, layer: str,
                 prior: MapPrior | None = None, prior_weight: float = 1.0, num_steps: int = 100,
                 lr: float = 0.05) -> Tensor:
    """Optimise maps towards ``target_class``: Adam on the map, minimising the classifier's cross-entropy for the
    target from ``layer`` on, plus ``prior_weight`` times the prior's :meth:`~MapPrior.penalty`.

    Without a prior (or with ``prior_weight = 0``) this finds whatever map flips the head, real-looking or not;
    with it, the map stays near the real maps of ``layer``, so the inverter, trained on those, can follow it.

    Args:
        classifier: the classifier of ``features``.
        images: ``Tensor[B, 3, H, W]``, the images of ``features`` (the forward pass runs from them to ``layer``).
        features: ``Tensor[B, C, h, w]`` at ``layer``, the start.
        target_class: the class to move towards.
        layer: the layer of ``features``.
        prior: a :class:`MapPrior` of ``layer``, or ``None``.
        prior_weight: the penalty's weight.
        num_steps: optimiser steps.
        lr: Adam's learning rate, in units of the maps' standard deviation.

    Returns:
        ``Tensor[B, C, h, w]`` on the CPU.

    Example:
        >>> target = optimise_map(cnn, x, f, 3, layer="stages.3", prior=fit_map_prior(feats, layer="stages.3"))
    """
    from ..hooks import _device, run_with_hooks

    if prior is not None and prior.layer != layer:
        raise AnalysisError(f"the prior was fitted at {prior.layer!r}, not {layer!r}")
    dev = _device(classifier)
    start = features.detach().float().to(dev)
    scale = float(start.std())
    delta = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    target = torch.full((len(start),), int(target_class), device=dev)
    x = images.to(dev)
    with torch.enable_grad():
        for _ in range(num_steps):
            edited = start + scale * delta
            logits = run_with_hooks(classifier, x, {layer: lambda act, *, name: edited.to(act.dtype)})
            loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
            if prior is not None and prior_weight:
                loss = loss + prior_weight * prior.penalty(edited).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta.grad = grad
            opt.step()
    return (start + scale * delta).detach().cpu()


def manifold_edit(classifier: nn.Module, images: Tensor, target_class: int, prior: MapPrior | None, *,
                  prior_weight: float = 1.0, num_steps: int = 100, lr: float = 0.05, name: str | None = None) -> Edit:
    """The on-manifold edit of ``images``' maps at ``prior.layer``: :func:`optimise_map` under the prior, then
    :func:`towards_edit` (``alpha`` from 0, unchanged, to 1, the optimised map). Steer the same ``images``.

    Example:
        >>> edit = manifold_edit(cnn, x[:8], 3, fit_map_prior(feats, layer="stages.3"))
        >>> table, samples = steering_study(cnn, inv, x[:8], edit, [0, 0.5, 1], target_class=3)
    """
    from ..hooks import extract_features

    if prior is None:
        raise AnalysisError("manifold_edit needs a MapPrior (fit_map_prior); optimise_map without one is off-manifold")
    f = extract_features(classifier, images, prior.layer).float().cpu()
    target = optimise_map(classifier, images, f, target_class, layer=prior.layer, prior=prior,
                          prior_weight=prior_weight, num_steps=num_steps, lr=lr)
    return towards_edit(target, layer=prior.layer, name=name or "on-manifold")
