"""Factor preservation: which factors survive inversion, read off the reconstructions by probes trained on real
images through another classifier's layer (:class:`FactorReadout`, :func:`fit_factor_readout`,
:func:`preservation_table`).

Example:
    >>> readout = fit_factor_readout(vit, "blocks.2", x, ds.factor_table())
    >>> preservation_table(readout, x, ds.factor_table(), {"stages.3": s3, "stages.3-pooled": sp})
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..globalstate import import_keeping_environ
from ..tinyworld import FACTOR_PERIODS
from . import class_probabilities
from .factor_probes import PROBED_FACTORS, _head, _reducer, _score, _targets, probe_features

@dataclass
class FactorReadout:
    """Probes that read factors off images, trained on real images through a (readout) classifier's layer.

    Build it with :func:`fit_factor_readout`. Use a classifier other than the inverted one, so the readout does
    not share the inverted layer's blind spots.

    Attributes:
        classifier: the readout classifier.
        layer: its layer.
        grid: pooling grid of :func:`probe_features`.
        reducer: the fitted standardise + PCA step shared by all probes.
        probes: ``{factor: (kind, fitted head)}``.
        test_scores: ``{factor: score}`` on held-out real images: the ceiling for preservation scores.
    """

    classifier: nn.Module = field(repr=False)
    layer: str
    grid: int
    reducer: Any = field(repr=False)
    probes: dict[str, tuple[str, Any]] = field(repr=False)
    test_scores: dict[str, float]

    @property
    def factors(self) -> list[str]:
        return list(self.probes)

    def predict(self, images: Tensor) -> dict[str, np.ndarray]:
        """``Tensor[N, 3, H, W]`` -> ``{factor: predictions}`` (labels, numbers, or ``[N, 2]`` cos/sin)."""
        x = self.reducer.transform(probe_features(self.classifier, images, self.layer, grid=self.grid)[self.layer])
        return {f: probe.predict(x) for f, (_, probe) in self.probes.items()}

    def values(self, images: Tensor) -> dict[str, np.ndarray]:
        """Like :meth:`predict`, with circular factors turned back into their units (turns in [0, 1) for hues,
        radians in [0, 2 pi) for angles; :data:`~workbench.tinyworld.FACTOR_PERIODS`)."""
        out = {}
        for f, pred in self.predict(images).items():
            if self.probes[f][0] == "circular":
                turns = np.mod(np.arctan2(pred[:, 1], pred[:, 0]) / (2 * math.pi), 1.0)
                pred = turns * FACTOR_PERIODS[f]
            out[f] = pred
        return out

    def score(self, images: Tensor, table) -> dict[str, float]:
        """How well the readout of ``images`` matches the factors in ``table`` (accuracy or R^2 per factor)."""
        if len(table) != len(images):
            raise AnalysisError(f"the factor table has {len(table)} rows for {len(images)} images")
        pred = self.predict(images)
        return {f: _score(kind, _targets(table, f)[0], pred[f]) for f, (kind, _) in self.probes.items()}


def fit_factor_readout(classifier: nn.Module, layer: str, images: Tensor, table, *,
                       factors: Sequence[str] = PROBED_FACTORS, grid: int = 4, test_fraction: float = 0.25,
                       seed: int = 0) -> FactorReadout:
    """Train a :class:`FactorReadout` on real images and record its held-out scores.

    Args:
        classifier: the readout classifier (e.g. ``tinyworld-vit`` to read ``tinyworld-cnn`` inversions).
        layer: its layer (a middle layer keeps position and colour; e.g. ``"blocks.2"``).
        images: ``Tensor[N, 3, H, W]`` real images.
        table: their factor table.
        factors, grid, test_fraction, seed: as in :func:`factor_probes`.

    Example:
        >>> readout = fit_factor_readout(vit, "blocks.2", x, ds.factor_table())
        >>> readout.score(reconstructions, ds.factor_table())
    """
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.model_selection import train_test_split

    if len(table) != len(images):
        raise AnalysisError(f"the factor table has {len(table)} rows for {len(images)} images")
    feats = probe_features(classifier, images, layer, grid=grid)[layer]
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction, random_state=seed)
    reducer = _reducer(feats[idx_train], seed)
    x_train, x_test = reducer.transform(feats[idx_train]), reducer.transform(feats[idx_test])
    probes, scores = {}, {}
    for factor in factors:
        y, kind = _targets(table, factor)
        head = _head(kind, seed).fit(x_train, y[idx_train])
        probes[factor] = (kind, head)
        scores[factor] = _score(kind, y[idx_test], head.predict(x_test))
    return FactorReadout(classifier, layer, grid, reducer, probes, scores)


def preservation_table(readout: FactorReadout, originals: Tensor, table, samples: Mapping[str, Tensor], *,
                       shape_classifier: nn.Module | None = None):
    """Which factors survive inversion: the readout's score on each set of reconstructions.

    Args:
        readout: a fitted :class:`FactorReadout`.
        originals: ``Tensor[B, 3, H, W]``, the inverted images.
        table: their factor table (the truth).
        samples: ``{name: Tensor[B, S, 3, H, W]}``, e.g. one entry per inverted layer.
        shape_classifier: if given, the ``shape`` column is this classifier's accuracy against the true class
            (a whole classifier reads shape far better than a linear probe on an early layer); use one other
            than the inverted classifier.

    Returns:
        pandas.DataFrame indexed by ``"originals"`` then each name, one column per factor (accuracy or R^2
        against the originals' true factors). The ``originals`` row is the readout's ceiling.

    Example:
        >>> preservation_table(readout, x, ds.factor_table(), {"stages.3": s3, "stages.3-pooled": sp})
    """
    import pandas as pd

    def score(images: Tensor, truth) -> dict[str, float]:
        row = readout.score(images, truth)
        if shape_classifier is not None:
            labels = torch.as_tensor(truth["label"].to_numpy(copy=True))
            row["shape"] = float((class_probabilities(shape_classifier, images).argmax(1) == labels).float().mean())
        return row

    rows = {"originals": score(originals, table)}
    for name, out in samples.items():
        if out.ndim != 5 or out.shape[0] != len(originals):
            raise AnalysisError(f"samples[{name!r}] must be Tensor[{len(originals)}, S, 3, H, W], got {list(out.shape)}")
        s = out.shape[1]
        rows[name] = score(out.reshape(-1, *out.shape[2:]), table.loc[table.index.repeat(s)])
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "images"
    return frame
