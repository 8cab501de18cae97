"""Edits built from real maps matched on the tiny world's known factors, so that one factor changes and the rest stay.

The tiny world knows why each image looks as it does (:mod:`workbench.tinyworld`), so real maps can be paired on
everything but the factor to change. Two edits follow, both :class:`~workbench.analysis.steering.Edit` s:

* :func:`conditional_edit`, **additive**: ``f + alpha * d`` with ``d`` a factor-conditional mean difference of real
  maps, one per steered image: the mean map of the ``k`` real images nearest to the image in the matched factors
  *with the factor changed* (to a class or background, or moved by one standard deviation), minus the mean map of
  the ``k`` nearest *as it is*. For class: the star maps of objects where this object is and as large as it is, minus
  the maps of its own class there. The direction is the same kind as the class-mean difference, but local in the
  factors the map cannot ignore (where, how big), so what it adds is what a star there would add.
* :func:`matched_retrieval_edit`, a **swap**: towards the real map of the target class whose matched factors are
  nearest the image's (``alpha = 1`` is that map): nearest real map, matched on position and size.

Factors are compared in units of their spread over the bank (hue on the circle, in turns); categorical factors in
``same`` are held equal.

Example:
    >>> edit = conditional_edit(bank, bank_table, query_table, "shape", "star", layer="stages.3")
    >>> edit(f, 1.0).shape == f.shape                          # one direction per query image, alpha in its units
    >>> bigger = conditional_edit(bank, bank_table, query_table, "size", 1.0, layer="stages.3", same=("shape",))
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import AnalysisError
from .steering import Edit, towards_edit

#: What a class edit holds fixed by default: where the object is and how big.
MATCH_FACTORS = ("x", "y", "size")
#: The continuous factors a conditional edit can move (hue on the circle, in turns).
NUMERIC_FACTORS = ("x", "y", "size", "hue")
#: The categorical factors it can set.
CATEGORY_FACTORS = ("shape", "background")


def _coordinates(table, names: Sequence[str], spreads: dict[str, float]) -> np.ndarray:
    """``[N, D]`` coordinates of a factor table in spread units: one column per factor, two for hue (a point on a
    circle of circumference ``1 / spread``, so that small hue changes count as on the line)."""
    cols = []
    for n in names:
        v = table[n].to_numpy(dtype=float)
        if n == "hue":
            r = 1 / (2 * np.pi * spreads[n])
            cols += [r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v)]
        else:
            cols.append(v / spreads[n])
    return np.stack(cols, 1) if cols else np.zeros((len(table), 0))


def _nearest_mean(bank: Tensor, coords: np.ndarray, query: np.ndarray, allowed: np.ndarray, k: int) -> Tensor:
    """Per query row, the mean bank map of the ``k`` nearest allowed rows: ``allowed`` ``[B, N]`` booleans,
    ``query`` ``[B, D]``, ``coords`` ``[N, D]`` -> ``Tensor[B, C, h, w]``."""
    d = ((query[:, None, :] - coords[None]) ** 2).sum(-1)                        # [B, N]
    d = np.where(allowed, d, np.inf)
    short = np.isfinite(d).sum(1)
    if (short < k).any():
        raise AnalysisError(f"a steered image has only {int(short.min())} real maps to match among (k={k}); use a "
                            "larger bank or a smaller k")
    idx = torch.as_tensor(np.argsort(d, 1)[:, :k])
    return bank[idx].mean(1)


def _check_tables(bank: Tensor, bank_table, query_table, factor: str, names: Sequence[str]) -> None:
    if bank.ndim != 4 or len(bank) != len(bank_table):
        raise AnalysisError(f"the bank is Tensor[N, C, h, w] with one factor-table row per map; got "
                            f"{list(bank.shape)} and {len(bank_table)} rows")
    missing = [n for n in [factor, *names] if n not in bank_table or n not in query_table]
    if missing:
        raise AnalysisError(f"factors {missing} are not in both factor tables (TinyWorld.factor_table() has them)")
    if factor not in NUMERIC_FACTORS + CATEGORY_FACTORS:
        raise AnalysisError(f"factor {factor!r} cannot be steered here; use one of {NUMERIC_FACTORS + CATEGORY_FACTORS}")


def conditional_difference(bank: Tensor, bank_table, query_table, factor: str, to, *,
                           match: Sequence[str] = MATCH_FACTORS, same: Sequence[str] = (), k: int = 16) -> Tensor:
    """The factor-conditional mean difference of real maps for each query image (see the module docstring).

    Args:
        bank: ``Tensor[N, C, h, w]`` real maps (e.g. training images at the steered layer).
        bank_table: their factor table (``TinyWorld.factor_table()``), ``N`` rows.
        query_table: the steered images' factor table, ``B`` rows.
        factor: the factor to change: ``"shape"`` or ``"background"`` (``to`` is a category name), or ``"x"``,
            ``"y"``, ``"size"``, ``"hue"`` (``to`` is a step in spreads, e.g. ``1.0``).
        match: the continuous factors held near the image's (the changed one is left out of them).
        same: categorical factors held equal to the image's (e.g. ``("shape",)`` for an attribute edit).
        k: real maps averaged on each side.

    Returns:
        ``Tensor[B, C, h, w]``: add ``alpha`` times it to the image's map.
    """
    match = [m for m in match if m != factor]
    _check_tables(bank, bank_table, query_table, factor, [*match, *same])
    bank = bank.detach().float().cpu()
    spreads = {n: float(bank_table[n].std()) if n != "hue" else 12 ** -0.5 for n in {*match, factor} - {*CATEGORY_FACTORS}}
    fixed = np.ones((len(query_table), len(bank_table)), bool)
    for n in same:
        fixed &= query_table[n].to_numpy()[:, None] == bank_table[n].to_numpy()[None]
    if factor in CATEGORY_FACTORS:
        coords, query = _coordinates(bank_table, match, spreads), _coordinates(query_table, match, spreads)
        cat = bank_table[factor].to_numpy()
        here = fixed & (query_table[factor].to_numpy()[:, None] == cat[None])
        there = fixed & (cat[None] == to)
        return _nearest_mean(bank, coords, query, there, k) - _nearest_mean(bank, coords, query, here, k)
    names = [*match, factor]
    moved = query_table.copy()
    step = float(to) * spreads[factor]
    moved[factor] = np.mod(moved[factor] + step, 1.0) if factor == "hue" else moved[factor] + step
    coords = _coordinates(bank_table, names, spreads)
    return (_nearest_mean(bank, coords, _coordinates(moved, names, spreads), fixed, k)
            - _nearest_mean(bank, coords, _coordinates(query_table, names, spreads), fixed, k))


def conditional_edit(bank: Tensor, bank_table, query_table, factor: str, to, *, layer: str,
                     match: Sequence[str] = MATCH_FACTORS, same: Sequence[str] = (), k: int = 16,
                     name: str | None = None) -> Edit:
    """The additive edit ``f + alpha * d`` along :func:`conditional_difference` (one ``d`` per query image, in the
    query table's order; steer those images). ``alpha = 1`` adds one full difference: a class or background
    switch, or a move of ``to`` spreads.

    Example:
        >>> edit = conditional_edit(bank, bank_table, query_table, "shape", "star", layer="stages.3")
    """
    d = conditional_difference(bank, bank_table, query_table, factor, to, match=match, same=same, k=k)
    label = name or f"{factor} to {to}, matched on {'/'.join(m for m in match if m != factor)}"

    def apply(features: Tensor, alpha: float) -> Tensor:
        if features.shape != d.shape:
            raise AnalysisError(f"edit {label!r} holds one direction per image it was built for, {list(d.shape)}, "
                                f"but got maps {list(features.shape)}; steer the same images")
        return features + alpha * d.to(features)

    return Edit(label, layer, apply)


def matched_retrieval_edit(bank: Tensor, bank_table, query_table, factor: str, to, *, layer: str,
                           match: Sequence[str] = MATCH_FACTORS, name: str | None = None) -> Edit:
    """Towards the real map whose ``factor`` is ``to`` and whose ``match`` factors are nearest the image's (a swap at
    ``alpha = 1``): the nearest real map of the target class where this object is and as large as it is.

    Example:
        >>> edit = matched_retrieval_edit(bank, bank_table, query_table, "shape", "star", layer="stages.2")
    """
    _check_tables(bank, bank_table, query_table, factor, match)
    if factor not in CATEGORY_FACTORS:
        raise AnalysisError(f"matched retrieval sets a category ({CATEGORY_FACTORS}), not {factor!r}")
    spreads = {n: float(bank_table[n].std()) if n != "hue" else 12 ** -0.5 for n in match}
    allowed = np.broadcast_to(bank_table[factor].to_numpy()[None] == to, (len(query_table), len(bank_table)))
    target = _nearest_mean(bank.detach().float().cpu(), _coordinates(bank_table, match, spreads),
                           _coordinates(query_table, match, spreads), allowed, 1)
    return towards_edit(target, layer=layer, name=name or f"nearest real {to} map matched on {'/'.join(match)}")
