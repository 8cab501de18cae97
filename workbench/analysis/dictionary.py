"""Concept dictionaries: sparse autoencoders and friends on a layer's spatial feature vectors, scored against
the tiny world's ground truth, and drawn in input space by steering and inverting.

A :class:`Dictionary` holds ``K`` atoms in a layer's channel space. Every position of every map is one
vector ``x`` (``C`` numbers); the dictionary codes it as ``K`` numbers ``z`` and decodes it linearly,
``x_hat = z @ atoms + mean``. :func:`fit_dictionary` fits one by any of these methods:

==============  ==========================================================================================
method          what it is
==============  ==========================================================================================
``topk``        overcomplete's ``TopKSAE``: the ``top_k`` largest codes per vector survive (Gao et al. 2024)
``batchtopk``   overcomplete's ``BatchTopKSAE``: ``top_k`` codes per vector on average over a batch
``jumprelu``    overcomplete's ``JumpSAE``: a learnt threshold per atom, an L0 penalty (``sparsity``)
``archetypal``  overcomplete's ``RATopKSAE``: atoms stay near the convex hull of the data (Fel et al. 2025)
``pca``         principal directions (scikit-learn), as in :func:`~workbench.analysis.concepts.discover_concepts`
``nmf``         non-negative factors of the rectified vectors (scikit-learn), as there
``kmeans``      spherical k-means: each vector is coded by its nearest centroid alone, as there
``channels``    the baseline: one atom per channel, the code is the channel's activation
==============  ==========================================================================================

The SAEs see standardised vectors (channel means removed, divided by one overall scale); their atoms are
stored back in feature units, so every method decodes the same way.

:func:`atom_factor_table` scores each atom against each known factor on held-out images (AUC for
categories, rank correlation for numbers, phase-matched for circular ones), :func:`monosemanticity` and
:func:`coverage` read that table, :func:`compare_dictionaries` puts methods side by side, and
:func:`atom_steering_study` steers maps along an atom, inverts them with FeatInv and measures with a
:class:`~workbench.analysis.composition.FactorReadout` whether the atom's factor changes.

Example:
    >>> feats = wb.extract_features(cnn, x, "stages.3")                        # Tensor[N, 192, 4, 4]
    >>> sae = fit_dictionary(feats, 384, method="topk", layer="stages.3", seed=0)
    >>> sae.encode(feats[:2]).shape                                            # [2, 384, 4, 4]
    >>> table = atom_factor_table(sae, test_feats, test_ds.factor_table())     # atoms x factors
    >>> monosemanticity(table).sort_values("monosemanticity").tail()
"""
from __future__ import annotations

import importlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AnalysisError
from ..tinyworld import CATEGORICAL_FACTORS, FACTOR_PERIODS
from .concepts import Concept
from .factorization import DECOMPOSITIONS, FITTERS

SAE_METHODS = ("topk", "batchtopk", "jumprelu", "archetypal")
SKLEARN_METHODS = DECOMPOSITIONS
#: Every ``method`` :func:`fit_dictionary` accepts.
DICTIONARY_METHODS = SAE_METHODS + SKLEARN_METHODS + ("channels",)

#: Factors scored by default; ``position`` (where the atom fires against where the object is) is added.
SCORED_FACTORS = ("shape", "background", "distractor", "hue", "size", "x", "y", "rotation", "bg_value")


def _overcomplete():
    """Import ``overcomplete``. Its 0.3.0 calls ``matplotlib.cm.get_cmap`` at import, which matplotlib 3.9
    removed; the alias is put there for the import only and taken away again."""
    import matplotlib
    import matplotlib.cm as cm

    added = not hasattr(cm, "get_cmap")
    if added:
        cm.get_cmap = matplotlib.colormaps.get_cmap
    try:
        return importlib.import_module("overcomplete")
    except ImportError as err:
        raise AnalysisError("the SAE methods need the `overcomplete` package: pip install overcomplete") from err
    finally:
        if added:
            del cm.get_cmap


