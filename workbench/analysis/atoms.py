"""What a dictionary's atoms mean: scored against the tiny world's ground truth, and drawn in input space by
steering and inverting.

:func:`atom_factor_table` scores each atom of a :class:`~workbench.analysis.dictionary.Dictionary` against each
known factor on held-out images (AUC for categories, rank correlation for numbers, phase-matched for circular ones),
:func:`monosemanticity` and :func:`coverage` read that table, :func:`compare_dictionaries` puts methods side by side,
:func:`top_activating` and :func:`activation_overlay` show where an atom fires, and :func:`atom_steering_study`
steers maps along an atom, inverts them with FeatInv and measures with a
:class:`~workbench.analysis.composition.FactorReadout` whether the atom's factor changes.

Example:
    >>> sae = fit_dictionary(feats, 384, method="topk", layer="stages.3", seed=0)
    >>> table = atom_factor_table(sae, test_feats, test_ds.factor_table())     # atoms x factors
    >>> monosemanticity(table).sort_values("monosemanticity").tail()
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..inverters.sampler import Sampler
from ..globalstate import import_keeping_environ
from . import factor_kind, factor_radians
from .dictionary import Dictionary, _reference_logits, reconstruction_quality


#: Factors scored by default; ``position`` (where the atom fires against where the object is) is added.
SCORED_FACTORS = ("shape", "background", "distractor", "hue", "size", "x", "y", "rotation", "bg_value")


# ------------------------------------------------------------------------------------------ ground truth
def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, axis=0)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` ``[n, K]`` with ``b`` ``[n]`` or ``[n, K]``: ``[K]``, NaN
    where either side is constant."""
    ra, rb = _ranks(a), _ranks(b.reshape(len(b), -1))
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    den = np.sqrt((ra ** 2).sum(0) * (rb ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1), np.nan)


