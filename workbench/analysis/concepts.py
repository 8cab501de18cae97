"""Concepts in a layer's feature space, and steering a map along them (FeatInv-Viz).

A :class:`Concept` is a unit direction in channel space (plus, for discovered concepts, an orthonormal
subspace basis), tied to the classifier and layer it was fitted at. Concepts come from labels
(:func:`mean_difference`, :func:`cav`, :func:`class_concepts`) or from the spatial feature vectors alone
(:func:`discover_concepts`: PCA, NMF or k-means subspaces, in the spirit of multi-dimensional concept
discovery). :func:`steer` moves a map along a concept, everywhere or inside a mask, with
:func:`workbench.interventions.shift_features`, the edit that the hook :func:`workbench.add_direction`
applies too. Inverting a sweep of ``alpha`` shows the concept as an image sequence, and
:func:`steering_study` checks that the concept's readout rises with ``alpha`` while unrelated factors
stay put.

Example:
    >>> feats = wb.extract_features(cnn, x, "stages.3")
    >>> star = class_concepts(feats, y, layer="stages.3", classifier_name="tinyworld-cnn")["star"]
    >>> steered = steer(feats[:2], star, alpha=2.0, layer="stages.3")
    >>> table, samples = steering_study(cnn, inverter, x[:4], star, alphas=[0, 1, 2, 3], target_class=3)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..interventions import shift_features
from . import class_probabilities, map_logits

METHODS = ("pca", "nmf", "kmeans")


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
    from sklearn.cluster import KMeans
    from sklearn.decomposition import NMF, PCA

    if method not in METHODS:
        raise AnalysisError(f"method is one of {METHODS}, got {method!r}")
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

    if method == "pca":
        pca = PCA(n_components=n_concepts, random_state=seed).fit(x.numpy())
        for k, comp in enumerate(torch.as_tensor(pca.components_)):
            add(f"pca-{k}", comp)
    elif method == "nmf":
        nmf = NMF(n_components=n_concepts, init="nndsvda", max_iter=400, random_state=seed).fit(x.clamp_min(0).numpy())
        for k, comp in enumerate(torch.as_tensor(nmf.components_)):
            add(f"nmf-{k}", comp)
    else:
        unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
        km = KMeans(n_clusters=n_concepts, n_init=4, random_state=seed).fit(unit.numpy())
        labels = torch.as_tensor(km.labels_)
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
        InterventionError: a mask of the wrong layout or spatial size.

    Example:
        >>> steer(feats, star, 2.0, mask=left_half, layer="stages.3")
    """
    concept.check(features, layer=layer)
    return shift_features(features, concept.direction, float(alpha) * concept.scale, mask)


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