# ------------------------------------------------------------------------------------------ dictionary
@dataclass
class Dictionary:
    """``K`` atoms in a layer's channel space, with the encoder that codes a map on them.

    Attributes:
        method: how it was fitted (one of :data:`DICTIONARY_METHODS`).
        layer: the layer it was fitted at (checked on use).
        classifier_name: the classifier it was fitted on (``None`` if unknown).
        atoms: ``Tensor[K, C]`` in feature units; ``decode`` is ``codes @ atoms + mean``.
        mean: ``Tensor[C]``, what an all-zero code decodes to (the empty dictionary).
        atom_scale: ``Tensor[K]``, an atom's typical contribution when it fires on the fitting data (mean
            ``|code| * |atom|`` over the positions where it is non-zero); 0 for atoms that never fired.
        stats: on the fitting data: ``r2``, ``l0`` (non-zero codes per position), ``dead`` (atoms never
            non-zero), ``positions`` (vectors fitted on).
        model: the fitted overcomplete module or scikit-learn estimator (``None`` for ``channels``).
    """

    method: str
    layer: str | None
    classifier_name: str | None
    atoms: Tensor = field(repr=False)
    mean: Tensor = field(repr=False)
    atom_scale: Tensor = field(repr=False)
    stats: dict[str, float]
    model: Any = field(repr=False, default=None)
    _encode: Callable[[Tensor], Tensor] | None = field(repr=False, default=None)

    @property
    def n_atoms(self) -> int:
        return int(self.atoms.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.atoms.shape[1])

    @property
    def alive(self) -> list[int]:
        """Atoms that fired at least once on the fitting data."""
        return torch.nonzero(self.atom_scale > 0).flatten().tolist()

    def __repr__(self) -> str:
        return (f"Dictionary({self.method!r}, layer={self.layer!r}, classifier={self.classifier_name!r}, "
                f"atoms={self.n_atoms}, channels={self.num_channels}, r2={self.stats.get('r2', float('nan')):.3f}, "
                f"l0={self.stats.get('l0', float('nan')):.1f}, dead={self.stats.get('dead', 0):.0f})")

    def check(self, features: Tensor, *, layer: str | None = None, classifier_name: str | None = None) -> None:
        """Raise :class:`AnalysisError` unless ``features`` (``[B, C, h, w]``) can come from this dictionary's
        layer (the same refusal as :meth:`~workbench.analysis.concepts.Concept.check`)."""
        if layer is not None and self.layer is not None and layer != self.layer:
            raise AnalysisError(f"this {self.method} dictionary was fitted at layer {self.layer!r}, not {layer!r}; "
                                f"fit one on {layer!r} maps (or encode {self.layer!r} maps)")
        if classifier_name is not None and self.classifier_name is not None and classifier_name != self.classifier_name:
            raise AnalysisError(f"this dictionary was fitted on {self.classifier_name!r}, not {classifier_name!r}")
        if not isinstance(features, Tensor) or features.ndim != 4:
            got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise AnalysisError(f"features are Tensor[B, C, h, w] maps, got {got}; add a batch axis to one map")
        if features.shape[1] != self.num_channels:
            raise AnalysisError(f"this dictionary has {self.num_channels} channels (fitted at {self.layer!r}) but the "
                                f"features have shape {list(features.shape)}; use maps from {self.layer!r}")

    @torch.no_grad()
    def encode(self, features: Tensor, *, layer: str | None = None, batch_size: int = 65536) -> Tensor:
        """Codes of every position: ``Tensor[B, C, h, w]`` -> ``Tensor[B, K, h, w]`` on the CPU.

        Args:
            features: maps from the dictionary's layer.
            layer: the layer they came from; if given it must be the dictionary's.
            batch_size: vectors coded at once.

        Example:
            >>> sae.encode(feats[:2]).shape          # [2, K, h, w]
        """
        self.check(features, layer=layer)
        b, c, h, w = features.shape
        x = _vectors(features)
        codes = torch.cat([self._encode(x[s:s + batch_size]).float() for s in range(0, len(x), batch_size)]) \
            if len(x) else x.new_zeros(0, self.n_atoms)
        return codes.view(b, h, w, self.n_atoms).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Maps from codes: ``Tensor[B, K, h, w]`` -> ``Tensor[B, C, h, w]`` (``codes @ atoms + mean`` per position).

        Example:
            >>> sae.decode(torch.zeros(1, sae.n_atoms, 4, 4))      # every position is the mean vector
        """
        if not isinstance(codes, Tensor) or codes.ndim != 4 or codes.shape[1] != self.n_atoms:
            got = list(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise AnalysisError(f"codes are Tensor[B, {self.n_atoms}, h, w] (one channel per atom), got {got}")
        b, _, h, w = codes.shape
        x = _vectors(codes) @ self.atoms + self.mean
        return x.view(b, h, w, self.num_channels).permute(0, 3, 1, 2).contiguous()

    def reconstruct(self, features: Tensor, *, layer: str | None = None) -> Tensor:
        """``decode(encode(features))``: ``Tensor[B, C, h, w]`` -> ``Tensor[B, C, h, w]``."""
        return self.decode(self.encode(features, layer=layer))

    def concept(self, atom: int, *, name: str | None = None) -> Concept:
        """Atom ``atom`` as a :class:`~workbench.analysis.concepts.Concept`, so ``steer``, ``steering_study`` and
        the explorer take it unchanged.

        Its direction is the unit atom and its ``scale`` the atom's typical contribution when it fires
        (:attr:`atom_scale`), so ``alpha = 1`` adds one ordinary firing of the atom.

        Raises:
            AnalysisError: an atom index out of range, an atom that never fired (no scale to steer by), or a
                dictionary fitted without ``layer=``.

        Example:
            >>> steer(feats, sae.concept(17), 2.0, layer="stages.3")
        """
        if isinstance(atom, bool) or not isinstance(atom, (int, np.integer)) or not 0 <= int(atom) < self.n_atoms:
            raise AnalysisError(f"atom is an int in 0..{self.n_atoms - 1}, got {atom!r}")
        if self.layer is None:
            raise AnalysisError("this dictionary has no layer; fit it with fit_dictionary(..., layer=...) to make concepts")
        atom = int(atom)
        scale = float(self.atom_scale[atom])
        if scale <= 0:
            raise AnalysisError(f"atom {atom} never fired on the maps the dictionary was fitted on, so it has no "
                                f"typical strength to steer by; pick one of dictionary.alive")
        direction = self.atoms[atom].float() / self.atoms[atom].norm().clamp_min(1e-12)
        return Concept(name or f"{self.method}-{atom}", self.layer, self.classifier_name, direction, direction[None],
                       scale, self.method)

    def concepts(self, atoms: Sequence[int] | None = None) -> list[Concept]:
        """:meth:`concept` for each of ``atoms`` (default: every live atom)."""
        return [self.concept(a) for a in (self.alive if atoms is None else atoms)]


def _vectors(maps: Tensor) -> Tensor:
    """``Tensor[B, C, h, w]`` -> ``Tensor[B * h * w, C]`` float32 on the CPU, position-major."""
    return maps.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def _r2(x: Tensor, x_hat: Tensor, mean: Tensor) -> float:
    """Share of the variance around the per-channel ``mean`` explained: 1 - SSE / SST."""
    return float(1 - (x - x_hat).pow(2).sum() / (x - mean).pow(2).sum().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------ fitting
def _check_fit(features: Tensor, n_atoms: int, method: str, top_k: int) -> None:
    if method not in DICTIONARY_METHODS:
        hint = " (overcomplete's TopK, BatchTopK, JumpReLU and relaxed archetypal SAEs)"
        raise AnalysisError(f"method is one of {DICTIONARY_METHODS}, got {method!r}; {SAE_METHODS} come from "
                            f"overcomplete{hint}, {SKLEARN_METHODS} from scikit-learn, and 'channels' is the raw "
                            f"baseline")
    if not isinstance(features, Tensor) or features.ndim != 4:
        got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise AnalysisError(f"features are Tensor[N, C, h, w] maps (each position is one vector), got {got}; "
                            f"for pooled Tensor[N, C] vectors use features[..., None, None]")
    c = features.shape[1]
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 1:
        raise AnalysisError(f"n_atoms is the dictionary size, an int >= 1, got {n_atoms!r}")
    if method in ("pca", "nmf") and n_atoms > c:
        raise AnalysisError(f"{method} finds at most as many atoms as channels: n_atoms={n_atoms} > {c}; "
                            f"use an SAE method for an overcomplete dictionary")
    if method == "channels" and n_atoms != c:
        raise AnalysisError(f"'channels' has one atom per channel: pass n_atoms={c}")
    if method in ("topk", "batchtopk", "archetypal") and not 1 <= top_k <= n_atoms:
        raise AnalysisError(f"top_k={top_k} codes per position must be in 1..n_atoms={n_atoms}")


def fit_dictionary(features: Tensor, n_atoms: int, *, method: str = "topk", seed: int = 0, layer: str | None = None,
                   classifier_name: str | None = None, top_k: int = 8, sparsity: float = 3e-3, steps: int = 1500,
                   batch_size: int = 512, lr: float = 1e-3, max_positions: int = 100_000,
                   progress: bool = True) -> Dictionary:
    """Fit a dictionary of ``n_atoms`` atoms on the spatial feature vectors of a layer.

    Each position of each map is one vector. The SAE methods train with Adam on seeded minibatches
    (``steps`` steps of ``batch_size`` vectors) from a seeded initialisation. Fitting runs on the CPU on one
    thread (faster for matrices this small); the global RNG and thread settings are restored afterwards.

    Args:
        features: ``Tensor[N, C, h, w]`` maps at ``layer``.
        n_atoms: dictionary size ``K`` (``>= 1``; ``<= C`` for ``pca``/``nmf``; ``C`` for ``channels``).
        method: one of :data:`DICTIONARY_METHODS` (see the module docstring).
        seed: seeds subsampling, initialisation, minibatches and the scikit-learn solvers.
        layer, classifier_name: recorded, checked on use and passed on to concepts.
        top_k: codes kept per position (``topk``, ``archetypal``; the average per position for ``batchtopk``).
        sparsity: weight of the L0 penalty of ``jumprelu`` (per position, against the per-entry MSE).
        steps, batch_size, lr: SAE training.
        max_positions: vectors used for fitting (a seeded random subset beyond this).
        progress: progress bar over SAE training steps.

    Returns:
        a :class:`Dictionary` whose ``stats`` hold R², L0 and dead atoms on the fitting vectors.

    Raises:
        AnalysisError: an unknown method, ``n_atoms < 1``, features that are not ``[N, C, h, w]``.

    Example:
        >>> sae = fit_dictionary(feats, 384, method="batchtopk", layer="stages.3", classifier_name="tinyworld-cnn")
        >>> sae.stats["r2"], sae.stats["dead"]
    """
    _check_fit(features, n_atoms, method, top_k)
    x = _vectors(features)
    if len(x) > max_positions:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_positions]]
    n_atoms = int(n_atoms)
    with _one_thread():
        if method in SAE_METHODS:
            atoms, mean, encode, model = _fit_sae(x, n_atoms, method, seed=seed, top_k=top_k, sparsity=sparsity,
                                                  steps=steps, batch_size=batch_size, lr=lr, progress=progress)
        else:
            atoms, mean, encode, model = FITTERS[method](x, n_atoms, seed)
    with torch.no_grad():
        codes = torch.cat([encode(x[s:s + 65536]).float() for s in range(0, len(x), 65536)])
        fired = codes != 0
        count = fired.sum(0)
        scale = (codes.abs() * fired).sum(0) / count.clamp_min(1) * atoms.norm(dim=1)
        stats = {"r2": _r2(x, codes @ atoms + mean, x.mean(0)), "l0": float(fired.sum(1).float().mean()),
                 "dead": float((count == 0).sum()), "positions": float(len(x))}
    return Dictionary(method, layer, classifier_name, atoms.float(), mean.float(), scale.float(), stats, model, encode)


@contextmanager
def _one_thread():
    """Fit on one CPU thread, then restore the caller's thread settings (torch's, and BLAS/OpenMP's through
    threadpoolctl). A fit's matrices (batches of 512 vectors of a few hundred numbers) gain nothing from more
    threads, and on a busy machine threads waiting for each other made SAE training ten times slower."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _fit_sae(x: Tensor, n_atoms: int, method: str, *, seed: int, top_k: int, sparsity: float, steps: int,
             batch_size: int, lr: float, progress: bool):
    """An overcomplete SAE on standardised vectors; returns atoms in feature units, the mean and the encoder."""
    from tqdm.auto import tqdm

    _overcomplete()
    from overcomplete.sae import BatchTopKSAE, JumpSAE, RATopKSAE, TopKSAE, heaviside
    from overcomplete.sae.losses import top_k_auxiliary_loss

    c = x.shape[1]
    mean = x.mean(0)
    unit = float((x - mean).pow(2).mean().sqrt().clamp_min(1e-12))
    xn = (x - mean) / unit
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(xn))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if method == "topk":
            model = TopKSAE(c, n_atoms, top_k=top_k)
        elif method == "batchtopk":
            model = BatchTopKSAE(c, n_atoms, top_k=top_k * batch_size)
        elif method == "jumprelu":
            model = JumpSAE(c, n_atoms, bandwidth=0.05)
        else:   # the candidates the archetypes are convex mixtures of: a seeded sample of the vectors
            points = xn[torch.randperm(len(xn), generator=gen)[:min(len(xn), 4 * n_atoms)]]
            model = RATopKSAE(c, n_atoms, points=points, top_k=top_k)

        def criterion(x_, x_hat, pre, codes, dictionary):
            if method != "jumprelu":
                return top_k_auxiliary_loss(x_, x_hat, pre, codes, dictionary)
            l0 = heaviside(torch.relu(pre), model.thresholds.exp(), model.kernel_fn, model.bandwidth).sum(-1).mean()
            return (x_ - x_hat).square().mean() + sparsity * l0

        thresholds = [p for n, p in model.named_parameters() if n == "thresholds"]
        others = [p for n, p in model.named_parameters() if n != "thresholds"]
        opt = torch.optim.Adam([{"params": others}] + ([{"params": thresholds, "lr": 20 * lr}] if thresholds else []),
                               lr=lr)
        model.train()
        order, at = torch.randperm(len(xn), generator=gen), 0
        for _ in tqdm(range(steps), desc=f"{method} SAE", disable=not progress, leave=False):
            if at + batch_size > len(order):
                order, at = torch.randperm(len(xn), generator=gen), 0
            xb = xn[order[at:at + batch_size]]
            at += batch_size
            opt.zero_grad()
            pre, codes, x_hat = model(xb)
            criterion(xb, x_hat, pre, codes, model.get_dictionary()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
    model.requires_grad_(False)
    atoms = model.get_dictionary().detach().float() * unit

    def encode(v: Tensor) -> Tensor:
        return model.encode((v - mean) / unit)[1]

    return atoms, mean, encode, model


# ------------------------------------------------------------------------------------------ quality
@torch.no_grad()
def reconstruction_quality(dictionary: Dictionary, features: Tensor, *, classifier: nn.Module | None = None,
                           images: Tensor | None = None, layer: str | None = None,
                           reference_logits: tuple[Tensor, Tensor] | None = None):
    """How well the dictionary reconstructs maps, and how much of what the classifier makes of them survives.

    Args:
        dictionary: a fitted :class:`Dictionary`.
        features: ``Tensor[N, C, h, w]`` maps from its layer (held-out ones, ideally).
        classifier: with ``images``, also measure ``logit_explained``.
        images: ``Tensor[N, 3, H, W]``, the images ``features`` came from.
        layer: the layer ``features`` came from; if given it must be the dictionary's.
        reference_logits: ``(L, L_mean)``, computed once by :func:`compare_dictionaries` for all its
            dictionaries (default: computed here).

    Returns:
        pandas.Series: ``r2`` (variance around the channel means explained; the empty dictionary, which decodes
        every position to the mean, scores 0), ``l0`` (non-zero codes per position), ``dead`` (atoms never
        non-zero on these maps) and, with a classifier, ``logit_explained``: ``1 - |L_dec - L|^2 / |L_mean - L|^2``
        with ``L`` the logits, ``L_dec`` those with the decoded maps in place of the originals and ``L_mean``
        those with every position set to the maps' channel means. It is NaN where editing the map does not
        reach the logits (a ViT's last block feeds a class-token head).

    Example:
        >>> reconstruction_quality(sae, test_feats, classifier=cnn, images=x_test)
    """
    import pandas as pd

    from . import map_logits

    codes = dictionary.encode(features, layer=layer)
    rec = dictionary.decode(codes)
    x = _vectors(features)
    out = {"r2": _r2(x, _vectors(rec), x.mean(0)), "l0": float((codes != 0).sum(1).float().mean()),
           "dead": float(((codes != 0).sum((0, 2, 3)) == 0).sum())}
    if classifier is not None:
        if images is None or dictionary.layer is None:
            raise AnalysisError("logit_explained needs the images the maps came from (images=) and a dictionary "
                                "fitted with layer=")
        logits, mean_logits = reference_logits or _reference_logits(classifier, images, dictionary.layer, features)
        gap = (mean_logits - logits).pow(2).sum()
        if gap > 1e-6 * logits.pow(2).sum():
            err = (map_logits(classifier, images, dictionary.layer, rec) - logits).pow(2).sum()
            out["logit_explained"] = float(1 - err / gap)
        else:
            out["logit_explained"] = float("nan")
    return pd.Series(out)


@torch.no_grad()
def _reference_logits(classifier: nn.Module, images: Tensor, layer: str, features: Tensor) -> tuple[Tensor, Tensor]:
    """Logits with the true maps, and with every position of each map set to the maps' channel means."""
    from . import map_logits

    f = features.detach().float().cpu()
    mean = f.mean((0, 2, 3), keepdim=True).expand_as(f).contiguous()
    return map_logits(classifier, images, layer, f), map_logits(classifier, images, layer, mean)


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


def _factor_kind(factor: str) -> str:
    if factor in CATEGORICAL_FACTORS:
        return "categorical"
    return "circular" if factor in FACTOR_PERIODS else "continuous"


def _angle(table, factor: str) -> np.ndarray:
    """A circular factor in radians (:data:`~workbench.tinyworld.FACTOR_PERIODS`: turns are scaled by 2 pi)."""
    return table[factor].to_numpy().astype(float) * (2 * math.pi / FACTOR_PERIODS[factor])


def _score_factor(pooled: np.ndarray, table, factor: str, train: np.ndarray, test: np.ndarray):
    """One factor's held-out score for every atom, and what the atom points at (chosen on ``train``).

    Returns:
        ``(scores [K], targets [K])``: ``targets`` is a category (categorical), +1/-1 (continuous) or a
        phase in radians (circular).
    """
    kind = _factor_kind(factor)
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
    theta = _angle(table, factor)
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
    reference = _reference_logits(classifier, images, layer, features) \
        if classifier is not None and images is not None and layer is not None else None
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
    kind = _factor_kind(factor)
    if kind == "categorical":
        negate = isinstance(target, str) and target.startswith("not ")
        level = target[4:] if negate else str(target)
        hit = np.asarray(values).astype(str) == level
        return (~hit if negate else hit).astype(float)
    if kind == "continuous":
        return float(target) * np.asarray(values, dtype=float)
    angle = np.asarray(values, dtype=float) * (2 * math.pi / FACTOR_PERIODS[factor])
    return np.cos(angle - float(target))


@torch.no_grad()
def atom_steering_study(classifier: nn.Module, inverter, images: Tensor, dictionary: Dictionary, atom: int,
                        alphas: Sequence[float], *, scores, readout, factor: str | None = None,
                        where: str | tuple[int, int] = "everywhere", control: bool = True, num_samples: int = 2,
                        seed: int = 0, progress: bool = True):
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
        num_samples, seed, progress: passed to the inverter.

    Returns:
        ``(table, samples, summary)``: :func:`~workbench.analysis.steering_studies.steering_study`'s table plus
        ``target``; ``samples`` ``Tensor[B, A, S, 3, H, W]``; ``summary`` a Series with ``atom``, ``factor``,
        ``points_at``, ``score`` (the atom's table score), ``spearman_target`` (Spearman of ``target`` with
        alpha, per image, averaged), ``target_first`` and ``target_last`` (mean ``target`` at the smallest and
        largest alpha), ``spearman_concept``; with ``control``, ``control_spearman_target`` and
        ``control_target_last``; and, for an atom of one shape, ``p_class_first`` and ``p_class_last``: the
        classifier's mean probability of that shape on the inversions (a second reader besides the readout),
        and ``p_class_map_last``: the same on the steered map itself at the largest alpha (what the edit does to
        the classifier, before inversion).

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
    kwargs = dict(readout=readout, target_class=target_class, num_samples=num_samples, seed=seed, progress=progress)
    table, samples = steering_study(classifier, inverter, images, direction_edit(concept, where=where), alphas,
                                    **kwargs)
    summary = {"atom": int(atom), "factor": factor, "points_at": target, "score": float(scores.loc[atom, factor]),
               **_steering_effect(table, factor, target)}
    if control:
        g = torch.Generator().manual_seed(seed)
        random = torch.randn(dictionary.num_channels, generator=g)
        random = Concept(f"random-{atom}", concept.layer, concept.classifier_name, random / random.norm(),
                         (random / random.norm())[None], concept.scale, "random")
        ctrl = _steering_effect(steering_study(classifier, inverter, images, direction_edit(random, where=where),
                                               alphas, **kwargs)[0], factor, target)
        summary.update({"control_spearman_target": ctrl["spearman_target"], "control_target_last": ctrl["target_last"]})
    return table, samples, pd.Series(summary)


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
    return out
