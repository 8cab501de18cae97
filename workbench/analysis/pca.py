"""PCA of feature maps: each spatial position of a layer's map is one sample of a ``C``-dimensional vector.

Fitting treats a set of maps ``Tensor[N, C, h, w]`` as ``N * h * w`` vectors in ``R^C``. The top three
components of any map then give an RGB picture of it, the explained variance says how many directions
matter, and reconstructing maps from their top-k components (then inverting them with FeatInv) shows
what the leading directions carry.

Example:
    >>> feats = wb.extract_features(cnn, x, "stages.3")                   # [N, 192, 4, 4]
    >>> pca = fit_pca(feats, layer="stages.3")
    >>> pca.rgb(feats[:4], size=32).shape                                 # [4, 3, 32, 32]
    >>> table, samples = component_inversion(cnn, inverter, pca, x[:8], ks=[1, 4, 16, 192])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..checks import checked_int, seeded_generator
from ..errors import AnalysisError
from ..inverters.sampler import Sampler, study_sampler
from ..globalstate import import_keeping_environ
from . import invert_edited, map_logits, score_inversions

_INCREMENTAL_ABOVE = 200_000   # positions; above this fit_pca switches to IncrementalPCA


def _positions(features: Tensor) -> Tensor:
    """``Tensor[N, C, h, w]`` -> ``Tensor[N*h*w, C]`` float64 on the CPU."""
    if features.ndim != 4:
        raise AnalysisError(f"features are Tensor[N, C, h, w], got shape {list(features.shape)}")
    return features.detach().double().cpu().permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@dataclass
class FeaturePCA:
    """A PCA of a layer's spatial feature vectors. Build it with :func:`fit_pca`.

    Attributes:
        layer: the layer the maps came from (``None`` if unknown).
        feature_shape: ``(C, h, w)`` of the fitted maps.
        mean: ``Tensor[C]`` mean feature vector.
        components: ``Tensor[K, C]`` orthonormal rows, by decreasing variance.
        explained_variance: ``Tensor[K]``.
        explained_variance_ratio: ``Tensor[K]``, fractions of the total variance (sum to 1 when ``K == C``).
        rgb_range: ``Tensor[2, 3]`` 1st and 99th percentile of the top-3 projections on the fitted data,
            which fixes the colour scale of :meth:`rgb` across images.
    """

    layer: str | None
    feature_shape: tuple[int, int, int]
    mean: Tensor
    components: Tensor
    explained_variance: Tensor
    explained_variance_ratio: Tensor
    rgb_range: Tensor = field(repr=False)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def __repr__(self) -> str:
        top = self.explained_variance_ratio[:3].tolist()
        return (f"FeaturePCA(layer={self.layer!r}, feature_shape={self.feature_shape}, n_components={self.n_components}, "
                f"top-3 variance ratio={[round(v, 3) for v in top]})")

    def _check(self, features: Tensor) -> None:
        if features.ndim != 4 or features.shape[1] != self.feature_shape[0]:
            raise AnalysisError(f"this PCA was fitted on maps with {self.feature_shape[0]} channels"
                                f"{f' at {self.layer!r}' if self.layer else ''}, got features of shape "
                                f"{list(features.shape)}; fit a PCA on this layer's maps")

    def _k(self, k: int | None) -> int:
        k = self.n_components if k is None else int(k)
        if not 0 <= k <= self.n_components:
            raise AnalysisError(f"k={k} but this PCA has {self.n_components} components; use 0 <= k <= "
                                f"{self.n_components} (fit with more n_components for more)")
        return k

    def components_for(self, share: float) -> int:
        """The fewest leading components whose explained variance adds up to at least ``share`` of the total.

        Reads ``explained_variance_ratio`` (``Tensor[K]``, one fraction per fitted component); no maps needed.

        Args:
            share: the fraction of the variance to reach, in ``(0, 1]``.

        Returns:
            ``k`` in ``[1, K]`` with ``explained_variance_ratio[:k].sum() >= share`` and ``k`` as small as that
            allows; pass it to :meth:`reconstruct` to keep that share of the variance.

        Raises:
            AnalysisError: ``share`` outside ``(0, 1]``, or more than the fitted components explain (fit with
            more ``n_components``).

        Example:
            >>> pca = fit_pca(feats, layer="stages.3")                  # feats: Tensor[N, 192, 4, 4]
            >>> k = pca.components_for(0.9)                              # an int in [1, 192]
            >>> pca.reconstruct(feats, k).shape                          # [N, 192, 4, 4]
        """
        if not 0 < share <= 1:
            raise AnalysisError(f"share is a fraction of the variance in (0, 1], got {share}")
        cumulative = self.explained_variance_ratio.cumsum(0)                          # [K]
        k = int((cumulative < share).sum()) + 1
        if k > self.n_components:
            if float(cumulative[-1]) < share - 1e-4:
                raise AnalysisError(f"the {self.n_components} fitted components explain {float(cumulative[-1]):.3f} of "
                                    f"the variance, less than share={share}; fit with more n_components")
            k = self.n_components        # rounding: all components fall a hair short of 1
        return k

    def project(self, features: Tensor, k: int | None = None) -> Tensor:
        """Coordinates on the top-k components: ``Tensor[B, C, h, w]`` -> ``Tensor[B, k, h, w]``."""
        self._check(features)
        k = self._k(k)
        x = features.float().permute(0, 2, 3, 1) - self.mean.to(features.device)
        z = x @ self.components[:k].T.to(features.device)
        return z.permute(0, 3, 1, 2).contiguous()

    def reconstruct(self, features: Tensor, k: int | None = None) -> Tensor:
        """The map rebuilt from its top-k components (``k = 0`` gives the mean map everywhere).

        Args:
            features: ``Tensor[B, C, h, w]``.
            k: number of leading components kept (default: all fitted).

        Returns:
            ``Tensor[B, C, h, w]``, float32 on the features' device.

        Example:
            >>> pca.reconstruct(feats, k=4)          # the part of feats in the top-4 subspace, plus the mean
        """
        k = self._k(k)
        z = self.project(features, k).permute(0, 2, 3, 1)
        x = z @ self.components[:k].to(features.device) + self.mean.to(features.device)
        return x.permute(0, 3, 1, 2).contiguous()

    def rgb(self, features: Tensor, *, size: int | Sequence[int] | None = None, components: Sequence[int] = (0, 1, 2)) -> Tensor:
        """Three components of each map as an RGB image, on the colour scale fixed at fitting time.

        Args:
            features: ``Tensor[B, C, h, w]``.
            size: upsample (bilinear) to this ``H`` or ``(H, W)``; default keeps ``(h, w)``.
            components: which three components become red, green and blue.

        Returns:
            ``Tensor[B, 3, H, W]`` in [0, 1].

        Example:
            >>> plot.pca_rgb_figure(x[:4], pca.rgb(feats[:4], size=32))
        """
        comps = list(components)
        if len(comps) != 3 or any(not 0 <= c < self.n_components for c in comps):
            raise AnalysisError(f"components {comps} must be three indices below n_components={self.n_components}")
        z = self.project(features)[:, comps].float().cpu()
        lo, hi = self._range(comps, features)
        img = ((z - lo.view(1, 3, 1, 1)) / (hi - lo).clamp_min(1e-8).view(1, 3, 1, 1)).clamp(0, 1)
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            img = torch.nn.functional.interpolate(img, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        return img

    def _range(self, comps: list[int], features: Tensor) -> tuple[Tensor, Tensor]:
        if comps == [0, 1, 2]:
            return self.rgb_range[0], self.rgb_range[1]
        z = self.project(features)[:, comps].float().cpu().transpose(0, 1).reshape(3, -1)
        return torch.quantile(z, 0.01, dim=1), torch.quantile(z, 0.99, dim=1)


def fit_pca(features: Tensor | Iterable[Tensor], *, layer: str | None = None, n_components: int | None = None,
            incremental: bool | None = None, batch_size: int = 8192, seed: int = 0) -> FeaturePCA:
    """Fit a PCA over the spatial positions of a layer's maps.

    Args:
        features: ``Tensor[N, C, h, w]``, or an iterable of such batches (always fitted incrementally, so a
            large dataset never sits in memory at once; see :func:`fit_layer_pca`).
        layer: the layer name, recorded so later calls can check it.
        n_components: components to keep (default all ``C``); more than ``C`` is an error.
        incremental: use scikit-learn's ``IncrementalPCA``; default: only above 200k positions or for
            an iterable.
        batch_size: positions per ``partial_fit`` call when incremental.
        seed: seeds the shuffling of positions before incremental fitting and the randomised solver.

    Returns:
        FeaturePCA.

    Raises:
        AnalysisError: ``n_components`` above the channel count, or maps that are not 4-D.

    Example:
        >>> pca = fit_pca(wb.extract_features(cnn, x, "stages.2"), layer="stages.2", n_components=32)
    """
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.decomposition import PCA, IncrementalPCA

    batch_size = checked_int(batch_size, "batch_size", minimum=1)
    batches = [features] if isinstance(features, Tensor) else features
    first = None
    model = None
    rng = seeded_generator(seed)
    for batch in batches:
        x = _positions(batch)
        if first is None:
            first = batch
            c = batch.shape[1]
            k = c if n_components is None else checked_int(n_components, "n_components")
            if not 1 <= k <= c:
                raise AnalysisError(f"n_components={n_components} but the maps have {c} channels; ask for at most {c}")
            use_incremental = (not isinstance(features, Tensor)) or (
                incremental if incremental is not None else len(x) > _INCREMENTAL_ABOVE)
            if not use_incremental:
                if len(x) < k:
                    raise AnalysisError(f"{len(x)} positions cannot give {k} components; pass more maps")
                model = PCA(n_components=k, svd_solver="full", random_state=seed).fit(x.numpy())
                sample = x
                break
            model = IncrementalPCA(n_components=k)
            sample = []
        elif batch.shape[1:] != first.shape[1:]:
            raise AnalysisError(f"all maps must share one shape; got {list(first.shape[1:])} and {list(batch.shape[1:])}")
        x = x[torch.randperm(len(x), generator=rng)]
        for s in range(0, len(x), batch_size):
            chunk = x[s:s + batch_size]
            if len(chunk) < k:   # IncrementalPCA needs at least k rows per call; drop a short tail
                continue
            model.partial_fit(chunk.numpy())
        sample.append(x[:2048])
    if first is None:
        raise AnalysisError("fit_pca got no features")
    if isinstance(sample, list):
        if not hasattr(model, "components_"):
            raise AnalysisError(f"too few positions for {k} incremental components; pass larger batches")
        sample = torch.cat(sample)
    mean = torch.as_tensor(model.mean_, dtype=torch.float32)
    comps = torch.as_tensor(model.components_, dtype=torch.float32)
    z = ((sample.float() - mean) @ comps[:3].T)
    rgb_range = torch.stack([torch.quantile(z, 0.01, dim=0), torch.quantile(z, 0.99, dim=0)])
    if rgb_range.shape[1] < 3:
        rgb_range = torch.cat([rgb_range, torch.zeros(2, 3 - rgb_range.shape[1])], 1)
    return FeaturePCA(layer=layer, feature_shape=tuple(int(v) for v in first.shape[1:]), mean=mean, components=comps,
                      explained_variance=torch.as_tensor(model.explained_variance_, dtype=torch.float32),
                      explained_variance_ratio=torch.as_tensor(model.explained_variance_ratio_, dtype=torch.float32),
                      rgb_range=rgb_range)


def fit_layer_pca(classifier: nn.Module, images: Tensor, layer: str, *, n_components: int | None = None,
                  batch_size: int = 256, seed: int = 0, progress: bool = True) -> FeaturePCA:
    """Capture ``layer`` over ``images`` batch by batch and fit an incremental PCA, never holding all maps.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        images: ``Tensor[N, 3, H, W]`` in [0, 1] (or a :class:`~workbench.TinyWorld`-sized tensor).
        layer: layer name.
        n_components: components to keep (default all channels).
        batch_size: images per forward pass.
        seed: seeds the shuffling of positions.
        progress: show a progress bar.

    Example:
        >>> pca = fit_layer_pca(cnn, wb.TinyWorld("train", size=2048).images(), "stages.2")
    """
    from tqdm.auto import tqdm

    from ..hooks import extract_features

    starts = range(0, len(images), batch_size)
    maps = (extract_features(classifier, images[s:s + batch_size], layer).cpu()
            for s in tqdm(starts, desc=f"PCA {layer}", disable=not progress))
    return fit_pca(maps, layer=layer, n_components=n_components, seed=seed)


@torch.no_grad()
def component_inversion(classifier: nn.Module, inverter, pca: FeaturePCA, images: Tensor, ks: Sequence[int], *,
                        num_samples: int = 1, num_inference_steps: int | None = None, seed: int = 0, progress: bool = True,
                        sampler: Sampler | None = None):
    """Rebuild each image's map from its top-k components for every ``k``, and invert it.

    Args:
        classifier: the classifier the inverter was trained on.
        inverter: a FeatInv for ``pca.layer``.
        pca: fitted on that layer.
        images: ``Tensor[B, 3, H, W]`` in [0, 1].
        ks: numbers of components to keep, e.g. ``[1, 2, 4, 8, 16, C]``.
        num_samples, num_inference_steps, seed, progress: passed to ``inverter.invert``.
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps), passed to ``inverter.invert`` and recorded in
            the table's ``attrs["sampler"]``.

    Returns:
        ``(table, samples)``: a DataFrame with one row per ``k``: ``k``, ``variance`` (cumulative explained
        ratio), ``map_cosine`` (truncated map vs full map), ``map_agreement`` (the classifier run on the
        truncated map predicts the original class), ``inversion_agreement`` (the inversion is classified as
        the original), ``inversion_cosine`` (the inversion's map vs the *full* map), ``feature_distance`` (the
        truncated maps' mean distance from the inverter's training maps, :func:`~workbench.analysis.invert_edited`;
        absent without feature statistics); and ``samples`` ``{k: Tensor[B, S, 3, H, W]}``.

    Example:
        >>> table, samples = component_inversion(cnn, inverter, pca, x[:8], ks=[1, 8, 192], num_inference_steps=8)
    """
    import pandas as pd

    from ..hooks import extract_features

    if pca.layer is not None and pca.layer != inverter.layer:
        raise AnalysisError(f"the PCA was fitted at {pca.layer!r} but the inverter inverts {inverter.layer!r}")
    full = extract_features(classifier, images, inverter.layer).float().cpu()
    base_logits = map_logits(classifier, images, inverter.layer, full)
    truth = base_logits.argmax(1)
    cumulative = torch.cat([torch.zeros(1), pca.explained_variance_ratio.cumsum(0)])
    rows, samples = [], {}
    for k in ks:
        trunc = pca.reconstruct(full, k)
        cos = torch.nn.functional.cosine_similarity(trunc.flatten(1), full.flatten(1), dim=1)
        logits = map_logits(classifier, images, inverter.layer, trunc)
        out, distance = invert_edited(inverter, full, trunc, num_samples=num_samples, seed=seed, sampler=sampler,
                                      num_inference_steps=num_inference_steps, progress=progress)
        scores = score_inversions(classifier, inverter.layer, full, out, reference_logits=base_logits)
        samples[int(k)] = out
        rows.append({"k": int(k), "variance": float(cumulative[pca._k(k)]), "map_cosine": float(cos.mean()),
                     "map_agreement": float((logits.argmax(1) == truth).float().mean()),
                     "inversion_agreement": float(scores.agrees.mean()),
                     "inversion_cosine": float(scores.feature_cosine.mean()),
                     **({} if distance is None else {"feature_distance": float(distance.mean())})})
    table = pd.DataFrame(rows)
    table.attrs["sampler"] = study_sampler(inverter, sampler, {"num_inference_steps": num_inference_steps})[0]
    return table, samples
