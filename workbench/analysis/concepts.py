"""Concepts in a layer's feature space, and steering a map along them so that the inverted image shows it.

A :class:`Concept` is a unit direction in channel space (plus, for discovered concepts, an orthonormal
subspace basis), tied to the classifier and layer it was fitted at. Concepts come from labels
(:func:`mean_difference`, :func:`cav`, :func:`class_concepts`) or from the spatial feature vectors alone
(:func:`discover_concepts`: PCA, NMF or k-means subspaces, in the spirit of multi-dimensional concept
discovery). :func:`steer` moves a map along a concept, everywhere or inside a mask, with
:func:`workbench.interventions.shift_features`, the edit that the hook :func:`workbench.add_direction` applies too.

A direction that flips the classifier's head need not change what the inverter draws: the inverter was trained on
real maps and resolves an edited map to the nearest natural image. So steering is measured on both sides. An
:class:`Edit` is ``edit(features, alpha) -> features`` with ``alpha = 0`` the identity: along a direction
(:func:`direction_edit`, everywhere or at the :func:`object_mask`), a class's object vector put where the object is
(:func:`transplant_edit`), towards the nearest real maps of the target class (:func:`retrieval_edit`), or towards a
map optimised for the target under a :class:`MapPrior` of real maps (:func:`manifold_edit`). :func:`steering_study`
sweeps one over ``alpha``, inverting every alpha of an image from the same noise, and records p(target) of the
inverted image and of the edited map; :func:`steering_table` and :func:`steering_goal` compare methods
(``docs/steering.md`` has the measured table).

Example:
    >>> feats = wb.extract_features(cnn, x, "stages.2")
    >>> star = class_concepts(feats, y, layer="stages.2", classifier_name="tinyworld-cnn")["star"]
    >>> steered = steer(feats[:2], star, alpha=2.0, layer="stages.2")
    >>> methods = standard_edits(cnn, x_test[:6], feats, y, 3, layer="stages.2")
    >>> table, samples = steering_study(cnn, inverter, x_test[:6], *methods["nearest real map, everywhere"],
    ...                                 target_class=3)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..interventions import check_alpha, check_direction, check_mask, shift_features
from . import class_probabilities, invert_edited, map_logits
from .factorization import DECOMPOSITIONS

#: The decompositions :func:`discover_concepts` accepts.
DISCOVERY_METHODS = DECOMPOSITIONS


@dataclass
class Concept:
    """A direction (and subspace) in a layer's channel space.

    Attributes:
        name: a readable name (``"star"``, ``"kmeans-3"``).
        layer: the layer it was fitted at.
        classifier_name: the classifier it was fitted on (``None`` if unknown).
        direction: ``Tensor[C]``, unit norm; :func:`steer` moves along it.
        basis: ``Tensor[K, C]`` orthonormal rows spanning the concept (``K = 1``: just ``direction``).
        scale: the typical size of the concept along ``direction`` in feature units (e.g. the gap between
            the mean projections of positives and negatives), so ``alpha = 1`` is one such gap.
        method: how it was found (``"mean"``, ``"cav"``, ``"pca"``, ``"nmf"``, ``"kmeans"``).
    """

    name: str
    layer: str
    classifier_name: str | None
    direction: Tensor = field(repr=False)
    basis: Tensor = field(repr=False)
    scale: float
    method: str

    @property
    def num_channels(self) -> int:
        return int(self.direction.shape[0])

    def __repr__(self) -> str:
        return (f"Concept({self.name!r}, layer={self.layer!r}, classifier={self.classifier_name!r}, "
                f"method={self.method!r}, channels={self.num_channels}, dim={self.basis.shape[0]}, "
                f"scale={self.scale:.3g})")

    def check(self, features: Tensor, *, layer: str | None = None, classifier_name: str | None = None) -> None:
        """Raise :class:`AnalysisError` unless ``features`` (``[B, C, h, w]``) can come from this concept's layer."""
        if layer is not None and layer != self.layer:
            raise AnalysisError(f"concept {self.name!r} was fitted at layer {self.layer!r}, not {layer!r}; fit it on "
                                f"{layer!r} maps (or steer {self.layer!r} maps)")
        if classifier_name is not None and self.classifier_name is not None and classifier_name != self.classifier_name:
            raise AnalysisError(f"concept {self.name!r} was fitted on {self.classifier_name!r}, not {classifier_name!r}")
        if features.ndim != 4 or features.shape[1] != self.num_channels:
            raise AnalysisError(f"concept {self.name!r} has {self.num_channels} channels (fitted at {self.layer!r}) "
                                f"but the features have shape {list(features.shape)}; use maps from {self.layer!r}")


