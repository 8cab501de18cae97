"""Factor probes: linear decodability of each known tiny-world factor from each layer's pooled maps, on held-out
images (:func:`factor_probes`, a layer x factor table), and the probe machinery (:func:`probe_features`, the shared
standardise + PCA step and the per-kind heads and scores) that :mod:`.preservation` reuses.

Example:
    >>> factor_probes(cnn, x, ds.factor_table(), ["stages.1", "stages.3"])      # layers x factors
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..globalstate import import_keeping_environ
from . import factor_kind, factor_radians

#: Factors probed by default; ``position`` is ``x`` and ``y``.
PROBED_FACTORS = ("shape", "background", "hue", "size", "x", "y")


@torch.no_grad()
def probe_features(classifier: nn.Module, images: Tensor, layers: str | Sequence[str], *, grid: int = 4,
                   batch_size: int = 256) -> dict[str, np.ndarray]:
    """Layers' maps pooled to a ``grid x grid`` map, as mean and standard deviation per cell, flattened.

    Pooling to a fixed grid keeps coarse position (so x and y stay decodable) and makes layers of different
    resolution comparable in size; the per-cell standard deviation keeps texture (stripes, noise) that a
    mean alone would average away. All layers come from one forward pass per batch.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        images: ``Tensor[N, 3, H, W]``.
        layers: a layer name or several.
        grid: output grid size (a map smaller than the grid is kept as is).

    Returns:
        ``{layer: array[N, 2 * C * g * g]}`` float32.

    Example:
        >>> probe_features(cnn, x, ["stages.0", "stages.3"])["stages.3"].shape      # (N, 6144)
    """
    from ..hooks import run_with_cache

    names = [layers] if isinstance(layers, str) else list(layers)
    dev = next(classifier.parameters()).device
    parts: dict[str, list] = {n: [] for n in names}
    for s in range(0, len(images), batch_size):
        _, cache = run_with_cache(classifier, images[s:s + batch_size].to(dev), names)
        for n in names:
            f = cache[n].float()
            if f.ndim != 4:
                raise AnalysisError(f"layer {n!r} gives {list(f.shape)}, not a spatial map")
            g = min(grid, f.shape[-1])
            mean = torch.nn.functional.adaptive_avg_pool2d(f, g)
            sq = torch.nn.functional.adaptive_avg_pool2d(f * f, g)
            std = (sq - mean * mean).clamp_min(0).sqrt()
            parts[n].append(torch.cat([mean.flatten(1), std.flatten(1)], 1).cpu())
    return {n: torch.cat(parts[n]).numpy() for n in names}


def _reducer(x: np.ndarray, seed: int, dims: int = 128):
    """Standardise, then PCA to ``dims`` components, fitted once per layer and shared by every factor's head."""
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(dims, x.shape[0] - 1, x.shape[1]))
    return make_pipeline(StandardScaler(), PCA(n_components=k, svd_solver="randomized", random_state=seed)).fit(x)


def _targets(table, factor: str) -> tuple[np.ndarray, str]:
    """Probe targets for one factor and its kind: ``"categorical"``, ``"circular"`` or ``"continuous"``."""
    if factor not in table:
        raise AnalysisError(f"factor {factor!r} is not a column of the factor table; columns: {list(table.columns)}")
    v, kind = table[factor].to_numpy(), factor_kind(factor)
    if kind == "categorical":
        return v.astype(str), kind
    if kind == "circular":
        theta = factor_radians(v, factor)
        return np.stack([np.cos(theta), np.sin(theta)], 1), kind
    return v.astype(float), kind


def _head(kind: str, seed: int):
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.linear_model import LogisticRegression, RidgeCV

    if kind == "categorical":
        return LogisticRegression(C=0.1, max_iter=1000, random_state=seed)
    return RidgeCV(alphas=np.logspace(-2, 4, 13))


def _score(kind: str, truth: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy for categories, R^2 otherwise (summed over cos/sin for circular factors)."""
    if kind == "categorical":
        return float(np.mean(truth == pred))
    truth = truth.reshape(len(truth), -1)
    pred = pred.reshape(len(pred), -1)
    sst = ((truth - truth.mean(0)) ** 2).sum()
    return float(1 - ((truth - pred) ** 2).sum() / max(sst, 1e-12))


def _chance(kind: str, truth: np.ndarray) -> float:
    if kind == "categorical":
        _, counts = np.unique(truth, return_counts=True)
        return float(counts.max() / counts.sum())
    return 0.0


def factor_probes(classifier: nn.Module, images: Tensor, table, layers: Sequence[str], *,
                  factors: Sequence[str] = PROBED_FACTORS, grid: int = 4, test_fraction: float = 0.3,
                  seed: int = 0, progress: bool = True):
    """Linear decodability of each factor from each layer, on held-out images.

    Each layer's pooled maps (:func:`probe_features`) are standardised and reduced by PCA to 128 dimensions
    (fitted on the training split, shared by all factors); then a logistic regression reads categories
    (score: accuracy) and a ridge regression reads numbers (score: R^2; circular factors such as hue are
    regressed as ``(cos, sin)``).

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        images: ``Tensor[N, 3, H, W]``.
        table: the images' factor table (``TinyWorld.factor_table()``), one row per image.
        layers: layer names, e.g. ``["stages.0", "stages.1", "stages.2", "stages.3"]``.
        factors: factor columns to probe; default :data:`PROBED_FACTORS`.
        grid: maps are pooled to ``grid x grid`` (:func:`probe_features`).
        test_fraction: held-out share.
        seed: seeds the split and the probes.
        progress: progress bar over layers.

    Returns:
        pandas.DataFrame indexed by layer with one column per factor (test score); ``attrs["chance"]`` holds
        the chance level of each factor (majority share for categories, 0 for R^2).

    Example:
        >>> probes = factor_probes(cnn, x, ds.factor_table(), ["stages.1", "stages.3"], factors=["shape", "x"])
    """
    import pandas as pd
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.model_selection import train_test_split
    from tqdm.auto import tqdm

    if len(table) != len(images):
        raise AnalysisError(f"the factor table has {len(table)} rows for {len(images)} images")
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction, random_state=seed)
    rows, chance = {}, {}
    feats = probe_features(classifier, images, list(layers), grid=grid)
    for layer in tqdm(layers, desc="probes", disable=not progress):
        reducer = _reducer(feats[layer][idx_train], seed)
        x_train, x_test = reducer.transform(feats[layer][idx_train]), reducer.transform(feats[layer][idx_test])
        row = {}
        for factor in factors:
            y, kind = _targets(table, factor)
            head = _head(kind, seed).fit(x_train, y[idx_train])
            row[factor] = _score(kind, y[idx_test], head.predict(x_test))
            chance[factor] = _chance(kind, y[idx_test])
        rows[layer] = row
    out = pd.DataFrame.from_dict(rows, orient="index")[list(factors)]
    out.index.name = "layer"
    out.attrs["chance"] = chance
    return out
