"""The evaluation harness: every inverter, one call, one table.

:func:`evaluate` picks ``num_images`` images from a dataset (a seeded subset), captures the classifier's map at the
inverted layer, inverts it with any inverter (FeatInv, its pooled ablation, the decoder, the optimisation
baseline: they share ``invert(features, num_samples=..., seed=...) -> Tensor[B, S, 3, H, W]``), and
measures each reconstruction. The result is an :class:`EvalTable`, a ``pandas.DataFrame`` with one row per
image and sample, whose :meth:`EvalTable.summary` aggregates it; :func:`compare` stacks summaries into the
comparison table.

Columns: ``image`` (index in the dataset), ``sample``, ``label`` (when the dataset has labels),
``pred_original``, ``pred_reconstruction`` (-1 for a non-finite reconstruction), ``finite``,
``feature_cosine`` (inverted model, inverted layer), ``cross_cosine`` (an independent reference classifier's
pooled features), ``top1``, ``top5`` (1.0 / 0.0), ``psnr``, ``ssim``, and, for inverters that record their
training maps' statistics, ``feature_distance`` (how far the inverted map lies from those, about 1 or less for the
inverter's own maps; :func:`~workbench.inverters.feature_distance.feature_distance`). Metrics are NaN on non-finite
reconstructions; the summary counts them (``nonfinite``) and averages the rest (the distance: its median).
Set-level numbers live in ``table.attrs``: ``frechet_distance`` (reconstructions vs originals, in the
reference's pooled feature space unless an ``extractor`` is given) and ``seconds_per_image``.

**Judges** (:mod:`workbench.judges`). ``feature_cosine``, ``top1`` and ``top5`` are *own-model* metrics: graded by
the very classifier that was inverted, and, for a method that follows its gradients (feature guidance, optimisation:
``attrs["uses_model_gradients"]``), by the model it optimised against. The harness therefore also grades every
reconstruction by models that took no part in making it: per judge ``judge_agree[<judge>]`` (the judge gives the
reconstruction the class it gives the original) and ``judge_cosine[<judge>]`` (its spatial maps of the two); per
factor ``factor[<factor>]`` (the factor reader's accuracy on class-like factors, its error in units of the factor's
spread otherwise, against the original's true factors; tiny-world datasets only); and ``attrs["kid"]`` (with
``kid_low``/``kid_high``), the kernel inception distance of the reconstructions against a separate set of 2,000 real
images in the ResNet judge's features. :func:`summary` gives every column a bootstrap 95 % interval over images.

Example:
    >>> inv = wb.load_inverter("tinyworld-cnn/stages.3")
    >>> table = wb.evaluate(inv, cnn, "stages.3", wb.TinyWorld("test", size=512), num_images=64)
    >>> table.summary()          # feature_cosine, cross_cosine, top1, top5, psnr, ssim, frechet_distance, ...
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd
import torch
from torch import nn

from .errors import ArgumentValueError, BadInputError, InverterMismatchError

if TYPE_CHECKING:
    from .inverters.interface import Inverter

#: The independent classifier used for the cross-model cosine and the Fréchet distance of each tiny-world model.
REFERENCE_CLASSIFIERS = {"tinyworld-cnn": "tinyworld-vit", "tinyworld-vit": "tinyworld-cnn"}

#: Per-row metrics, in table order (``summary`` averages them over finite rows); judge and factor columns
#: (``judge_agree[...]``, ``judge_cosine[...]``, ``factor[...]``) follow them.
METRICS = ("feature_cosine", "cross_cosine", "top1", "top5", "psnr", "ssim")

#: The own-model metrics: graded by the inverted classifier itself, so not a judgement of a method that used its
#: gradients.
OWN_METRICS = ("feature_cosine", "top1", "top5")

#: Bootstrap resamples (over images) behind every 95 % interval of :func:`summary`.
BOOTSTRAP_ROUNDS = 1000


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The per-row metric columns of an evaluation table, in order: :data:`METRICS`, then the judges' and the
    factor reader's."""
    judged = [c for c in table.columns if c.startswith(("judge_agree[", "judge_cosine[", "factor["))]
    return [m for m in METRICS if m in table] + judged