def _pooled(features: Tensor) -> Tensor:
    if features.ndim != 4:
        raise AnalysisError(f"features are Tensor[N, C, h, w], got {list(features.shape)}")
    return features.detach().float().cpu().mean((2, 3))


def _positive(labels, n: int) -> Tensor:
    pos = torch.as_tensor(np.asarray(labels)).bool().reshape(-1)
    if len(pos) != n:
        raise AnalysisError(f"{len(pos)} labels for {n} maps")
    if pos.all() or not pos.any():
        raise AnalysisError("a concept needs both positive and negative examples; got only one kind")
    return pos


def _make(name, layer, classifier_name, direction: Tensor, pooled: Tensor, pos: Tensor, method: str) -> Concept:
    direction = direction.float() / direction.norm().clamp_min(1e-12)
    proj = pooled @ direction
    gap = float(proj[pos].mean() - proj[~pos].mean())
    if gap < 0:       # orient the direction towards the positives
        direction, gap = -direction, -gap
    return Concept(name, layer, classifier_name, direction, direction[None], max(gap, 1e-8), method)


def mean_difference(features: Tensor, positive, *, name: str = "concept", layer: str,
                    classifier_name: str | None = None) -> Concept:
    """The concept direction from the mean pooled map of positives minus that of negatives.

    Args:
        features: ``Tensor[N, C, h, w]`` maps at ``layer``.
        positive: ``N`` booleans (an array, list or tensor): which maps show the concept.
        name: concept name.
        layer: the layer the maps came from (recorded and checked later).
        classifier_name: the classifier (recorded and checked later).

    Returns:
        Concept with ``scale`` = the distance between the two means.

    Example:
        >>> big = mean_difference(feats, table["size"] > 0.3, name="big", layer="stages.3")
    """
    pooled = _pooled(features)
    pos = _positive(positive, len(pooled))
    return _make(name, layer, classifier_name, pooled[pos].mean(0) - pooled[~pos].mean(0), pooled, pos, "mean")


