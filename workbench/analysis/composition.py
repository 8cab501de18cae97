"""Compositionality probes: is a layer's map a composite of parts that can be spliced, blended and read out?

Four probes, following FeatInv's "composite nature of the feature space":

* **spatial splicing** (:func:`splice`, :func:`splice_study`): one region of the map from image A, the rest
  from image B; the inversion should show A's object in A's region and B's object in B's region;
* **interpolation and arithmetic** (:func:`interpolate`, :func:`arithmetic`, :func:`sequence_study`): blend
  maps linearly, or compute ``A - B + C``, invert each step and score the class probabilities along it;
* **factor probes** (:func:`factor_probes`): linear probes from each layer to each known tiny-world factor,
  a layer x factor table of decodability;
* **factor preservation** (:func:`fit_factor_readout`, :func:`preservation_table`): which factors survive
  inversion, read out from the reconstructions by probes trained on real images.

Example:
    >>> a, b, info = make_splice_pairs(8, seed=0)
    >>> table, samples = splice_study(cnn, inverter, a, b, info["mask"], num_inference_steps=8)
    >>> factor_probes(cnn, x, ds.factor_table(), ["stages.1", "stages.3"])      # layers x factors
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_allocation, checked_int, seeded_generator
from ..errors import AnalysisError
from ..inverters.sampler import Sampler, study_sampler
from ..globalstate import import_keeping_environ
from ..tinyworld import FACTOR_PERIODS
from . import check_mask, class_probabilities, downsample_mask, factor_kind, factor_radians, invert_edited

#: Factors probed by default; ``position`` is ``x`` and ``y``.
PROBED_FACTORS = ("shape", "background", "hue", "size", "x", "y")


# ------------------------------------------------------------------------------------------ splicing
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


def region_probabilities(classifier: nn.Module, images: Tensor, mask: Tensor) -> Tensor:
    """Class probabilities of one region: outside ``mask`` the image is painted with the region's median colour.

    On a flat background the median colour is the background, so the crop shows only the objects inside
    the region, at their original place and scale.

    Args:
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        mask: ``Tensor[H, W]``, 1 inside the region.

    Returns:
        ``Tensor[N, K]``.

    Example:
        >>> region_probabilities(cnn, a, info["mask"]).argmax(1) == info["classes_a"]
    """
    m = check_mask(mask, images.shape[-2:]).bool()[0, 0]
    fill = images[:, :, m].median(dim=2).values[:, :, None, None]
    return class_probabilities(classifier, torch.where(m, images, fill))


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


# ------------------------------------------------------------------------------------------ sequences
def interpolate(features_a: Tensor, features_b: Tensor, num_steps: int | None = None, *,
                n_steps: int | None = None) -> Tensor:
    """Linear interpolation of maps: ``(1 - t) A + t B`` for ``t`` in ``linspace(0, 1, num_steps)``.

    The sweep is built into one buffer (no temporaries of its size); one that cannot fit in free memory is refused
    before anything is allocated, with its size in the message.

    Args:
        features_a, features_b: ``Tensor[B, C, h, w]``.
        num_steps: ``T >= 2``, an int.
        n_steps: the old name of ``num_steps``, still accepted (with a ``DeprecationWarning``).

    Returns:
        ``Tensor[B, T, C, h, w]``.

    Raises:
        AnalysisError: maps of two shapes, or ``num_steps < 2``. ArgumentTypeError: ``num_steps`` is not an int.
        ArgumentValueError: the sweep would not fit in free memory.

    Example:
        >>> seq = interpolate(fa, fb, 5)          # seq[:, 0] == fa, seq[:, -1] == fb
    """
    if features_a.shape != features_b.shape:
        raise AnalysisError(f"cannot interpolate maps of shapes {list(features_a.shape)} and {list(features_b.shape)}")
    if n_steps is not None:
        import warnings

        if num_steps is not None:
            raise AnalysisError("pass num_steps only (n_steps is its old name)")
        warnings.warn("interpolate(n_steps=) is now interpolate(num_steps=)", DeprecationWarning, stacklevel=2)
        num_steps = n_steps
    num_steps = checked_int(num_steps, "num_steps")
    if num_steps < 2:
        raise AnalysisError(f"num_steps must be >= 2, got {num_steps}")
    shape = (features_a.shape[0], num_steps, *features_a.shape[1:])
    check_allocation(shape, features_a.dtype, features_a.device, f"interpolate(num_steps={num_steps})")
    out = torch.empty(shape, dtype=features_a.dtype, device=features_a.device)
    t = torch.linspace(0, 1, num_steps, dtype=features_a.dtype, device=features_a.device)
    view = (1, -1) + (1,) * (features_a.ndim - 1)
    return torch.lerp(features_a[:, None].expand(shape), features_b[:, None].expand(shape), t.view(view), out=out)


def arithmetic(features_a: Tensor, features_b: Tensor, features_c: Tensor) -> Tensor:
    """``A - B + C`` on maps of one shape, ``Tensor[B, C, h, w]`` each (e.g. star - circle + blue circle).

    Example:
        >>> blue_star = arithmetic(f_red_star, f_red_circle, f_blue_circle)
    """
    if not features_a.shape == features_b.shape == features_c.shape:
        raise AnalysisError(f"maps must share one shape, got {list(features_a.shape)}, {list(features_b.shape)}, "
                            f"{list(features_c.shape)}")
    return features_a - features_b + features_c


@torch.no_grad()
def sequence_study(classifier: nn.Module, inverter, sequence: Tensor, *, classes: Sequence[int] | None = None,
                   endpoints: tuple[Tensor, Tensor] | None = None, num_samples: int = 1,
                   num_inference_steps: int | None = None, seed: int = 0, progress: bool = True,
                   sampler: Sampler | None = None):
    """Invert every step of a sequence of maps and score the class probabilities along it.

    The sweep is controlled: each step is inverted from the same noise (one ``inverter.invert`` call per step with
    the same ``seed``), so what changes along a sequence is the maps', not the sampler's.

    Args:
        classifier: the classifier the inverter was trained on.
        inverter: a FeatInv.
        sequence: ``Tensor[B, T, C, h, w]`` (from :func:`interpolate`, or stacked arithmetic results).
        classes: class indices whose probabilities get a column ``p_<k>`` (default: all classes).
        endpoints: ``(classes_start, classes_end)``, each ``Tensor[B]``: per-item classes whose probabilities go in
            columns ``p_start`` and ``p_end`` (e.g. the classes of A and B along an interpolation).
        num_samples, num_inference_steps, seed, progress: passed to ``inverter.invert``.
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps), passed to ``inverter.invert`` and recorded in
            the table's ``attrs["sampler"]``.

    Returns:
        ``(table, samples)``: one row per (item, step, sample) with ``item``, ``step``, ``t`` (in [0, 1]),
        ``sample``, ``predicted``, ``p_<k>`` (and ``p_start``, ``p_end``), the inverted classifier's readings, and
        the independent judges' consensus ``judge_predicted`` (and ``judge_p_start``, ``judge_p_end``; tiny-world
        images only); ``samples`` is ``Tensor[B, T, S, 3, H, W]``.

    Example:
        >>> table, samples = sequence_study(cnn, inv, interpolate(fa, fb, 5), classes=[3, 0])
    """
    import pandas as pd

    if sequence.ndim != 5:
        raise AnalysisError(f"sequence is Tensor[B, T, C, h, w], got {list(sequence.shape)}")
    b, t = sequence.shape[:2]
    # one call per step with the same seed: every step of an item starts from the same noise (controlled sweep)
    out = torch.stack([inverter.invert(sequence[:, i], num_samples=num_samples, num_inference_steps=num_inference_steps,
                                       sampler=sampler, seed=seed, progress=progress)
                       for i in range(t)], 1)                                                  # [B, T, S, 3, H, W]
    s = out.shape[2]
    probs = class_probabilities(classifier, out.reshape(b * t * s, *out.shape[3:]))
    grid = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(t), torch.arange(s), indexing="ij"), -1).reshape(-1, 3)
    table = pd.DataFrame({"item": grid[:, 0].numpy(), "step": grid[:, 1].numpy(),
                          "t": (grid[:, 1].float() / max(t - 1, 1)).numpy(), "sample": grid[:, 2].numpy(),
                          "predicted": probs.argmax(1).numpy()})
    for k in (range(probs.shape[1]) if classes is None else classes):
        table[f"p_{int(k)}"] = probs[:, int(k)].numpy()
    from ..judges import judge_readings

    judged = judge_readings(out.reshape(b * t * s, *out.shape[3:]), reader=None).get("judge_probs")
    if judged is not None:
        table["judge_predicted"] = judged.argmax(1).numpy()
    if endpoints is not None:
        item = torch.as_tensor(grid[:, 0])
        for col, cls in zip(("p_start", "p_end"), endpoints):
            cls = torch.as_tensor(cls).long().reshape(-1)
            if len(cls) != b:
                raise AnalysisError(f"endpoints hold {len(cls)} classes for {b} sequences")
            table[col] = probs.gather(1, cls[item][:, None])[:, 0].numpy()
            if judged is not None:
                table[f"judge_{col}"] = judged.gather(1, cls[item][:, None])[:, 0].numpy()
    table.attrs["sampler"] = study_sampler(inverter, sampler, {"num_inference_steps": num_inference_steps})[0]
    return table, out


def trend(table, x: str, y: str, by: str | None = None):
    """Spearman correlation of ``y`` with ``x`` (over all rows, or per group of ``by``).

    Returns:
        a float, or a pandas Series indexed by group. NaN where ``y`` is constant.

    Example:
        >>> trend(table, "t", "p_3", by="item")       # p(class 3) rises along each interpolation
    """
    from scipy.stats import spearmanr

    def rho(frame) -> float:
        if frame[y].nunique() < 2 or frame[x].nunique() < 2:
            return float("nan")
        return float(spearmanr(frame[x], frame[y]).statistic)

    if by is None:
        return rho(table)
    import pandas as pd

    return pd.Series({key: rho(group) for key, group in table.groupby(by)}, name=f"spearman({x}, {y})")


# ------------------------------------------------------------------------------------------ factor probes
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


# ------------------------------------------------------------------------------------------ preservation
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


def object_masks(table, size: int = 32) -> Tensor:
    """Disks covering each image's main object, from its factors: ``Tensor[N, 1, size, size]`` bool.

    The disk has the object's circumradius, so it covers the object and a little background.
    """
    ys, xs = torch.meshgrid((torch.arange(size) + 0.5) / size, (torch.arange(size) + 0.5) / size, indexing="ij")
    x = torch.as_tensor(table["x"].to_numpy(copy=True), dtype=torch.float32).view(-1, 1, 1)
    y = torch.as_tensor(table["y"].to_numpy(copy=True), dtype=torch.float32).view(-1, 1, 1)
    r = torch.as_tensor(table["size"].to_numpy(copy=True), dtype=torch.float32).view(-1, 1, 1)
    return (((xs - x) ** 2 + (ys - y) ** 2) <= r ** 2)[:, None]


def invariance_by_region(samples: Tensor, table):
    """Mean invariance-map value (spread across samples) on the object and on the background, per image.

    Args:
        samples: ``Tensor[B, S, 3, H, W]`` with ``S >= 2``.
        table: the inverted images' factor table (object position and size).

    Returns:
        pandas.DataFrame with ``object`` and ``background`` columns, one row per image.

    Example:
        >>> invariance_by_region(samples, ds.factor_table()).mean()
    """
    import pandas as pd

    from ..inverters.featinv import invariance_map

    spread = invariance_map(samples)                                 # [B, 1, H, W]
    m = object_masks(table, samples.shape[-1]).float()
    obj = (spread * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)
    bg = (spread * (1 - m)).sum((1, 2, 3)) / (1 - m).sum((1, 2, 3)).clamp_min(1)
    return pd.DataFrame({"object": obj.numpy(), "background": bg.numpy()}, index=table.index)
