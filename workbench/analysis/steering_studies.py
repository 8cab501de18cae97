"""Controlled steering studies: invert edited maps along ``alpha`` and measure what the image shows.

A direction that flips the classifier's head need not change what the inverter draws, so steering is measured on
both sides. :func:`steering_study` sweeps an :class:`~workbench.analysis.steering.Edit` (or a concept) over
``alpha``, inverting every alpha of an image from the same noise, and records p(target) of the inverted image and of
the edited map; :func:`standard_edits` builds the methods compared in notebook 09, and :func:`steering_summary`,
:func:`steering_table` and :func:`steering_goal` compare them (``docs/steering.md`` has the measured table).

Example:
    >>> methods = standard_edits(cnn, x_test[:6], feats, y, 3, layer="stages.2")
    >>> table, samples = steering_study(cnn, inverter, x_test[:6], *methods["nearest real map, everywhere"],
    ...                                 target_class=3)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..inverters.sampler import Sampler, study_sampler
from . import class_probabilities, invert_edited, map_logits
from .concepts import Concept, concept_readout, mean_difference
from .steering import (Edit, MapPrior, direction_edit, fit_map_prior, manifold_edit, prototype, retrieval_edit,
                       transplant_edit)


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
                   progress: bool = True, judges="default", reader="default", sampler: Sampler | None = None):
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
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps), passed to ``inverter.invert`` and recorded in
            the table's ``attrs["sampler"]``.
        judges, reader: the independent graders (:func:`~workbench.judges.judge_readings`): ``"default"`` (the
            shipped judges and factor reader, for tiny-world images), a mapping / module, or ``None``. They, not
            the edited classifier, give ``judge_predicted``, ``judge_p_target`` (their mean probability of the
            target class) and ``read_<factor>`` (the factor reader's reading of each inversion).

    ``predicted``, ``p_target`` and ``concept`` are the *edited classifier's* own readings of the inversions: the
    model whose map was edited, so not a judgement of whether the image changed; report ``judge_p_target``.

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
                                      sampler=sampler, num_inference_steps=num_inference_steps, progress=progress)
        outs.append(out)
        distances.append(distance)
        map_probs.append(map_logits(classifier, images, inverter.layer, edited).softmax(-1))
    samples = torch.stack(outs, 1)                                             # [B, A, S, 3, H, W]
    table = _steering_rows(classifier, samples, alphas, torch.stack(map_probs, 1), edit.concept, target_class,
                           readout)
    add_judge_columns(table, samples.reshape(-1, *samples.shape[3:]), target_class, judges, reader)
    if distances[0] is not None:       # [B, A], one per edited map, repeated over its samples
        table["feature_distance"] = torch.stack(distances, 1).reshape(-1).repeat_interleave(num_samples).numpy()
    table.attrs["sampler"] = study_sampler(inverter, sampler, {"num_inference_steps": num_inference_steps})[0]
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


def add_judge_columns(table, flat: Tensor, target_class: int | None, judges, reader) -> None:
    """Put the independent graders' readings of the inversions ``flat`` ``[N, 3, H, W]`` (one per table row) into
    ``table``: ``judge_predicted``, ``judge_p_target`` (with a target class) and ``read_<factor>``."""
    from ..judges import judge_readings

    graded = judge_readings(flat, judges=judges, reader=reader)
    if "judge_predicted" in graded:
        table["judge_predicted"] = graded["judge_predicted"].numpy()
        if target_class is not None:
            table["judge_p_target"] = graded["judge_probs"][:, int(target_class)].numpy()
    for key, value in graded.items():
        if key.startswith("read_"):
            table[key] = value.numpy()


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
        pandas.DataFrame indexed by ``(method, alpha)`` with ``judge_p_target`` and ``judge_hit_rate`` (the
        independent judges' consensus on the inverted images, when the tables carry it: the reading that counts),
        ``p_target`` (the edited classifier itself on the inverted images),
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
            if "judge_p_target" in group:  # the independent judges' reading: the one that counts
                row["judge_p_target"] = float(group.judge_p_target.mean())
                row["judge_hit_rate"] = float((group.judge_p_target > 0.5).mean())
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
    the goal: mean ``judge_p_target`` (the independent judges' reading; ``p_target``, the edited classifier's own,
    only for tables without judges) of the inverted images above ``threshold`` with every ``drift_<factor>`` of
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
    key = "judge_p_target" if "judge_p_target" in table else "p_target"
    rows = {}
    for method, group in table.groupby(level="method"):
        group = group.droplevel("method")
        drift = group[cols].max(1)
        ok = group[drift <= tolerance]
        best = ok[key].idxmax()
        rows[method] = {"alpha": best, "p_target": ok.p_target[best], "p_target_map": ok.p_target_map[best],
                        "off_manifold_gap": ok.off_manifold_gap[best], "max_drift": float(drift[best]),
                        "reached": bool(ok[key][best] > threshold)}
        if key == "judge_p_target":
            rows[method]["judge_p_target"] = ok.judge_p_target[best]
    out = pd.DataFrame.from_dict(rows, orient="index").sort_values(key, ascending=False)
    out.index.name = "method"
    return out