def _auc_gini(a: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``2 * AUC - 1`` of each column of ``a`` ``[n, K]`` for the boolean ``positive`` ``[n]`` (rank-biserial
    correlation: 1 = the atom is higher on every positive, 0 = chance); NaN without both kinds or for a
    constant column."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(a.shape[1], np.nan)
    r = _ranks(a)
    auc = (r[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where(np.ptp(a, axis=0) > 0, 2 * auc - 1, np.nan)


def _score_factor(pooled: np.ndarray, table, factor: str, train: np.ndarray, test: np.ndarray):
    """One factor's held-out score for every atom, and what the atom points at (chosen on ``train``).

    Returns:
        ``(scores [K], targets [K])``: ``targets`` is a category (categorical), +1/-1 (continuous) or a
        phase in radians (circular).
    """
    kind = factor_kind(factor)
    a_tr, a_te = pooled[train], pooled[test]
    if kind == "categorical":
        v = table[factor].to_numpy().astype(str)
        levels = np.unique(v[train])
        per = np.stack([_auc_gini(a_tr, v[train] == lv) for lv in levels])            # [L, K]
        best = np.nanargmax(np.where(np.isnan(per), -np.inf, np.abs(per)), 0)
        sign = np.sign(per[best, np.arange(len(best))])
        test_per = np.stack([_auc_gini(a_te, v[test] == lv) for lv in levels])
        return sign * test_per[best, np.arange(len(best))], [str(levels[i]) if s >= 0 else f"not {levels[i]}"
                                                              for i, s in zip(best, sign)]
    if kind == "continuous":
        v = table[factor].to_numpy().astype(float)
        sign = np.sign(np.nan_to_num(_rank_corr(a_tr, v[train])))
        sign[sign == 0] = 1
        return sign * _rank_corr(a_te, v[test]), sign.tolist()
    theta = factor_radians(table[factor].to_numpy(), factor)
    design = np.stack([np.cos(theta[train]), np.sin(theta[train]), np.ones(len(train))], 1)
    coef = np.linalg.lstsq(design, a_tr, rcond=None)[0]                                  # [3, K]
    phase = np.arctan2(coef[1], coef[0])
    return _rank_corr(a_te, np.cos(theta[test][:, None] - phase[None])), phase.tolist()


def _position_score(codes: np.ndarray, table, test: np.ndarray) -> np.ndarray:
    """``2 * AUC - 1`` of each atom's code over the grid cells of the test maps, positives being the cells
    under the object (covered at least half, or the most covered cell): 1 = fires only on the object,
    -1 = only on the background."""
    from .composition import object_masks

    h, w = codes.shape[-2:]
    masks = object_masks(table.iloc[test]).float()
    cover = torch.nn.functional.adaptive_avg_pool2d(masks, (h, w))[:, 0]
    top = cover.flatten(1).amax(1).view(-1, 1, 1)
    positive = ((cover >= 0.5) | (cover >= top)).flatten().numpy()
    flat = codes[test].transpose(0, 2, 3, 1).reshape(-1, codes.shape[1])
    return _auc_gini(flat, positive)


def atom_factor_table(dictionary: Dictionary, features: Tensor, factor_table, *,
                      factors: Sequence[str] = SCORED_FACTORS, test_fraction: float = 0.5, seed: int = 0,
                      layer: str | None = None):
    """How well each atom's activation predicts each known factor, on held-out images.

    An image's activation of an atom is its code's maximum over the map. The images are split in two
    (seeded): on the first half each atom gets what it points at (a category, a sign, a phase), and the
    second half scores it, so a score is not a selection effect. Every score is a rank correlation in
    [-1, 1], 0 at chance:

    * categories (``shape``, ``background``, ``distractor``): ``2 * AUC - 1`` for the atom's best category
      one-vs-rest (or "not" that category);
    * numbers (``size``, ``x``, ``y``, ``bg_value``): Spearman's rho, signed as on the first half;
    * circular factors (``hue``, ``rotation``): Spearman's rho with ``cos(angle - phase)``, the phase fitted
      on the first half by regressing the activation on ``cos`` and ``sin``, as
      :func:`~workbench.analysis.composition.factor_probes` encodes them;
    * ``position``: where on the grid the atom fires against where the object is: ``2 * AUC - 1`` of its codes
      over the grid cells of the held-out maps, positives being the cells under the object (1 = on the
      object, -1 = on the background).

    Args:
        dictionary: a fitted :class:`Dictionary` (or ``method="channels"`` for single channels).
        features: ``Tensor[N, C, h, w]`` maps of the images in ``factor_table``.
        factor_table: ``TinyWorld.factor_table()`` of those ``N`` images.
        factors: the factors to score (columns of ``factor_table``).
        test_fraction: the held-out share.
        seed: seeds the split.
        layer: the layer ``features`` came from; if given it must be the dictionary's.

    Returns:
        pandas.DataFrame indexed by ``atom`` with one column per factor, then ``position``; NaN for atoms that
        never fire on these maps. ``attrs["targets"]`` holds ``{factor: [what each atom points at]}`` and
        ``attrs["frequency"]`` each atom's share of firing positions.

    Raises:
        AnalysisError: a factor that is not a column of the table, or a table of another length.

    Example:
        >>> table = atom_factor_table(sae, test_feats, test_ds.factor_table(), factors=["shape", "hue", "x"])
        >>> table.loc[17]                  # one atom's scores
    """
    import pandas as pd

    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.model_selection import train_test_split

    missing = [f for f in factors if f not in factor_table]
    if missing:
        raise AnalysisError(f"factors {missing} are not in the factor table; its columns are {list(factor_table.columns)}")
    if len(factor_table) != len(features):
        raise AnalysisError(f"the factor table has {len(factor_table)} rows for {len(features)} maps; pass the "
                            f"table of the images the maps came from")
    codes = dictionary.encode(features, layer=layer).numpy()                       # [N, K, h, w]
    pooled = codes.max((2, 3))
    train, test = train_test_split(np.arange(len(codes)), test_size=test_fraction, random_state=seed)
    columns, targets = {}, {}
    for factor in factors:
        columns[factor], targets[factor] = _score_factor(pooled, factor_table, factor, train, test)
    columns["position"] = _position_score(codes, factor_table, test)
    out = pd.DataFrame(columns, index=pd.Index(np.arange(codes.shape[1]), name="atom"))
    fired = (codes[test] != 0).mean((0, 2, 3))
    out[fired == 0] = np.nan
    out.attrs["targets"] = targets
    out.attrs["frequency"] = fired.tolist()
    return out


def monosemanticity(table, *, exclude: Sequence[str] = ("position",)):
    """Each atom's best factor against its second best, from :func:`atom_factor_table`.

    Scores below 0 count as 0. ``position`` is left out by default: it says where an atom fires (every
    object atom fires on the object), not what it encodes.

    Returns:
        pandas.DataFrame indexed by atom: ``best_factor``, ``best``, ``second_factor``, ``second`` and
        ``monosemanticity`` = ``best - second`` (1: one factor perfectly and nothing else; 0: two factors
        equally, or none). NaN for atoms that never fire.

    Example:
        >>> monosemanticity(table).sort_values("monosemanticity", ascending=False).head()
    """
    import pandas as pd

    scores = table.drop(columns=[c for c in exclude if c in table]).clip(lower=0)
    values = scores.to_numpy(dtype=float)
    alive = ~np.isnan(values).all(1)
    filled = np.where(np.isnan(values), -1.0, values)
    order = np.argsort(-filled, 1)
    cols = np.asarray(scores.columns)
    rows = np.arange(len(values))
    best, second = filled[rows, order[:, 0]], filled[rows, order[:, 1]] if values.shape[1] > 1 else 0 * filled[:, 0]
    out = pd.DataFrame({"best_factor": np.where(alive, cols[order[:, 0]], None),
                        "best": np.where(alive, best, np.nan),
                        "second_factor": np.where(alive, cols[order[:, min(1, values.shape[1] - 1)]], None),
                        "second": np.where(alive, np.maximum(second, 0), np.nan)}, index=table.index)
    out["monosemanticity"] = out["best"] - out["second"]
    return out


def coverage(table, *, threshold: float = 0.5, margin: float = 0.2, exclude: Sequence[str] = ("position",)):
    """Which factors have at least one dedicated atom: one whose best factor it is, with a score of at least
    ``threshold`` and a monosemanticity of at least ``margin``.

    Returns:
        pandas.DataFrame indexed by factor: ``dedicated`` (how many atoms), ``best_atom`` and ``best_score``
        (the atom scoring highest on the factor, dedicated or not), ``covered`` (``dedicated > 0``).

    Example:
        >>> coverage(table).query("covered").index.tolist()          # e.g. ['shape', 'x', 'y']
    """
    import pandas as pd

    mono = monosemanticity(table, exclude=exclude)
    dedicated = mono[(mono.best >= threshold) & (mono.monosemanticity >= margin)]
    rows = {}
    for factor in [c for c in table.columns if c not in exclude]:
        col = table[factor]
        best_atom = col.idxmax() if col.notna().any() else None
        rows[factor] = {"dedicated": int((dedicated.best_factor == factor).sum()), "best_atom": best_atom,
                        "best_score": float(col.max()) if best_atom is not None else float("nan")}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "factor"
    out["covered"] = out["dedicated"] > 0
    return out


def compare_dictionaries(dictionaries: Mapping[str, Dictionary], features: Tensor, factor_table, *,
                         classifier: nn.Module | None = None, images: Tensor | None = None,
                         factors: Sequence[str] = SCORED_FACTORS, threshold: float = 0.5, margin: float = 0.2,
                         top: int = 10, seed: int = 0, progress: bool = True):
    """Methods side by side on one layer's held-out maps: reconstruction, sparsity, monosemanticity, coverage.

    Args:
        dictionaries: ``{name: Dictionary}`` fitted on one layer (include ``method="channels"`` as the baseline).
        features: ``Tensor[N, C, h, w]`` held-out maps; ``factor_table`` their factors.
        classifier, images: passed to :func:`reconstruction_quality` for ``logit_explained``.
        factors, seed: passed to :func:`atom_factor_table`; ``threshold``, ``margin`` to :func:`coverage`.
        top: ``top_monosemanticity`` averages the ``top`` most monosemantic atoms (a fair comparison between
            dictionaries of different sizes).
        progress: progress bar over dictionaries.

    Returns:
        ``(summary, tables)``: ``summary`` is a DataFrame indexed by name with ``method``, ``atoms``, ``alive``
        (atoms that fire on these maps), ``r2``, ``l0``, ``logit_explained`` (with a classifier),
        ``monosemanticity`` (mean over live atoms), ``top_monosemanticity``, ``covered`` (how many factors
        have a dedicated atom) and ``covered_factors``; ``tables`` maps each name to its
        :func:`atom_factor_table`.

    Example:
        >>> summary, tables = compare_dictionaries({"topk": sae, "channels": raw}, test_feats, table)
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows, tables = {}, {}
    layer = next((d.layer for d in dictionaries.values() if d.layer is not None), None)
    reference = (_reference_logits(classifier, images, layer, features)
                 if classifier is not None and images is not None and layer is not None else None)
    for name, dictionary in tqdm(dictionaries.items(), desc="dictionaries", disable=not progress, leave=False):
        quality = reconstruction_quality(dictionary, features, classifier=classifier, images=images,
                                         reference_logits=reference)
        table = atom_factor_table(dictionary, features, factor_table, factors=factors, seed=seed)
        mono = monosemanticity(table).monosemanticity.dropna()
        cov = coverage(table, threshold=threshold, margin=margin)
        rows[name] = {"method": dictionary.method, "atoms": dictionary.n_atoms, "alive": len(mono),
                      "r2": quality.r2, "l0": quality.l0, **({"logit_explained": quality.logit_explained}
                                                            if "logit_explained" in quality else {}),
                      "monosemanticity": float(mono.mean()),
                      "top_monosemanticity": float(mono.nlargest(top).mean()),
                      "covered": int(cov.covered.sum()), "covered_factors": ", ".join(cov.index[cov.covered])}
        tables[name] = table
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index.name = "dictionary"
    return summary, tables


# ------------------------------------------------------------------------------------------ input space
def top_activating(dictionary: Dictionary, features: Tensor, atom: int, *, n: int = 8,
                   layer: str | None = None) -> tuple[Tensor, Tensor]:
    """The maps on which an atom fires most (by its maximum over positions), with its code map on each.

    Args:
        dictionary: a fitted :class:`Dictionary`.
        features: ``Tensor[N, C, h, w]``.
        atom: the atom index.
        n: how many.
        layer: the layer ``features`` came from; if given it must be the dictionary's.

    Returns:
        ``(indices, maps)``: ``Tensor[n]`` into ``features``, strongest first, and ``Tensor[n, h, w]`` codes.

    Example:
        >>> idx, maps = top_activating(sae, test_feats, 17, n=6)
        >>> plot.atom_figure(x_test[idx], maps)
    """
    if isinstance(atom, bool) or not isinstance(atom, (int, np.integer)) or not 0 <= int(atom) < dictionary.n_atoms:
        raise AnalysisError(f"atom is an int in 0..{dictionary.n_atoms - 1}, got {atom!r}")
    codes = dictionary.encode(features, layer=layer)[:, int(atom)]                   # [N, h, w]
    idx = codes.flatten(1).amax(1).argsort(descending=True)[:n]
    return idx, codes[idx]


def activation_overlay(images: Tensor, maps: Tensor, *, opacity: float = 0.55) -> Tensor:
    """Images with an atom's code maps laid over them in red (upsampled, scaled by the largest code).

    Args:
        images: ``Tensor[T, 3, H, W]`` in [0, 1].
        maps: ``Tensor[T, h, w]`` codes (e.g. from :func:`top_activating`); negative codes count as 0.
        opacity: the overlay's opacity where the code is largest.

    Returns:
        ``Tensor[T, 3, H, W]`` in [0, 1].

    Example:
        >>> idx, maps = top_activating(sae, feats, 17); activation_overlay(x[idx], maps).shape
    """
    heat = torch.nn.functional.interpolate(maps[:, None].float().clamp_min(0), size=images.shape[-2:],
                                           mode="bilinear", align_corners=False)                # [T, 1, H, W]
    weight = opacity * heat / heat.max().clamp_min(1e-8)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return (1 - weight) * images.float().cpu() + weight * red


def _agreement(values: np.ndarray, factor: str, target) -> np.ndarray:
    """How much readout values agree with what an atom points at (see :func:`_score_factor`)."""
    kind = factor_kind(factor)
    if kind == "categorical":
        negate = isinstance(target, str) and target.startswith("not ")
        level = target[4:] if negate else str(target)
        hit = np.asarray(values).astype(str) == level
        return (~hit if negate else hit).astype(float)
    if kind == "continuous":
        return float(target) * np.asarray(values, dtype=float)
    angle = factor_radians(values, factor)
    return np.cos(angle - float(target))


@torch.no_grad()
def atom_steering_study(classifier: nn.Module, inverter, images: Tensor, dictionary: Dictionary, atom: int,
                        alphas: Sequence[float], *, scores, readout, factor: str | None = None,
                        where: str | tuple[int, int] = "everywhere", control: bool = True, num_samples: int = 2,
                        seed: int = 0, progress: bool = True, sampler: Sampler | None = None):
    """Draw an atom: steer maps along it, invert them with FeatInv, and measure whether its factor changes.

    The atom becomes a :class:`~workbench.analysis.concepts.Concept` (:meth:`Dictionary.concept`) and goes
    through :func:`~workbench.analysis.steering_studies.steering_study`. On each inversion the ``readout`` reads the
    factor the atom encodes by ``scores`` (its best factor unless ``factor`` is given); column ``target`` is
    how far that reading agrees with what the atom points at: 1/0 for its category, the signed value for a
    number, ``cos(angle - phase)`` for a circular factor. Large steps leave the maps the inverter was trained
    on, and that alone can move a readout (washed-out images read as pale backgrounds), so with ``control``
    the same study runs along a random direction of the same length, from the same noise.

    Args:
        classifier: the classifier the inverter and the dictionary belong to.
        inverter: a FeatInv for ``dictionary.layer``.
        images: ``Tensor[B, 3, H, W]`` in [0, 1], the images whose maps are steered.
        dictionary: a fitted :class:`Dictionary`.
        atom: the atom index.
        alphas: steps in units of the atom's typical contribution, starting at 0, e.g. ``[0, 1, 2, 4]``.
        scores: the dictionary's :func:`atom_factor_table`.
        readout: a :class:`~workbench.analysis.composition.FactorReadout` that reads ``factor`` (best fitted on
            another classifier, so it does not share the inverted layer's blind spots).
        factor: the factor to measure (default: the atom's best by :func:`monosemanticity`).
        where: steer at every position (``"everywhere"``), only where the object is (``"object"``,
            :func:`~workbench.analysis.steering.object_mask`: where an object atom fires naturally), or at one
            grid cell ``(row, col)``.
        control: also steer along a random direction (seeded by ``seed``) and report it.
        num_samples, seed, progress, sampler: passed to the inverter (``sampler``: a :class:`~workbench.Sampler`).

    Returns:
        ``(table, samples, summary)``: :func:`~workbench.analysis.steering_studies.steering_study`'s table plus
        ``target``; ``samples`` ``Tensor[B, A, S, 3, H, W]``; ``summary`` a Series with ``atom``, ``factor``,
        ``points_at``, ``score`` (the atom's table score), ``spearman_target`` (Spearman of ``target`` with
        alpha, per image, averaged), ``target_first`` and ``target_last`` (mean ``target`` at the smallest and
        largest alpha), ``spearman_concept``; with ``control``, ``control_<name>`` (:data:`_CONTROLLED`); for an atom
        of one shape, ``p_class_first``, ``p_class_last`` (the classifier's own mean probability of that shape on the
        inversions) and ``p_class_map_last`` (on the steered map itself, at the largest alpha: what the edit does to
        the classifier, before inversion). By graders that took no part in the inversion: ``judge_p_class_first`` /
        ``_last`` (the judges' p of that shape), ``reader_target_first`` / ``_last`` (the factor reader's ``target``).

    Raises:
        AnalysisError: a factor the readout does not read, a cell off the grid, or an unusable atom.

    Example:
        >>> table, samples, summary = atom_steering_study(cnn, inv, x[:4], sae, 17, [0, 1, 2, 4],
        ...                                               scores=scores, readout=readout, where="object")
        >>> summary.spearman_target, summary.control_spearman_target     # the atom's effect, a random one's
    """
    import pandas as pd

    from ..tinyworld import CLASSES
    from .concepts import Concept
    from .steering import direction_edit
    from .steering_studies import steering_study

    concept = dictionary.concept(atom)
    factor = factor or monosemanticity(scores).loc[atom, "best_factor"]
    if factor not in readout.factors:
        raise AnalysisError(f"the readout does not read {factor!r} (it reads {readout.factors}); fit it with "
                            f"fit_factor_readout(..., factors=[..., {factor!r}])")
    if not isinstance(where, str):
        where = _cell_mask(where, inverter.feature_shape[-2:])
    target = scores.attrs["targets"][factor][atom]
    target_class = CLASSES.index(target) if factor == "shape" and target in CLASSES else None
    kwargs = dict(readout=readout, target_class=target_class, num_samples=num_samples, seed=seed, progress=progress,
                  sampler=sampler)
    table, samples = steering_study(classifier, inverter, images, direction_edit(concept, where=where), alphas, **kwargs)
    summary = {"atom": int(atom), "factor": factor, "points_at": target, "score": float(scores.loc[atom, factor]),
               **_steering_effect(table, factor, target)}
    if control:
        g = torch.Generator().manual_seed(seed)
        random = torch.randn(dictionary.num_channels, generator=g)
        random = Concept(f"random-{atom}", concept.layer, concept.classifier_name, random / random.norm(),
                         (random / random.norm())[None], concept.scale, "random")
        ctrl = _steering_effect(steering_study(classifier, inverter, images, direction_edit(random, where=where),
                                               alphas, **kwargs)[0], factor, target)
        summary.update({f"control_{k}": v for k, v in ctrl.items() if k in _CONTROLLED})
    return table, samples, pd.Series(summary)


#: The random direction's effects :func:`atom_steering_study` reports (as ``control_<name>``).
_CONTROLLED = ("spearman_target", "target_last", "judge_p_class_last", "reader_target_last")


def _cell_mask(cell: tuple[int, int], grid: Sequence[int]) -> Tensor:
    """A ``Tensor[h, w]`` that is 1 at grid cell ``(row, col)`` only."""
    h, w = (int(v) for v in grid)
    row, col = cell
    if not (0 <= row < h and 0 <= col < w):
        raise AnalysisError(f"cell {cell} is off the {h}x{w} map grid; rows run 0..{h - 1}, columns 0..{w - 1}")
    mask = torch.zeros(h, w)
    mask[row, col] = 1
    return mask


def _steering_effect(table, factor: str, target) -> dict[str, float]:
    """Adds ``target`` to a steering table and summarises it along alpha (see :func:`atom_steering_study`)."""
    from .composition import trend

    table["target"] = _agreement(table[f"readout_{factor}"].to_numpy(), factor, target)
    first, last = table[table.alpha == table.alpha.min()], table[table.alpha == table.alpha.max()]
    out = {"spearman_target": float(trend(table, "alpha", "target", by="image").mean()),
           "target_first": float(first.target.mean()), "target_last": float(last.target.mean())}
    if "concept" in table:
        out["spearman_concept"] = float(trend(table, "alpha", "concept", by="image").mean())
    if "p_target" in table:
        out.update({"p_class_first": float(first.p_target.mean()), "p_class_last": float(last.p_target.mean()),
                    "p_class_map_last": float(last.p_target_map.mean())})
    if "judge_p_target" in table:  # the independent judges' consensus on the same inversions
        out.update({"judge_p_class_first": float(first.judge_p_target.mean()),
                    "judge_p_class_last": float(last.judge_p_target.mean())})
    reader = _reader_agreement(table, factor, target)
    if reader is not None:  # the factor reader's reading of the factor, where it reads it
        table["reader_target"] = reader
        first, last = table[table.alpha == table.alpha.min()], table[table.alpha == table.alpha.max()]
        out.update({"reader_target_first": float(first.reader_target.mean()),
                    "reader_target_last": float(last.reader_target.mean())})
    return out


def _reader_agreement(table, factor: str, target) -> np.ndarray | None:
    """:func:`_agreement` of the factor reader's ``read_<factor>`` column with what an atom points at: for the shape
    (class indices, named by :data:`~workbench.tinyworld.CLASSES`) and the numeric factors the reader reads in the
    factor's own units (hue, saturation, size, x, y); None for the others (rotation, which the reader reads under
    each shape's symmetry, background family, ``bg_value``, ...) or a table without the reader's columns."""
    from ..tinyworld import CLASSES

    col = f"read_{factor}"
    if col not in table or factor not in _READER_IN_OWN_UNITS:
        return None
    values = table[col].to_numpy()
    if factor == "shape":
        values = np.asarray(CLASSES, dtype=object)[values.astype(int)]
    return _agreement(values, factor, target)


#: The factors whose factor-reader reading compares directly with an atom's target (:func:`_reader_agreement`).
_READER_IN_OWN_UNITS = ("shape", "hue", "saturation", "size", "x", "y")
