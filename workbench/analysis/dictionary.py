"""Concept dictionaries: sparse autoencoders and friends on a layer's spatial feature vectors.

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

:func:`reconstruction_quality` says how much of the maps, and of the classifier's logits, a dictionary keeps.
What the atoms mean (scored against known factors, shown, steered) lives in :mod:`~workbench.analysis.atoms`.

Example:
    >>> feats = wb.extract_features(cnn, x, "stages.3")                        # Tensor[N, 192, 4, 4]
    >>> sae = fit_dictionary(feats, 384, method="topk", layer="stages.3", seed=0)
    >>> sae.encode(feats[:2]).shape                                            # [2, 384, 4, 4]
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_finite, check_result, check_seed, checked_float, checked_int, seeded_generator
from ..errors import AnalysisError
from ..globalstate import import_keeping_environ
from .concepts import Concept
from .factorization import DECOMPOSITIONS, FITTERS

SAE_METHODS = ("topk", "batchtopk", "jumprelu", "archetypal")
SKLEARN_METHODS = DECOMPOSITIONS
#: Every ``method`` :func:`fit_dictionary` accepts.
DICTIONARY_METHODS = SAE_METHODS + SKLEARN_METHODS + ("channels",)


def _overcomplete():
    """Import ``overcomplete``. Its 0.3.0 calls ``matplotlib.cm.get_cmap`` at import, which matplotlib 3.9
    removed; the alias is put there for the import only and taken away again."""
    import matplotlib
    import matplotlib.cm as cm

    added = not hasattr(cm, "get_cmap")
    if added:
        cm.get_cmap = matplotlib.colormaps.get_cmap
    try:
        return import_keeping_environ("overcomplete")   # opencv, which it imports, rewrites os.environ
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
        codes = (torch.cat([self._encode(x[s:s + batch_size]).float() for s in range(0, len(x), batch_size)])
                 if len(x) else x.new_zeros(0, self.n_atoms))
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
def _checked_budget(seed: Any, steps: Any, batch_size: Any, max_positions: Any) -> tuple[int, int, int, int]:
    """The seed (:func:`~workbench.checks.check_seed`: negative ones refused, as at every door) and the counts, each
    an int >= 1: ``steps=0`` or ``batch_size=0`` would return an untrained dictionary."""
    return (check_seed(seed), checked_int(steps, "steps", minimum=1), checked_int(batch_size, "batch_size", minimum=1),
            checked_int(max_positions, "max_positions", minimum=1))


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
    if method in SAE_METHODS:
        _check_enough_vectors(features, n_atoms)


#: an SAE fit warns below this many fitting vectors (map positions) per atom
MIN_VECTORS_PER_ATOM = 4


def _check_enough_vectors(features: Tensor, n_atoms: int) -> None:
    """Refuse an SAE with more atoms than fitting vectors (``N x h x w`` positions): most atoms would stay dead and
    the fit says little; warn below :data:`MIN_VECTORS_PER_ATOM` vectors per atom."""
    import warnings

    n, _, h, w = features.shape
    vectors = n * h * w
    need = MIN_VECTORS_PER_ATOM * n_atoms
    fix = (f"pass at least {-(-need // (h * w))} maps ({need} vectors), or fewer atoms "
           f"(n_atoms <= {max(1, vectors // MIN_VECTORS_PER_ATOM)})")
    if vectors < n_atoms:
        raise AnalysisError(f"{n} maps of {h}x{w} positions give {vectors} vectors for {n_atoms} atoms: an SAE needs "
                            f"more vectors than atoms, or most atoms stay dead; {fix}")
    if vectors < need:
        warnings.warn(f"{n} maps of {h}x{w} positions give only {vectors} vectors for {n_atoms} atoms "
                      f"({vectors / n_atoms:.1f} per atom): expect dead atoms and a fit that says little; {fix}",
                      UserWarning, stacklevel=4)


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
    seed, steps, batch_size, max_positions = _checked_budget(seed, steps, batch_size, max_positions)
    lr, sparsity = checked_float(lr, "lr", minimum=0.0), checked_float(sparsity, "sparsity", minimum=0.0)
    _check_fit(features, n_atoms, method, top_k)
    check_finite(features, "features")
    x = _vectors(features)
    if len(x) > max_positions:
        x = x[torch.randperm(len(x), generator=seeded_generator(seed))[:max_positions]]
    n_atoms = int(n_atoms)
    with _one_thread():
        if method in SAE_METHODS:
            atoms, mean, encode, model = _fit_sae(x, n_atoms, method, seed=seed, top_k=top_k, sparsity=sparsity,
                                                  steps=steps, batch_size=batch_size, lr=lr, progress=progress)
        else:
            atoms, mean, encode, model = FITTERS[method](x, n_atoms, seed)
    check_result(atoms, f"fit_dictionary(method={method!r})", f"lr={lr:g}, so large that training diverged; "
                 "lower it (the default is 1e-3)")
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
    threadpool_limits = import_keeping_environ("threadpoolctl").threadpool_limits   # it sets KMP_DUPLICATE_LIB_OK

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
        reference_logits: ``(L, L_mean)``, computed once by :func:`~workbench.analysis.atoms.compare_dictionaries` for all its
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