def cav(features: Tensor, positive, *, name: str = "concept", layer: str, classifier_name: str | None = None,
        regularization: float = 1.0, seed: int = 0) -> Concept:
    """A concept activation vector: the normal of a logistic regression separating positives from negatives.

    Args:
        features, positive, name, layer, classifier_name: as in :func:`mean_difference`.
        regularization: inverse strength ``C`` of scikit-learn's ``LogisticRegression``.
        seed: seeds the solver.

    Returns:
        Concept whose direction is the decision normal in raw feature space.

    Example:
        >>> star = cav(feats, y == 3, name="star", layer="stages.3")
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    pooled = _pooled(features)
    pos = _positive(positive, len(pooled))
    scaler = StandardScaler().fit(pooled.numpy())
    lr = LogisticRegression(C=regularization, max_iter=1000, random_state=seed)
    lr.fit(scaler.transform(pooled.numpy()), pos.numpy())
    w = torch.as_tensor(lr.coef_[0] / scaler.scale_, dtype=torch.float32)
    return _make(name, layer, classifier_name, w, pooled, pos, "cav")


def class_concepts(features: Tensor, labels: Tensor, *, layer: str, classifier_name: str | None = None,
                   method: str = "mean", class_names: Sequence[str] | None = None, seed: int = 0) -> dict[str, Concept]:
    """One-vs-rest concepts for every class present in ``labels``.

    Args:
        features: ``Tensor[N, C, h, w]``.
        labels: ``Tensor[N]`` class indices.
        layer, classifier_name: recorded in each concept.
        method: ``"mean"`` (:func:`mean_difference`) or ``"cav"`` (:func:`cav`).
        class_names: names by index (default: the tiny world's classes).
        seed: for ``"cav"``.

    Returns:
        ``{class name: Concept}``.

    Example:
        >>> concepts = class_concepts(feats, y, layer="stages.3", method="cav")
    """
    from ..tinyworld import CLASSES

    names = list(class_names or CLASSES)
    labels = torch.as_tensor(labels).long().cpu()
    out = {}
    for k in torch.unique(labels).tolist():
        if method == "mean":
            out[names[k]] = mean_difference(features, labels == k, name=names[k], layer=layer,
                                            classifier_name=classifier_name)
        elif method == "cav":
            out[names[k]] = cav(features, labels == k, name=names[k], layer=layer, classifier_name=classifier_name,
                                seed=seed)
        else:
            raise AnalysisError(f"method is 'mean' or 'cav', got {method!r}")
    return out


def discover_concepts(features: Tensor, n_concepts: int, *, method: str = "kmeans", dim: int = 2, layer: str,
                      classifier_name: str | None = None, max_positions: int = 20_000, seed: int = 0) -> list[Concept]:
    """Concepts from unlabelled spatial feature vectors (each position of each map is one vector).

    * ``"pca"``: the top principal directions, one concept each;
    * ``"nmf"``: non-negative factors of the rectified vectors, one concept each;
    * ``"kmeans"``: cluster the (unit-normalised) vectors; each cluster is a concept whose ``basis`` spans its
      top-``dim`` principal directions and whose ``direction`` points from the global mean to the cluster's.

    Args:
        features: ``Tensor[N, C, h, w]``.
        n_concepts: how many concepts.
        method: ``"pca"``, ``"nmf"`` or ``"kmeans"``.
        dim: subspace dimension per cluster (``"kmeans"`` only).
        layer, classifier_name: recorded in each concept.
        max_positions: positions used for fitting (a seeded random subset beyond this).
        seed: seeds subsampling and the decompositions.

    Returns:
        list of Concept, each with ``scale`` = twice the standard deviation of positions along it
        (``"kmeans"``: the gap between members' and others' mean projections).

    Example:
        >>> parts = discover_concepts(feats, 6, method="kmeans", layer="stages.2")
    """
    from .factorization import fit_kmeans, fit_nmf, fit_pca

    if method not in DISCOVERY_METHODS:
        raise AnalysisError(f"method is one of {DISCOVERY_METHODS}, got {method!r}")
    if features.ndim != 4:
        raise AnalysisError(f"features are Tensor[N, C, h, w], got {list(features.shape)}")
    c = features.shape[1]
    if not 1 <= n_concepts <= c:
        raise AnalysisError(f"n_concepts={n_concepts}, but the maps have {c} channels; ask for 1..{c}")
    x = features.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, c)
    if len(x) > max_positions:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_positions]]
    concepts = []

    def add(name: str, direction: Tensor, basis: Tensor | None = None, scale: float | None = None) -> None:
        direction = direction.float() / direction.norm().clamp_min(1e-12)
        proj = x @ direction
        if float((proj - proj.mean()).pow(3).mean()) < 0:   # orient towards the heavy tail
            direction = -direction
        basis = direction[None] if basis is None else basis
        scale = 2 * float(proj.std()) if scale is None else scale
        concepts.append(Concept(name, layer, classifier_name, direction, basis.float(), scale, method))

    if method in ("pca", "nmf"):       # the factorisations of fit_dictionary, one concept per atom
        atoms = (fit_pca if method == "pca" else fit_nmf)(x, n_concepts, seed)[0]
        for k, comp in enumerate(atoms):
            add(f"{method}-{k}", comp)
    else:
        labels = torch.as_tensor(fit_kmeans(x, n_concepts, seed)[3].labels_)
        mean = x.mean(0)
        for k in range(n_concepts):
            member = labels == k
            if member.sum() < 2 or (~member).sum() < 1:
                continue
            direction = x[member].mean(0) - mean
            direction = direction / direction.norm().clamp_min(1e-12)
            k_dim = int(min(dim, member.sum() - 1, c))
            _, _, v = torch.linalg.svd(x[member] - x[member].mean(0), full_matrices=False)
            basis = torch.linalg.qr(torch.cat([direction[None], v[:max(k_dim - 1, 0)]]).T).Q.T
            proj = x @ direction
            gap = float(proj[member].mean() - proj[~member].mean())
            concepts.append(Concept(f"kmeans-{k}", layer, classifier_name, direction, basis.float(), max(gap, 1e-8),
                                    method))
    return concepts


def concept_map(features: Tensor, concept: Concept) -> Tensor:
    """Where the concept is present: the projection of each position on the concept.

    For ``dim = 1`` it is the signed projection on ``direction``; for subspaces, the norm of the projection
    of the centred-free vector onto ``basis``, signed by its ``direction`` component.

    Returns:
        ``Tensor[B, 1, h, w]``.

    Example:
        >>> plot.image_grid([[m] for m in concept_map(feats[:4], concept)])
    """
    concept.check(features)
    x = features.float().permute(0, 2, 3, 1)
    along = x @ concept.direction.to(x)
    if concept.basis.shape[0] == 1:
        return along[:, None]
    sub = (x @ concept.basis.T.to(x)).norm(dim=-1)
    return (torch.sign(along) * sub)[:, None]


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

    Example:
        >>> steer(feats, star, 2.0, mask=left_half, layer="stages.3")
    """
    concept.check(features, layer=layer)
    return shift_features(features, concept.direction, check_alpha(alpha) * concept.scale, mask)


def steering_sweep(features: Tensor, concept: Concept, alphas: Sequence[float], mask: Tensor | None = None, *,
                   layer: str | None = None) -> Tensor:
    """:func:`steer` for each ``alpha``: ``Tensor[B, C, h, w]`` -> ``Tensor[B, A, C, h, w]``.

    Example:
        >>> seq = steering_sweep(feats[:2], star, [0, 1, 2])
    """
    return torch.stack([steer(features, concept, a, mask, layer=layer) for a in alphas], 1)


def concept_readout(classifier: nn.Module, images: Tensor, concept: Concept, *, batch_size: int = 256) -> Tensor:
    """The concept's strength in images: the mean projection of their maps at ``concept.layer`` on its direction.

    Args:
        images: ``Tensor[N, 3, H, W]`` in [0, 1].

    Returns:
        ``Tensor[N]``, in units of ``concept.scale``.

    Example:
        >>> concept_readout(cnn, samples[:, 0], star)
    """
    from ..hooks import extract_features

    f = extract_features(classifier, images, concept.layer, batch_size=batch_size).float().cpu()
    concept.check(f)
    return (f.mean((2, 3)) @ concept.direction) / concept.scale


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
        return self.apply(features, check_alpha(alpha))

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
    return features + alpha * m * (vector.to(features).view(1, -1, 1, 1) - features)


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


def standard_edits(classifier: nn.Module, images: Tensor, features: Tensor, labels: Tensor, target_class: int, *,
                   layer: str, prior: MapPrior | None = None, sweep: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                   class_names: Sequence[str] | None = None) -> dict[str, tuple[Edit, list[float]]]:
    """The edit methods compared in notebook 09 and ``benchmarks/steering.py``, each with its alpha sweep.

    Args:
        classifier: the classifier of ``features``.
        images: ``Tensor[B, 3, H, W]``, the images that will be steered (the optimised edits are built for them).
        features: ``Tensor[N, C, h, w]`` training maps at ``layer`` (concepts, prototypes, the prior, the bank).
        labels: ``Tensor[N]`` their classes.
        target_class: the class to steer towards.
        layer: the layer of ``features``.
        prior: a :class:`MapPrior` of ``layer`` (default: fitted on ``features`` with 32 components).
        sweep: fractions of each method's full step; the direction edits scale them by 4 (everywhere) and 8 (at
            the object) ``concept.scale`` units, the others go from 0 to 1 (the replaced or target map).
        class_names: names by index (default: the tiny world's).

    Returns:
        ``{method name: (Edit, alphas)}``, for :func:`steering_study` and :func:`steering_table`.

    Example:
        >>> methods = standard_edits(cnn, x_test[:6], feats, y, 3, layer="stages.2")
        >>> studies = {m: steering_study(cnn, inv, x_test[:6], e, a, target_class=3)[0] for m, (e, a) in methods.items()}
    """
    from ..tinyworld import CLASSES

    name = list(class_names or CLASSES)[int(target_class)]
    labels = torch.as_tensor(labels).long().cpu()
    prior = fit_map_prior(features, layer=layer) if prior is None else prior
    direction = mean_difference(features, labels == target_class, name=name, layer=layer)
    bank = features[labels == target_class]
    frac = [float(a) for a in sweep]
    return {
        "direction, everywhere": (direction_edit(direction), [4 * a for a in frac]),
        "direction, at the object": (direction_edit(direction, where="object"), [8 * a for a in frac]),
        "transplant object vector": (transplant_edit(prototype(features, labels == target_class), layer=layer), frac),
        "nearest real map, at the object": (retrieval_edit(bank, layer=layer, where="object"), frac),
        "nearest real map, everywhere": (retrieval_edit(bank, layer=layer), frac),
        "optimised, no prior": (manifold_edit(classifier, images, target_class, prior, prior_weight=0.0,
                                              name="optimised, no prior"), frac),
        "on-manifold (PCA prior)": (manifold_edit(classifier, images, target_class, prior), frac),
    }


@torch.no_grad()
def steering_study(classifier: nn.Module, inverter, images: Tensor, edit: Edit | Concept, alphas: Sequence[float], *,
                   mask: Tensor | None = None, target_class: int | None = None, readout=None, num_samples: int = 1,
                   num_inference_steps: int | None = None, seed: int = 0, batch_size: int = 64,
                   progress: bool = True):
    """Edit each image's map for every ``alpha``, invert it with the noise shared across alphas, and read it out.

    The sweep is controlled: each ``alpha`` is one ``inverter.invert`` call with the same ``seed``, whose noise
    depends only on the map's row and sample, so every alpha of an image starts from the same noise. A change
    along a row is the edit's, not the sampler's, and ``alpha = 0`` gives exactly the unsteered inversion.

    Args:
        classifier: the classifier the inverter belongs to.
        inverter: an inverter of ``edit.layer`` (FeatInv, or any with ``invert(features, num_samples=, seed=)``).
        images: ``Tensor[B, 3, H, W]`` in [0, 1].
        edit: an :class:`Edit`, or a :class:`Concept` (steered everywhere, or inside ``mask``).
        alphas: the sweep, starting with 0, e.g. ``[0, 1, 2, 3]``.
        mask: with a Concept, an optional spatial mask (see :func:`steer`).
        target_class: if given, its probability on each inversion (column ``p_target``) and on the edited map
            itself, the classifier run on from the edited layer (column ``p_target_map``).
        readout: a :class:`~workbench.analysis.composition.FactorReadout`; its factor values on each
            inversion go in columns ``readout_<factor>``.
        num_samples, num_inference_steps, seed, batch_size, progress: passed to ``inverter.invert``.

    Returns:
        ``(table, samples)``: one row per (image, alpha, sample) with ``image``, ``alpha``, ``sample``,
        ``predicted``, ``concept`` (for concept edits: :func:`concept_readout` of the inversion), optional
        ``p_target``, ``p_target_map`` and ``readout_<factor>``, and ``feature_distance``, how far the edited map
        lies from the inverter's training maps (:func:`~workbench.analysis.invert_edited`; about 1 or less for
        unedited maps, absent for an inverter without feature statistics); ``samples`` is
        ``Tensor[B, A, S, 3, H, W]``.

    Raises:
        AnalysisError: an edit or concept of another layer or classifier than the inverter's.

    Example:
        >>> table, samples = steering_study(cnn, inv, x[:4], star, [0, 1, 2, 3], target_class=3)
        >>> table, samples = steering_study(cnn, inv, x[:4], direction_edit(star, where="object"), [0, 2, 4])
    """
    from ..hooks import extract_features

    if isinstance(edit, Concept):
        edit = direction_edit(edit, where="everywhere" if mask is None else mask)
    elif mask is not None:
        raise AnalysisError("mask= goes with a Concept; an Edit carries its own mask (direction_edit(where=...))")
    f = extract_features(classifier, images, inverter.layer).float().cpu()
    if edit.concept is not None:
        edit.concept.check(f, layer=inverter.layer, classifier_name=inverter.classifier_name)
    if edit.layer != inverter.layer:
        raise AnalysisError(f"edit {edit.name!r} edits {edit.layer!r} maps but the inverter inverts "
                            f"{inverter.layer!r}; build the edit at {inverter.layer!r} or load that layer's inverter")
    outs, map_probs, distances = [], [], []
    for a in alphas:
        edited = edit(f, a)
        out, distance = invert_edited(inverter, f, edited, num_samples=num_samples, seed=seed, batch_size=batch_size,
                                      num_inference_steps=num_inference_steps, progress=progress)
        outs.append(out)
        distances.append(distance)
        map_probs.append(map_logits(classifier, images, inverter.layer, edited).softmax(-1))
    samples = torch.stack(outs, 1)                                             # [B, A, S, 3, H, W]
    table = _steering_rows(classifier, samples, alphas, torch.stack(map_probs, 1), edit.concept, target_class,
                           readout)
    if distances[0] is not None:       # [B, A], one per edited map, repeated over its samples
        table["feature_distance"] = torch.stack(distances, 1).reshape(-1).repeat_interleave(num_samples).numpy()
    return table, samples


def _steering_rows(classifier: nn.Module, samples: Tensor, alphas: Sequence[float], map_probs: Tensor,
                   concept: Concept | None, target_class: int | None, readout):
    """:func:`steering_study`'s table from its samples ``[B, A, S, 3, H, W]`` and map probabilities ``[B, A, K]``."""
    import pandas as pd

    b, a, s = samples.shape[:3]
    flat = samples.reshape(b * a * s, *samples.shape[3:])
    probs = class_probabilities(classifier, flat)
    alpha_t = torch.as_tensor([float(v) for v in alphas])
    table = pd.DataFrame({"image": torch.arange(b).repeat_interleave(a * s).numpy(),
                          "alpha": alpha_t.repeat_interleave(s).repeat(b).numpy(),
                          "sample": torch.arange(s).repeat(b * a).numpy(),
                          "predicted": probs.argmax(1).numpy()})
    if concept is not None:
        table["concept"] = concept_readout(classifier, flat, concept).numpy()
    if target_class is not None:
        table["p_target"] = probs[:, int(target_class)].numpy()
        table["p_target_map"] = map_probs[..., int(target_class)].reshape(-1).repeat_interleave(s).numpy()
    if readout is not None:
        for factor, values in readout.values(flat).items():
            if np.ndim(values) == 1:
                table[f"readout_{factor}"] = values
    return table


def _drift(before: np.ndarray, after: np.ndarray, factor: str, scale: float) -> float:
    """Mean change of a factor's readout between paired inversions: the share changed for categories, else the mean
    absolute difference in ``scale`` units (on the circle for circular factors)."""
    from ..tinyworld import FACTOR_PERIODS

    if before.dtype.kind in "OUSb":
        return float(np.mean(before != after))
    d = np.abs(after.astype(float) - before.astype(float))
    if factor in FACTOR_PERIODS:
        d = np.mod(d, FACTOR_PERIODS[factor])
        d = np.minimum(d, FACTOR_PERIODS[factor] - d)
    return float(d.mean() / scale)


def steering_summary(table, *, factors: Sequence[str] = (), factor_scale: Mapping[str, float] | None = None):
    """Monotonicity of the concept and drift of unrelated factors along ``alpha``, from :func:`steering_study`.

    Args:
        table: :func:`steering_study`'s table.
        factors: readout factors that should stay put (columns ``readout_<factor>``).
        factor_scale: typical spread of each numeric factor (e.g. its dataset standard deviation); drift is
            reported in these units. Circular factors (hue) are compared on the circle.

    Returns:
        pandas.Series: ``spearman_concept`` (Spearman of the concept readout with alpha, per image over its
        alphas and samples, averaged over images; concept edits only), ``spearman_target`` (the same for
        ``p_target``, if present), and ``drift_<factor>``: for numbers, the mean
        absolute change from the first to the last alpha (in ``factor_scale`` units); for categories, the
        share of reconstructions whose readout changed.

    Example:
        >>> steering_summary(table, factors=["hue", "background"], factor_scale={"hue": 0.29})
    """
    import pandas as pd

    from .composition import trend

    out = {}
    if "concept" in table:
        out["spearman_concept"] = float(trend(table, "alpha", "concept", by="image").mean())
    if "p_target" in table:
        out["spearman_target"] = float(trend(table, "alpha", "p_target", by="image").mean())
    first, last = table[table.alpha == table.alpha.min()], table[table.alpha == table.alpha.max()]
    for factor in factors:
        col = f"readout_{factor}"
        if col not in table:
            raise AnalysisError(f"{col!r} is not in the table; pass readout= to steering_study with {factor!r}")
        out[f"drift_{factor}"] = _drift(first[col].to_numpy(), last[col].to_numpy(), factor,
                                        (factor_scale or {}).get(factor, 1.0))
    return pd.Series(out)


def steering_table(studies: Mapping[str, "pd.DataFrame"], *, factors: Sequence[str] = (),
                   factor_scale: Mapping[str, float] | None = None):
    """One table of several edit methods' :func:`steering_study` tables (each with ``target_class`` given).

    Args:
        studies: ``{method name: steering_study table}``; each sweep starts at ``alpha = 0``.
        factors: readout factors whose drift to report (columns ``readout_<factor>``).
        factor_scale: each numeric factor's dataset standard deviation; drift is in these units.

    Returns:
        pandas.DataFrame indexed by ``(method, alpha)`` with ``p_target`` (the classifier on the inverted images),
        ``p_target_map`` (on the edited map), ``off_manifold_gap`` (``p_target_map - p_target``: how much of the
        edit the classifier's head sees but the inverter, trained on real maps, does not draw), ``hit_rate``
        (share of inversions with p(target) above 0.5, so the target is surely the top class) and ``drift_<factor>``: the mean change of the readout
        from the unsteered inversion of the same image and sample (same noise), in ``factor_scale`` units, or
        the share changed for categories.

    Example:
        >>> steering_table({"direction": t1, "on-manifold": t2}, factors=["x", "y", "size"],
        ...                factor_scale={"x": 0.17, "y": 0.17, "size": 0.06})
    """
    import pandas as pd

    rows = []
    for method, table in studies.items():
        if "p_target" not in table:
            raise AnalysisError(f"the {method!r} table has no p_target; run steering_study with target_class=")
        if table.alpha.min() != 0:
            raise AnalysisError(f"the {method!r} sweep does not start at alpha = 0, the unsteered inversion")
        base = table[table.alpha == 0].set_index(["image", "sample"])
        for alpha, group in table.groupby("alpha"):
            ref = base.loc[list(zip(group.image, group["sample"]))]
            row = {"method": method, "alpha": float(alpha), "p_target": float(group.p_target.mean()),
                   "p_target_map": float(group.p_target_map.mean())}
            row["off_manifold_gap"] = row["p_target_map"] - row["p_target"]
            row["hit_rate"] = float((group.p_target > 0.5).mean())
            for factor in factors:
                col = f"readout_{factor}"
                if col not in table:
                    raise AnalysisError(f"{col!r} is not in the {method!r} table; pass readout= to steering_study")
                row[f"drift_{factor}"] = _drift(ref[col].to_numpy(), group[col].to_numpy(), factor,
                                                (factor_scale or {}).get(factor, 1.0))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "alpha"])


