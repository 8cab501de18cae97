"""Steering graded by independent eyes, against a random control of equal norm, with intervals over images.

A steering sweep counts only when models that took no part in it see the change. :func:`judged_sweep` edits each
image's map along ``alpha``, and beside every edit it inverts a **random control**: the map moved by a random
direction (one per image, seeded) of the same norm as the edit's step at that alpha, inverted from the same noise.
Every inversion is read by the shipped judges (their mean p(target)) and the factor reader, never by the edited
classifier. :func:`judged_summary` turns the sweep into one row per (arm, alpha) with bootstrap intervals over the
images: the judges' p(target), the target factor's move and the other factors' drift in units of their spread.

The inversions come from ``inverter.invert`` (FeatInv as it samples), or, with ``edit_scale``, from
:func:`~workbench.analysis.score_steering.score_guided_invert` (guidance between the edited and the original map).

Example:
    >>> table, samples = judged_sweep(cnn, inv, x[:48], edit, [0, 1, 2], target_class=3)
    >>> judged_summary(table, target_class=3)          # p_target [lo, hi] and drifts, edit vs control, per alpha
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..inverters.sampler import Sampler
from .steering import Edit

#: The factors :func:`judged_summary` reports a change of (the factor reader's), and how: class-like factors as
#: "changed" (0/1), the rest in spreads.
CHANGE_FACTORS = ("shape", "background", "x", "y", "size", "hue")
#: The two arms of a sweep.
ARMS = ("edit", "control")


def random_control(edit: Edit, *, seed: int = 0) -> Edit:
    """The negative control of ``edit``: each map moved along its own random direction (Gaussian over
    ``[C, h, w]``, drawn from ``seed``, the same at every alpha) by exactly the norm of the edit's step
    ``edit(f, alpha) - f`` of that map at that alpha. ``alpha = 0`` is the identity, as for the edit.

    Example:
        >>> ctrl = random_control(edit, seed=0); (ctrl(f, 2) - f).flatten(1).norm(dim=1)   # == the edit's norms
    """
    def apply(features: Tensor, alpha: float) -> Tensor:
        g = torch.Generator().manual_seed(int(seed))
        r = torch.randn(features.shape, generator=g).to(features)
        step = (edit(features, alpha) - features).flatten(1).norm(dim=1)
        r = r / r.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return features + step.view(-1, 1, 1, 1) * r

    return Edit(f"random control of {edit.name}", edit.layer, apply)


def _invert(inverter, f: Tensor, edited: Tensor, edit_scale: float | None, classifier, **kwargs) -> Tensor:
    """One arm's inversion at one alpha: FeatInv's own (``edit_scale`` None) or score-guided."""
    from . import invert_edited
    from .score_steering import score_guided_invert

    if edit_scale is None:
        return invert_edited(inverter, f, edited, **kwargs)[0]
    return score_guided_invert(inverter, f, edited, edit_scale=edit_scale, classifier=classifier, **kwargs)


def _rows(samples: Tensor, alphas: Sequence[float], edit_norms: Tensor, target_class, judges, reader):
    """The table of :func:`judged_sweep` from ``samples`` ``[B, 2, A, S, 3, H, W]`` and the step norms ``[B, A]``."""
    import pandas as pd

    from .steering_studies import add_judge_columns

    b, n_arms, a, s = samples.shape[:4]
    idx = np.stack(np.meshgrid(np.arange(b), np.arange(n_arms), np.arange(a), np.arange(s), indexing="ij"), -1)
    idx = idx.reshape(-1, 4)
    table = pd.DataFrame({"image": idx[:, 0], "arm": np.asarray(ARMS)[idx[:, 1]],
                          "alpha": np.asarray([float(v) for v in alphas])[idx[:, 2]], "sample": idx[:, 3],
                          "step_norm": edit_norms.numpy()[idx[:, 0], idx[:, 2]]})
    add_judge_columns(table, samples.reshape(-1, *samples.shape[-3:]), target_class, judges, reader)
    return table


@torch.no_grad()
def judged_sweep(classifier: nn.Module, inverter, images: Tensor, edit: Edit, alphas: Sequence[float], *,
                 target_class: int | None = None, edit_scale: float | None = None, control: bool = True,
                 num_samples: int = 1, seed: int = 0, control_seed: int = 0, sampler: Sampler | None = None,
                 judges="default", reader="default", batch_size: int = 64, progress: bool = True):
    """Sweep ``edit`` over ``alphas`` and its :func:`random_control` beside it, inverting every map of an image from
    the same noise, and read each inversion with the judges and the factor reader.

    Args:
        classifier: the model whose map is edited (only its maps are used: nothing here reads its head).
        inverter: a FeatInv of ``edit.layer``.
        images: ``Tensor[B, 3, H, W]`` in [0, 1] (48 or more for the intervals to mean much).
        edit: an :class:`~workbench.analysis.steering.Edit` with ``alpha = 0`` the identity.
        alphas: the sweep, starting at 0.
        target_class: the class whose judged probability goes in ``judge_p_target``.
        edit_scale: ``None`` inverts with ``inverter.invert``; a number ``w`` inverts with
            :func:`~workbench.analysis.score_steering.score_guided_invert` at that scale (both arms).
        control: also run the random control (arm ``"control"``; without it the table has the edit's rows only).
        num_samples, seed, sampler, batch_size, progress: the inversion's; every alpha and both arms use ``seed``.
        control_seed: the random directions' seed.
        judges, reader: the graders (:func:`~workbench.judges.judge_readings`; ``"default"``: the shipped ones).

    Returns:
        ``(table, samples)``: one row per (image, arm, alpha, sample) with ``step_norm`` (the norm of the map's
        change, equal in both arms), ``judge_predicted``, ``judge_p_target`` and ``read_<factor>``; ``samples`` is
        ``Tensor[B, arms, A, S, 3, H, W]``.

    Raises:
        AnalysisError: an edit of another layer than the inverter's, or a sweep that does not start at 0.

    Example:
        >>> table, samples = judged_sweep(cnn, inv, x[:48], edit, [0, 1, 2], target_class=3, edit_scale=3.0)
    """
    from ..hooks import extract_features

    if edit.layer != inverter.layer:
        raise AnalysisError(f"edit {edit.name!r} edits {edit.layer!r} maps but the inverter inverts "
                            f"{inverter.layer!r}; build the edit at {inverter.layer!r}")
    if not alphas or float(alphas[0]) != 0:
        raise AnalysisError(f"alphas={list(alphas)}: a judged sweep starts at 0, the unsteered inversion")
    f = extract_features(classifier, images, inverter.layer).float().cpu()
    arms = [edit, random_control(edit, seed=control_seed)] if control else [edit]
    kwargs = dict(num_samples=num_samples, seed=seed, sampler=sampler, batch_size=batch_size, progress=progress)
    outs, norms = [], []
    for arm in arms:
        per_alpha = []
        for a in alphas:
            edited = arm(f, a)
            if arm is edit:
                norms.append((edited - f).flatten(1).norm(dim=1))
            if outs and float(a) == 0:   # alpha 0 is the unedited map in both arms: the edit's inversion
                per_alpha.append(outs[0][:, 0])
                continue
            per_alpha.append(_invert(inverter, f, edited, edit_scale, classifier, **kwargs))
        outs.append(torch.stack(per_alpha, 1))                                    # [B, A, S, 3, H, W]
    samples = torch.stack(outs, 1)                                                # [B, arms, A, S, 3, H, W]
    table = _rows(samples, alphas, torch.stack(norms, 1), target_class, judges, reader)
    table.attrs.update({"edit": edit.name, "layer": inverter.layer, "edit_scale": edit_scale,
                        "sampler": Sampler.build(sampler).describe()})
    return table, samples


def factor_changes(table, factors: Sequence[str] = CHANGE_FACTORS):
    """Add ``change_<factor>``: each inversion's reading minus that of the unsteered inversion of the same image and
    sample (alpha 0, identical in both arms), for class-like factors 1.0 where the reading changed, for the others
    signed, in the factor's spread (:func:`workbench.factor_reader.spread`; hue on the circle). Returns ``table``."""
    from ..factor_reader import spread

    base = table[(table.alpha == 0) & (table.arm == ARMS[0])].set_index(["image", "sample"])
    for f in factors:
        col = f"read_{f}"
        if col not in table:
            raise AnalysisError(f"{col!r} is not in the table; run judged_sweep with the factor reader (reader=)")
        ref = base.loc[list(zip(table.image, table["sample"])), col].to_numpy()
        now = table[col].to_numpy()
        if f in ("shape", "background", "distractor"):
            table[f"change_{f}"] = (now != ref).astype(float)
        else:
            d = now.astype(float) - ref.astype(float)
            if f == "hue":
                d = (d + 0.5) % 1.0 - 0.5
            table[f"change_{f}"] = d / spread(f)
    return table


def bootstrap_mean(per_image: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of one value per image and its 95 % percentile bootstrap interval over images.

    Example:
        >>> bootstrap_mean(np.array([0.1, 0.9, 0.5]))          # (0.5, ..., ...)
    """
    v = np.asarray(per_image, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise AnalysisError(f"bootstrap_mean takes one value per image, a non-empty 1-D array; got shape {v.shape}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _cell(table, column: str, how: str, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Bootstrap over images of one column's per-image mean (``how``: ``"mean"``, ``"abs"`` or ``"changed"``)."""
    v = table[column].astype(float)
    if how == "abs":
        v = v.abs()
    per_image = v.groupby(table.image).mean().to_numpy()
    return bootstrap_mean(per_image, n_boot=n_boot, seed=seed)


def judged_summary(table, *, factor: str | None = None, to=None,
                   preserve: Sequence[str] = ("x", "y", "size"), n_boot: int = 1000, seed: int = 0):
    """One row per (arm, alpha) of a :func:`judged_sweep` table, each value with its 95 % bootstrap interval over
    images (columns ``<value>``, ``<value>_lo``, ``<value>_hi``).

    Args:
        table: :func:`judged_sweep`'s table.
        factor: the factor the edit is meant to move (``None`` for a class edit graded by ``judge_p_target``):
            ``moved`` is its mean signed change in spreads, or for ``"shape"``/``"background"`` the share of
            inversions the reader reads as ``to``.
        to: with a categorical ``factor``, the category aimed at.
        preserve: factors that should stay: ``drift_<f>`` is the mean absolute change in spreads, or the share
            changed for class-like factors.
        n_boot, seed: the bootstrap's.

    Returns:
        pandas.DataFrame indexed by ``(arm, alpha)`` with ``p_target`` (the judges' mean p(target), when the table
        has it), ``moved`` (with ``factor``), ``drift_<f>`` and ``max_drift`` (the largest of the continuous
        factors' drifts), each with ``_lo`` / ``_hi``.

    Example:
        >>> judged_summary(table, factor="size", preserve=("x", "y", "hue")).loc[("edit", 2.0), "moved"]
    """
    import pandas as pd

    wanted = [f for f in [*preserve, *([factor] if factor else [])] if f"change_{f}" not in table]
    if wanted:
        factor_changes(table, wanted)
    if factor in ("shape", "background"):
        if to is None:
            raise AnalysisError(f"factor={factor!r} needs to=, the category aimed at (e.g. 'star', 'stripes')")
        table = table.assign(moved=(table[f"read_{factor}"].to_numpy() == _category(factor, to)).astype(float))
    elif factor is not None:
        table = table.assign(moved=table[f"change_{factor}"])
    rows = []
    for (arm, alpha), group in table.groupby(["arm", "alpha"], sort=False):
        row = {"arm": arm, "alpha": float(alpha), "images": int(group.image.nunique())}
        values = ([("p_target", "judge_p_target", "mean")] if "judge_p_target" in group else []) + (
            [("moved", "moved", "mean")] if factor is not None else []) + [
            (f"drift_{f}", f"change_{f}", "abs") for f in preserve]
        for name, col, how in values:
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _cell(group, col, how, n_boot, seed)
        cont = [f"change_{f}" for f in preserve if f not in ("shape", "background", "distractor")]
        if cont:
            per_image = group[cont].abs().groupby(group.image).mean().max(1).to_numpy()
            row["max_drift"], row["max_drift_lo"], row["max_drift_hi"] = bootstrap_mean(per_image, n_boot=n_boot,
                                                                                        seed=seed)
        rows.append(row)
    return pd.DataFrame(rows).set_index(["arm", "alpha"])


def _category(factor: str, to) -> int:
    """The reader's index of category ``to`` of ``factor`` (a name or an index)."""
    from ..tinyworld import BACKGROUNDS, CLASSES

    names = CLASSES if factor == "shape" else BACKGROUNDS
    if isinstance(to, str):
        if to not in names:
            raise AnalysisError(f"{to!r} is not a {factor}; expected one of {names}")
        return names.index(to)
    return int(to)
