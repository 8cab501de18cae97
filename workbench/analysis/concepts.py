"""Concepts in a layer's feature space: directions and subspaces, found from labels or from the maps alone.

A :class:`Concept` is a unit direction in channel space (plus, for discovered concepts, an orthonormal
subspace basis), tied to the classifier and layer it was fitted at. Concepts come from labels
(:func:`mean_difference`, :func:`cav`, :func:`class_concepts`) or from the spatial feature vectors alone
(:func:`discover_concepts`: PCA, NMF or k-means subspaces, in the spirit of multi-dimensional concept
discovery). :func:`concept_map` shows where a concept is in a map and :func:`concept_readout` how strongly images
show it. Moving maps along a concept lives in :mod:`~workbench.analysis.steering`, and the studies that invert the
steered maps in :mod:`~workbench.analysis.steering_studies`.

Example:
    >>> feats = wb.extract_features(cnn, x, "stages.2")
    >>> star = class_concepts(feats, y, layer="stages.2", classifier_name="tinyworld-cnn")["star"]
    >>> concept_readout(cnn, x[:4], star)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..globalstate import import_keeping_environ
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
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
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
    from .factorization import fit_kmeans, fit_nmf, fit_pca_atoms

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
        atoms = (fit_pca_atoms if method == "pca" else fit_nmf)(x, n_concepts, seed)[0]
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