def steering_goal(table, *, threshold: float = 0.5, preserve: Sequence[str] = ("x", "y", "size"),
                  tolerance: float = 1.0):
    """Per method, the best alpha of a :func:`steering_table` that keeps ``preserve`` put, and whether it reaches
    the goal: mean ``p_target`` of the inverted images above ``threshold`` with every ``drift_<factor>`` of
    ``preserve`` at most ``tolerance`` (dataset standard deviations, if the table was made with them).

    Returns:
        pandas.DataFrame indexed by method: ``alpha`` (the best preserving alpha, highest ``p_target``),
        ``p_target``, ``p_target_map``, ``off_manifold_gap``, ``max_drift`` (over ``preserve``) and ``reached``;
        sorted by ``p_target``, best first.

    Example:
        >>> steering_goal(steering_table(studies, factors=["x", "y", "size"], factor_scale=sd)).reached.any()
    """
    import pandas as pd

    cols = [f"drift_{f}" for f in preserve]
    missing = [c for c in cols if c not in table]
    if missing:
        raise AnalysisError(f"the table lacks {missing}; make it with steering_table(..., factors={list(preserve)})")
    rows = {}
    for method, group in table.groupby(level="method"):
        group = group.droplevel("method")
        drift = group[cols].max(1)
        ok = group[drift <= tolerance]
        best = ok.p_target.idxmax()
        rows[method] = {"alpha": best, "p_target": ok.p_target[best], "p_target_map": ok.p_target_map[best],
                        "off_manifold_gap": ok.off_manifold_gap[best], "max_drift": float(drift[best]),
                        "reached": bool(ok.p_target[best] > threshold)}
    out = pd.DataFrame.from_dict(rows, orient="index").sort_values("p_target", ascending=False)
    out.index.name = "method"
    return out