@torch.no_grad()
def steering_study(classifier: nn.Module, inverter, images: Tensor, concept: Concept, alphas: Sequence[float], *,
                   mask: Tensor | None = None, target_class: int | None = None, readout=None,
                   num_samples: int = 1, num_inference_steps: int | None = None, seed: int = 0, progress: bool = True):
    """Steer each image's map along ``concept`` for every ``alpha``, invert, and read the results out.

    Args:
        classifier: the classifier the inverter and the concept belong to.
        inverter: a FeatInv for ``concept.layer``.
        images: ``Tensor[B, 3, H, W]`` in [0, 1].
        concept: the concept to steer along.
        alphas: steps, e.g. ``[0, 1, 2, 3]``.
        mask: optional spatial mask (see :func:`steer`).
        target_class: if given, its probability on each reconstruction goes in column ``p_target``.
        readout: a :class:`~workbench.analysis.composition.FactorReadout`; its factor values on each
            reconstruction go in columns ``readout_<factor>``.
        num_samples, num_inference_steps, seed, progress: passed to ``inverter.invert``.

    Returns:
        ``(table, samples)``: one row per (image, alpha, sample) with ``image``, ``alpha``, ``sample``,
        ``concept`` (:func:`concept_readout` of the reconstruction), ``predicted``, optional ``p_target`` and
        ``readout_<factor>``; ``samples`` is ``Tensor[B, A, S, 3, H, W]``.

    Raises:
        AnalysisError: the concept was fitted at another layer or on another classifier than the inverter's.

    Example:
        >>> table, samples = steering_study(cnn, inv, x[:4], star, [0, 1, 2, 3], target_class=3)
        >>> wb.analysis.composition.trend(table, "alpha", "concept")
    """
    import pandas as pd

    from ..hooks import extract_features

    f = extract_features(classifier, images, inverter.layer).float().cpu()
    concept.check(f, layer=inverter.layer, classifier_name=inverter.classifier_name)
    seq = steering_sweep(f, concept, alphas, mask)                        # [B, A, C, h, w]
    b, a = seq.shape[:2]
    out = inverter.invert(seq.reshape(b * a, *seq.shape[2:]), num_samples=num_samples, num_inference_steps=num_inference_steps,
                          seed=seed, progress=progress)
    s = out.shape[1]
    flat = out.reshape(b * a * s, *out.shape[2:])
    probs = class_probabilities(classifier, flat)
    alpha_t = torch.as_tensor([float(v) for v in alphas])
    table = pd.DataFrame({"image": torch.arange(b).repeat_interleave(a * s).numpy(),
                          "alpha": alpha_t.repeat_interleave(s).repeat(b).numpy(),
                          "sample": torch.arange(s).repeat(b * a).numpy(),
                          "concept": concept_readout(classifier, flat, concept).numpy(),
                          "predicted": probs.argmax(1).numpy()})
    if target_class is not None:
        table["p_target"] = probs[:, int(target_class)].numpy()
    if readout is not None:
        for factor, values in readout.values(flat).items():
            if np.ndim(values) == 1:
                table[f"readout_{factor}"] = values
    return table, out.view(b, a, s, *out.shape[2:])


def steering_summary(table, *, factors: Sequence[str] = (), factor_scale: Mapping[str, float] | None = None):
    """Monotonicity of the concept and drift of unrelated factors along ``alpha``, from :func:`steering_study`.

    Args:
        table: :func:`steering_study`'s table.
        factors: readout factors that should stay put (columns ``readout_<factor>``).
        factor_scale: typical spread of each numeric factor (e.g. its dataset standard deviation); drift is
            reported in these units. Circular factors (hue) are compared on the circle.

    Returns:
        pandas.Series: ``spearman_concept`` (Spearman of the concept readout with alpha, per image over its
        alphas and samples, averaged over images), ``spearman_target`` (the same for ``p_target``, if present), and ``drift_<factor>``: for numbers, the mean
        absolute change from the first to the last alpha (in ``factor_scale`` units); for categories, the
        share of reconstructions whose readout changed.

    Example:
        >>> steering_summary(table, factors=["hue", "background"], factor_scale={"hue": 0.29})
    """
    import pandas as pd

    from .composition import CIRCULAR, trend

    out = {"spearman_concept": float(trend(table, "alpha", "concept", by="image").mean())}
    if "p_target" in table:
        out["spearman_target"] = float(trend(table, "alpha", "p_target", by="image").mean())
    first, last = table[table.alpha == table.alpha.min()], table[table.alpha == table.alpha.max()]
    for factor in factors:
        col = f"readout_{factor}"
        if col not in table:
            raise AnalysisError(f"{col!r} is not in the table; pass readout= to steering_study with {factor!r}")
        u, v = first[col].to_numpy(), last[col].to_numpy()
        if u.dtype.kind in "OUSb":
            out[f"drift_{factor}"] = float(np.mean(u != v))
            continue
        d = np.abs(v.astype(float) - u.astype(float))
        if factor in CIRCULAR:
            period = 2 * np.pi if factor == "rotation" else 1.0
            d = np.minimum(d, period - d)
        out[f"drift_{factor}"] = float(d.mean() / (factor_scale or {}).get(factor, 1.0))
    return pd.Series(out)