def bootstrap_interval(table: pd.DataFrame, column: str, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                       ) -> tuple[float, float]:
    """A bootstrap 95 % interval of ``column``'s mean, resampling images (all samples of an image together) and
    skipping NaN (non-finite reconstructions; rotation of circles and rings)."""
    import numpy as np

    groups = table.groupby("image")[column] if "image" in table else None
    sums = (groups.sum(min_count=1).fillna(0) if groups is not None else table[column].fillna(0)).to_numpy(float)
    counts = (groups.count() if groups is not None else table[column].notna().astype(int)).to_numpy(float)
    if counts.sum() == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sums), size=(rounds, len(sums)))
    means = sums[pick].sum(1) / np.maximum(counts[pick].sum(1), 1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


class EvalTable(pd.DataFrame):
    """A ``pandas.DataFrame`` of per-reconstruction metrics with set-level numbers in ``attrs``.

    Example:
        >>> table.summary()["feature_cosine"]      # mean over finite reconstructions
    """

    @property
    def _constructor(self):
        return EvalTable

    def summary(self) -> pd.Series:
        """See :func:`summary`."""
        return summary(self)


def summary(table: pd.DataFrame, *, intervals: bool = True) -> pd.Series:
    """Aggregate an evaluation table: the mean of each metric over *finite* reconstructions (NaN-skipping), each
    with a bootstrap 95 % interval over images (``<metric>_lo``, ``<metric>_hi``), plus ``frechet_distance``,
    ``kid`` (with its interval), ``uses_model_gradients``, ``seconds_per_image``, ``n_images``, ``num_samples`` and
    ``nonfinite`` (the count of non-finite reconstructions, which are never averaged in).

    Args:
        table: an :class:`EvalTable`.
        intervals: add the ``_lo`` / ``_hi`` bootstrap bounds.

    Returns:
        ``pandas.Series`` named after the inverter.

    Example:
        >>> summary(table)[["judge_agree[tinyworld-judge-resnet]", "judge_agree[tinyworld-judge-resnet]_lo"]]
    """
    finite = table["finite"].astype(bool)
    out: dict[str, Any] = {}
    for m in metric_columns(table):
        out[m] = float(table.loc[finite, m].mean()) if finite.any() else float("nan")
        if intervals:
            out[f"{m}_lo"], out[f"{m}_hi"] = bootstrap_interval(table[finite], m)
    if "feature_distance" in table:
        out["feature_distance"] = float(table["feature_distance"].median())
    a = table.attrs
    out.update(frechet_distance=a.get("frechet_distance", float("nan")), kid=a.get("kid", float("nan")),
               kid_lo=a.get("kid_low", float("nan")), kid_hi=a.get("kid_high", float("nan")),
               uses_model_gradients=a.get("uses_model_gradients", None),
               seconds_per_image=a.get("seconds_per_image", float("nan")),
               n_images=a.get("n_images", table["image"].nunique() if "image" in table else len(table)),
               num_samples=a.get("num_samples", 1), nonfinite=int((~finite).sum()))
    return pd.Series(out, name=a.get("inverter", "inverter"))


def compare(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The comparison table: one row per named evaluation table, its :func:`summary` as columns.

    Example:
        >>> compare({"FeatInv": t1, "decoder": t2})[["feature_cosine", "frechet_distance"]]
    """
    rows = [summary(t).rename(name) for name, t in tables.items()]
    return pd.DataFrame(rows)


def inverter_label(inverter: Inverter) -> str:
    """A short name for tables: ``"featinv tinyworld-cnn/stages.3"``, ``"featinv-pooled ..."``, ``"decoder ..."``."""
    kind = getattr(inverter, "kind", type(inverter).__name__)
    if getattr(inverter, "pooling", "none") != "none":
        kind += "-pooled"
    return f"{kind} {getattr(inverter, 'classifier_name', '?')}/{getattr(inverter, 'layer', '?')}"


def select_images(dataset, num_images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """A seeded subset of ``num_images`` images, in dataset order.

    Args:
        dataset: a :class:`~workbench.TinyWorld` (anything with ``images(indices)`` and ``__len__``, and
            optionally ``labels(indices)``) or a ``Tensor[N, 3, H, W]`` in [0, 1].
        num_images: how many; ``num_images == len(dataset)`` takes them all.
        seed: seeds the subset.

    Returns:
        ``(images [num_images, 3, H, W], labels [num_images] or None, indices [num_images])``.

    Raises:
        ValueError: ``num_images`` is below 1 or larger than the dataset.

    Example:
        >>> x, y, idx = select_images(wb.TinyWorld("test", size=100), 8)
    """
    size = len(dataset)
    if not 1 <= num_images <= size:
        raise ArgumentValueError(f"num_images={num_images} images were asked for, but the dataset has {size}; pass "
                         f"1 <= num_images <= {size} or a larger dataset (e.g. wb.TinyWorld('test', size={max(num_images, 1)}))")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    idx = torch.arange(size) if num_images == size else order[:num_images]
    idx = idx.sort().values
    if isinstance(dataset, torch.Tensor):
        if dataset.ndim != 4 or dataset.shape[1] != 3:
            raise BadInputError(f"a tensor dataset is Tensor[N, 3, H, W] in [0, 1], got {tuple(dataset.shape)}")
        return dataset[idx].float(), None, idx
    labels = dataset.labels(idx) if hasattr(dataset, "labels") else None
    return dataset.images(idx).float(), labels, idx


def reference_classifier(classifier: nn.Module, reference: nn.Module | str | None = None) -> nn.Module:
    """The independent classifier that judges inversions of ``classifier``: ``reference`` itself, loaded when a
    name, or the default of :data:`REFERENCE_CLASSIFIERS`. Example: ``reference_classifier(cnn).name  # 'tinyworld-vit'``."""
    from .models import load_classifier

    dev = next(classifier.parameters()).device
    if isinstance(reference, str):
        return load_classifier(reference, device=dev)
    if reference is not None:
        return reference
    name = getattr(classifier, "name", None)
    if name not in REFERENCE_CLASSIFIERS:
        raise ArgumentValueError(f"no default reference classifier for {name!r}: pass reference= a second, independent "
                         f"classifier (e.g. reference='resnet50' for a ViT) for the cross-model cosine and the "
                         f"Fréchet distance; defaults exist for {sorted(REFERENCE_CLASSIFIERS)}")
    return load_classifier(REFERENCE_CLASSIFIERS[name], device=dev)


@torch.no_grad()
def evaluate_reconstructions(classifier: nn.Module, layer: str, originals: torch.Tensor, reconstructions: torch.Tensor,
                             *, reference: nn.Module | str | None = None, extractor: nn.Module | None = None,
                             labels: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                             judges: Mapping[str, nn.Module] | str | None = "default",
                             reader: nn.Module | str | None = "default",
                             factors: Mapping[str, torch.Tensor] | None = None) -> EvalTable:
    """Measure given reconstructions (no inverting): the metric part of :func:`evaluate`.

    Args:
        classifier: the inverted classifier.
        layer: the inverted layer.
        originals: ``Tensor[B, 3, H, W]`` in [0, 1].
        reconstructions: ``Tensor[B, S, 3, H, W]`` (an inverter's output) or ``Tensor[B, 3, H, W]``.
        reference: the independent classifier (a module or a name); default from :data:`REFERENCE_CLASSIFIERS`.
        extractor: Fréchet-distance feature extractor; default ``pooled_extractor(reference)``. An extractor
            with another input size resizes the images itself (see :class:`~workbench.metrics.PooledFeatures`).
        labels: ``Tensor[B]`` true labels (adds a ``label`` column).
        indices: ``Tensor[B]`` dataset indices (the ``image`` column; default ``0..B-1``).
        judges: name -> judge, ``"default"`` (every shipped judge, :func:`~workbench.judges.load_judges`) or
            ``None`` (no judge columns, no KID). Judges grade 32 px tiny-world images only.
        reader: the factor reader, ``"default"`` (the shipped one) or ``None``; used when ``factors`` is given.
        factors: the originals' true factors (``Tensor[B]`` per name, as ``TinyWorld.factors``), for the
            ``factor[...]`` columns.

    Returns:
        :class:`EvalTable` with ``B * S`` rows.

    Raises:
        ValueError: ``reconstructions`` does not have the originals' ``[3, H, W]`` shape.

    Example:
        >>> evaluate_reconstructions(cnn, "stages.3", x, x).summary()["feature_cosine"]     # 1.0
    """
    from . import metrics as M

    if reconstructions.ndim == 4:
        reconstructions = reconstructions[:, None]
    if (reconstructions.ndim != 5 or reconstructions.shape[0] != originals.shape[0]
            or reconstructions.shape[2:] != originals.shape[1:]):
        raise BadInputError(f"reconstructions {tuple(reconstructions.shape)} do not match originals "
                         f"{tuple(originals.shape)}: expected [B, S, 3, H, W] with B and [3, H, W] as the originals'")
    reference = reference_classifier(classifier, reference)
    B, S = reconstructions.shape[:2]
    orig = originals.float().repeat_interleave(S, 0)
    rec = reconstructions.float().reshape(B * S, *reconstructions.shape[2:])
    finite = M.finite_rows(rec)
    cols: dict[str, Any] = {
        "image": (torch.arange(B) if indices is None else indices.cpu()).repeat_interleave(S).numpy(),
        "sample": torch.arange(S).repeat(B).numpy()}
    if labels is not None:
        cols["label"] = labels.cpu().repeat_interleave(S).numpy()
    cols["pred_original"] = M.predictions(classifier, orig).numpy()
    cols["pred_reconstruction"] = M.predictions(classifier, rec).numpy()
    cols["finite"] = finite.numpy()
    cols["feature_cosine"] = M.feature_cosine(classifier, layer, orig, rec).numpy()
    cols["cross_cosine"] = M.cross_model_cosine(reference, orig, rec).numpy()
    for key, value in M.topk_agreement(classifier, orig, rec, k=(1, 5)).items():
        cols[key] = value.numpy()
    cols["psnr"] = M.psnr(orig, rec).numpy()
    cols["ssim"] = M.ssim(orig, rec).numpy()
    cols.update(_judged_columns(judges, reader, factors, orig, rec, S))
    table = EvalTable(cols)
    table.attrs.update(_kid_attrs(judges, rec[finite]))
    if reader is not None and factors is not None and any(c.startswith("factor[") for c in table.columns):
        table.attrs["factor_bounds"] = factor_bounds(reader, originals.float(), factors)
    ext = M.pooled_extractor(reference) if extractor is None else extractor
    table.attrs.update(classifier=getattr(classifier, "name", "?"), layer=layer,
                       reference=getattr(reference, "name", "?"), n_images=B, num_samples=S,
                       frechet_distance=(M.frechet_distance(originals.float(), rec[finite], ext)
                                         if int(finite.sum()) >= 2 else float("nan")))
    return table


def _judged_columns(judges, reader, factors, orig: torch.Tensor, rec: torch.Tensor, S: int) -> dict[str, Any]:
    """The judge and factor-reader columns of :func:`evaluate_reconstructions` (``orig`` and ``rec`` are
    ``[B * S, 3, H, W]``, each original repeated ``S`` times)."""
    from .judges import factor_columns, judge_columns, shipped_graders

    dev = orig.device
    cols: dict[str, Any] = {}
    if tuple(orig.shape[-2:]) != (32, 32):  # the shipped judges and reader read the tiny world's 32 px only
        judges, reader = (None if isinstance(g, str) else g for g in (judges, reader))
    if judges is not None:
        judges = shipped_graders(dev)[0] if isinstance(judges, str) else judges
        cols.update({k: v.numpy() for k, v in judge_columns(judges, orig, rec).items()})
    if reader is not None and factors is not None:
        reader = shipped_graders(dev)[1] if isinstance(reader, str) else reader
        truth = {k: torch.as_tensor(v).cpu().repeat_interleave(S) for k, v in factors.items()}
        cols.update({k: v.numpy() for k, v in factor_columns(reader, rec, truth).items()})
    return cols


def factor_bounds(reader: nn.Module | str, originals: torch.Tensor, factors: Mapping[str, torch.Tensor],
                  ) -> dict[str, dict[str, float]]:
    """The two ends of factor recovery on these originals (``Tensor[B, 3, 32, 32]``, with their true factors):
    ``ceiling``, the reader's score on the originals themselves, and ``chance``, its score when each image is
    answered by another real image (the originals rolled by one). An inversion at the ceiling keeps a factor as
    well as the image itself; at chance it keeps nothing of it (see :func:`~workbench.judges.factor_kept`)."""
    from .judges import factor_columns, shipped_graders

    reader = shipped_graders(originals.device)[1] if isinstance(reader, str) else reader
    ceiling = factor_columns(reader, originals, factors)
    chance = factor_columns(reader, originals.roll(1, dims=0), factors)
    return {"ceiling": {k[7:-1]: float(v.nanmean()) for k, v in ceiling.items()},
            "chance": {k[7:-1]: float(v.nanmean()) for k, v in chance.items()}}


def _kid_attrs(judges, rec: torch.Tensor) -> dict[str, float]:
    """``kid``, ``kid_low``, ``kid_high``: the reconstructions against the separate real set, in the KID judge's
    pooled features (nothing without judges or without that judge)."""
    from .judges import KID_JUDGE, kid, pooled_judge_features, shipped_graders

    if judges is None or (isinstance(judges, str) and tuple(rec.shape[-2:]) != (32, 32)):
        return {}
    judges = shipped_graders(rec.device)[0] if isinstance(judges, str) else judges
    if KID_JUDGE not in judges or rec.shape[-2:] != (32, 32):
        return {}
    real = _real_features(judges[KID_JUDGE])
    value, low, high = kid(real, pooled_judge_features(judges[KID_JUDGE], rec))
    return {"kid": value, "kid_low": low, "kid_high": high}


_REAL_FEATURES: dict[int, torch.Tensor] = {}


def _real_features(judge: nn.Module) -> torch.Tensor:
    """The KID judge's features of the separate real set, computed once per judge object."""
    from .judges import pooled_judge_features, real_reference_set

    key = id(judge)
    if key not in _REAL_FEATURES:
        _REAL_FEATURES.clear()
        _REAL_FEATURES[key] = pooled_judge_features(judge, real_reference_set())
    return _REAL_FEATURES[key]


def uses_model_gradients(inverter: Inverter, invert_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether a method follows the graded (inverted) model's gradients when it inverts: the optimisation
    baseline always, FeatInv when feature guidance is on (``feature_guidance_scale > 0``, explicitly or by
    default); the decoder, retrieval and unguided FeatInv never. Own-model metrics of such a method are graded by
    the model it optimised against."""
    from .inverters import featinv

    kind = getattr(inverter, "kind", "")
    if kind == "optimization":
        return True
    if kind == "featinv":
        kwargs = dict(invert_kwargs or {})
        sampler = kwargs.get("sampler")
        scale = kwargs.get("feature_guidance_scale")
        if scale is None:
            scale = (sampler.feature_guidance_scale if sampler is not None
                     else featinv.DEFAULT_FEATURE_GUIDANCE_SCALE)
        return float(scale) > 0
    return False


def method_name(inverter: Inverter, invert_kwargs: Mapping[str, Any] | None = None) -> str:
    """The method's name in tables: the paper's method, unguided FeatInv, is ``"FeatInv"``; with feature guidance it
    is ``"FeatInv + feature guidance (uses the model's gradients)"``; the others by kind."""
    kind = getattr(inverter, "kind", type(inverter).__name__)
    if kind == "featinv":
        name = "FeatInv" + (" (pooled)" if getattr(inverter, "pooling", "none") != "none" else "")
        return name + (" + feature guidance (uses the model's gradients)"
                       if uses_model_gradients(inverter, invert_kwargs) else "")
    return {"optimization": "optimisation (uses the model's gradients)", "decoder": "decoder",
            "retrieval": "nearest training image"}.get(kind, kind)


def _check_pairing(inverter: Inverter, classifier: nn.Module, layer: str, num_samples: int) -> None:
    """:func:`evaluate`'s refusals: a layer or classifier the inverter was not built for, fewer than one sample."""
    if layer != inverter.layer:
        raise InverterMismatchError(f"the inverter inverts {inverter.layer!r}, not {layer!r}; pass "
                                    f"layer={inverter.layer!r} or the inverter of {layer!r}")
    name, inv_name = getattr(classifier, "name", None), getattr(inverter, "classifier_name", None)
    if name and inv_name and name not in ("custom",) and name != inv_name:
        raise InverterMismatchError(f"the inverter was built for {inv_name!r}, but the classifier is {name!r}; pass "
                                    f"wb.load_classifier({inv_name!r})")
    if num_samples < 1:
        raise ArgumentValueError(f"num_samples must be >= 1, got {num_samples}")


def evaluate(inverter: Inverter, classifier: nn.Module, layer: str | None = None, dataset=None, num_images: int = 256,
             seed: int = 0, num_samples: int = 1, *, reference: nn.Module | str | None = None,
             extractor: nn.Module | None = None, progress: bool = True, return_reconstructions: bool = False,
             judges: Mapping[str, nn.Module] | str | None = "default", reader: nn.Module | str | None = "default",
             sampler=None, **invert_kwargs):
    """Invert ``num_images`` images with ``inverter`` and measure every reconstruction.

    Steps: 1. pick a seeded subset of ``num_images`` images; 2. capture ``classifier`` at ``layer``; 3. invert (timed);
    4. measure (:func:`evaluate_reconstructions`).

    Args:
        inverter: any inverter with the shared call (``invert(features, num_samples=, seed=, progress=)``).
        classifier: the classifier the inverter was built for (its name is checked when both are known).
        layer: the inverted layer; must equal ``inverter.layer`` (default: that layer).
        dataset: a :class:`~workbench.TinyWorld` or a ``Tensor[N, 3, H, W]`` (default:
            ``TinyWorld("test", size=max(num_images, 2000))``).
        num_images: images to evaluate (at most ``len(dataset)``).
        seed: seeds the subset and the inverter.
        num_samples: reconstructions per image (rows per image).
        reference: the independent classifier for the cross-model cosine and the Fréchet distance (a module or
            a name); default: the other tiny-world model (:data:`REFERENCE_CLASSIFIERS`).
        extractor: Fréchet-distance extractor (e.g. :func:`~workbench.metrics.inception_extractor`); it resizes
            images of another size itself. Default: the reference's pooled features.
        progress: show the inverter's progress bar.
        return_reconstructions: also return ``(originals [N, 3, H, W], reconstructions [N, S, 3, H, W])``, with
            ``N = num_images``.
        judges, reader: the independent judges and the factor reader (:func:`evaluate_reconstructions`); the
            factor columns need a :class:`~workbench.TinyWorld` dataset, whose true factors they compare with.
        sampler: a :class:`~workbench.inverters.sampler.Sampler` for a sampling kind (FeatInv; default
            ``Sampler()``), its loose settings in ``invert_kwargs`` put in; recorded in ``table.attrs["sampler"]``.
        **invert_kwargs: passed to ``inverter.invert`` (FeatInv's ``num_inference_steps=``, the optimisation
            baseline's ``num_optimizer_steps=``).

    Returns:
        :class:`EvalTable` (``num_images * num_samples`` rows; see the module docstring), or
        ``(table, originals, reconstructions)`` with ``return_reconstructions=True``.

    Raises:
        ValueError: ``num_images`` larger than the dataset; a layer or classifier the inverter was not built for.
        BadInputError: a tensor dataset that is not float images in [0, 1] (``uint8``: divide by 255).

    Example:
        >>> t = wb.evaluate(inv, cnn, "stages.3", wb.TinyWorld("test", size=256), num_images=32)
        >>> t.summary()
    """
    from .checks import check_images
    from .hooks import extract_features
    from .inverters.feature_distance import feature_distance
    from .inverters.base import InverterBase
    from .inverters.sampler import study_sampler
    from .tinyworld import TinyWorld

    if isinstance(dataset, torch.Tensor):  # uint8 or 0..255 floats would be measured as if in [0, 1]
        check_images(dataset, "dataset")
    layer = inverter.layer if layer is None else layer
    _check_pairing(inverter, classifier, layer, num_samples)
    dataset = TinyWorld("test", size=max(num_images, 2000), seed=0) if dataset is None else dataset
    images, labels, idx = select_images(dataset, num_images, seed)              # 1.
    feats = extract_features(classifier, images, layer)                         # 2.
    sampler, options = study_sampler(inverter, sampler, invert_kwargs)  # a sampling kind's settings, in one value
    t0 = time.perf_counter()
    # 3. the family's inverters take the sampler and the classifier (feature guidance runs it); an inverter of one's
    # own that only has the shared call gets its options
    family = isinstance(inverter, InverterBase)
    recon = inverter.invert(feats, num_samples=num_samples, seed=seed, progress=progress, **options,
                            **(dict(sampler=sampler, classifier=classifier) if family else {}))
    seconds = (time.perf_counter() - t0) / num_images
    factors = ({k: v[idx] for k, v in dataset.factors.items()} if hasattr(dataset, "factors") else None)
    table = evaluate_reconstructions(classifier, layer, images, recon, reference=reference, extractor=extractor,
                                     labels=labels, indices=idx, judges=judges, reader=reader,
                                     factors=factors)                           # 4.
    distance = feature_distance(inverter, feats)
    if distance is not None:
        table["feature_distance"] = distance.repeat_interleave(num_samples).numpy()
    table.attrs.update(inverter=inverter_label(inverter), seconds_per_image=seconds, seed=seed,
                       invert_kwargs=dict(invert_kwargs), sampler=sampler,
                       method=method_name(inverter, {"sampler": sampler, **options}),
                       uses_model_gradients=uses_model_gradients(inverter, {"sampler": sampler, **options}))
    return (table, images, recon) if return_reconstructions else table


@dataclass
class Comparison:
    """What :func:`compare_inverters` returns.

    Attributes:
        table: one row per inverter (columns ``method``, ``backbone``, ``layer``, ``reference`` and the summary),
            plus one ``real images`` row per reference: the Fréchet distance between the originals and as many
            other real test images, the floor any method can reach at this ``num_images``.
        tables: name -> per-image :class:`EvalTable`.
        originals: ``Tensor[N, 3, H, W]``, the same ``num_images`` images for every inverter.
        reconstructions: name -> ``Tensor[N, S, 3, H, W]``.
    """

    table: pd.DataFrame
    tables: dict[str, EvalTable]
    originals: torch.Tensor
    reconstructions: dict[str, torch.Tensor]


def compare_inverters(inverters: Mapping[str, nn.Module], classifiers: Mapping[str, nn.Module], dataset, *,
                      num_images: int = 256, seed: int = 0, num_samples: int = 1,
                      invert_kwargs: Mapping[str, dict] | None = None, progress: bool = True) -> Comparison:
    """:func:`evaluate` every inverter on the same ``num_images`` images and stack the summaries.

    Args:
        inverters: display name -> inverter.
        classifiers: classifier name -> classifier; each inverter uses ``classifiers[inv.classifier_name]``
            and the other tiny-world model as reference (:data:`REFERENCE_CLASSIFIERS`).
        dataset: a :class:`~workbench.TinyWorld` or ``Tensor[N, 3, H, W]`` with at least ``2 * num_images`` images
            (the second half gives the ``real images`` floor).
        num_images, seed, num_samples: as in :func:`evaluate`.
        invert_kwargs: inverter ``kind`` (``"featinv"``, ``"optimization"``, ``"decoder"``) -> keyword arguments
            of its ``invert`` (e.g. ``{"featinv": {"num_inference_steps": 8}, "optimization": {"num_optimizer_steps": 50}}``).
        progress: a progress bar over inverters.

    Returns:
        :class:`Comparison`.

    Example:
        >>> comp = compare_inverters({"FeatInv": inv, "decoder": dec}, {"tinyworld-cnn": cnn, "tinyworld-vit": vit},
        ...                          wb.TinyWorld("test", size=64), num_images=32)
        >>> comp.table[["feature_cosine", "frechet_distance"]]
    """
    from tqdm.auto import tqdm

    from .metrics import frechet_distance, pooled_extractor

    invert_kwargs = dict(invert_kwargs or {})
    if len(dataset) < 2 * num_images:
        raise ArgumentValueError(f"compare_inverters needs 2 * num_images = {2 * num_images} images (num_images for the "
                         f"inverters, as many again for the real-image floor), but the dataset has {len(dataset)}; "
                         "lower num_images or pass a larger dataset")
    tables, recons, rows, originals = {}, {}, [], None
    for name, inv in tqdm(inverters.items(), desc="inverters", disable=not progress):
        clf = classifiers[inv.classifier_name]
        ref = classifiers.get(REFERENCE_CLASSIFIERS.get(inv.classifier_name, ""))
        kwargs = invert_kwargs.get(getattr(inv, "kind", ""), {})
        table, originals, rec = evaluate(inv, clf, inv.layer, dataset, num_images=num_images, seed=seed,
                                         num_samples=num_samples,
                                         reference=ref, progress=False, return_reconstructions=True, **kwargs)
        tables[name], recons[name] = table, rec
        kind = getattr(inv, "kind", type(inv).__name__) + ("-pooled" if getattr(inv, "pooling", "none") != "none" else "")
        rows.append({"method": kind, "backbone": inv.classifier_name, "layer": inv.layer,
                     "reference": table.attrs["reference"], **summary(table).rename(name).to_dict(), "name": name})
    # the floor: num_images other real images against the same originals, in each reference's feature space
    chosen = select_images(dataset, num_images, seed)[2]
    taken = set(chosen.tolist())
    rest = torch.tensor([i for i in range(len(dataset)) if i not in taken])[:num_images]
    others = dataset[rest].float() if isinstance(dataset, torch.Tensor) else dataset.images(rest)
    for ref_name in sorted({r["reference"] for r in rows}):
        ext = pooled_extractor(classifiers[ref_name])
        rows.append({"method": "real images", "backbone": "-", "layer": "-", "reference": ref_name,
                     "frechet_distance": frechet_distance(originals, others, ext), "name": f"real images ({ref_name})"})
    table = pd.DataFrame(rows).set_index("name")
    table.index.name = None
    return Comparison(table, tables, originals, recons)
