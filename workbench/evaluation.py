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

Example:
    >>> inv = wb.load_inverter("tinyworld-cnn/stages.3")
    >>> table = wb.evaluate(inv, cnn, "stages.3", wb.TinyWorld("test", size=512), num_images=64)
    >>> table.summary()          # feature_cosine, cross_cosine, top1, top5, psnr, ssim, frechet_distance, ...
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd
import torch
from torch import nn

#: The independent classifier used for the cross-model cosine and the Fréchet distance of each tiny-world model.
REFERENCE_CLASSIFIERS = {"tinyworld-cnn": "tinyworld-vit", "tinyworld-vit": "tinyworld-cnn"}

#: Per-row metrics, in table order (``summary`` averages them over finite rows).
METRICS = ("feature_cosine", "cross_cosine", "top1", "top5", "psnr", "ssim")


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


def summary(table: pd.DataFrame) -> pd.Series:
    """Aggregate an evaluation table: the mean of each metric over *finite* reconstructions, plus
    ``frechet_distance``, ``seconds_per_image``, ``n_images``, ``num_samples`` and ``nonfinite`` (the count of
    non-finite reconstructions, which are never averaged in).

    Returns:
        ``pandas.Series`` named after the inverter.

    Example:
        >>> summary(table)["top1"]
    """
    finite = table["finite"].astype(bool)
    out: dict[str, Any] = {m: float(table.loc[finite, m].mean()) if finite.any() else float("nan")
                           for m in METRICS if m in table}
    if "feature_distance" in table:
        out["feature_distance"] = float(table["feature_distance"].median())
    a = table.attrs
    out.update(frechet_distance=a.get("frechet_distance", float("nan")),
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


def inverter_label(inverter: nn.Module) -> str:
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
        raise ValueError(f"num_images={num_images} images were asked for, but the dataset has {size}; pass "
                         f"1 <= num_images <= {size} or a larger dataset (e.g. wb.TinyWorld('test', size={max(num_images, 1)}))")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    idx = torch.arange(size) if num_images == size else order[:num_images]
    idx = idx.sort().values
    if isinstance(dataset, torch.Tensor):
        if dataset.ndim != 4 or dataset.shape[1] != 3:
            raise ValueError(f"a tensor dataset is Tensor[N, 3, H, W] in [0, 1], got {tuple(dataset.shape)}")
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
        raise ValueError(f"no default reference classifier for {name!r}: pass reference= a second, independent "
                         f"classifier (e.g. reference='resnet50' for a ViT) for the cross-model cosine and the "
                         f"Fréchet distance; defaults exist for {sorted(REFERENCE_CLASSIFIERS)}")
    return load_classifier(REFERENCE_CLASSIFIERS[name], device=dev)


@torch.no_grad()
def evaluate_reconstructions(classifier: nn.Module, layer: str, originals: torch.Tensor, reconstructions: torch.Tensor,
                             *, reference: nn.Module | str | None = None, extractor: nn.Module | None = None,
                             labels: torch.Tensor | None = None, indices: torch.Tensor | None = None) -> EvalTable:
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
    if reconstructions.ndim != 5 or reconstructions.shape[0] != originals.shape[0] \
            or reconstructions.shape[2:] != originals.shape[1:]:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} do not match originals "
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
    table = EvalTable(cols)
    ext = M.pooled_extractor(reference) if extractor is None else extractor
    table.attrs.update(classifier=getattr(classifier, "name", "?"), layer=layer,
                       reference=getattr(reference, "name", "?"), n_images=B, num_samples=S,
                       frechet_distance=(M.frechet_distance(originals.float(), rec[finite], ext)
                                         if int(finite.sum()) >= 2 else float("nan")))
    return table


def evaluate(inverter: nn.Module, classifier: nn.Module, layer: str | None = None, dataset=None, num_images: int = 256,
             seed: int = 0, num_samples: int = 1, *, reference: nn.Module | str | None = None,
             extractor: nn.Module | None = None, progress: bool = True, return_reconstructions: bool = False,
             **invert_kwargs):
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
    from .tinyworld import TinyWorld

    if isinstance(dataset, torch.Tensor):  # uint8 or 0..255 floats would be measured as if in [0, 1]
        check_images(dataset, "dataset")
    layer = inverter.layer if layer is None else layer
    if layer != inverter.layer:
        raise ValueError(f"the inverter inverts {inverter.layer!r}, not {layer!r}; pass layer={inverter.layer!r} "
                         f"or the inverter of {layer!r}")
    name, inv_name = getattr(classifier, "name", None), getattr(inverter, "classifier_name", None)
    if name and inv_name and name not in ("custom",) and name != inv_name:
        raise ValueError(f"the inverter was built for {inv_name!r}, but the classifier is {name!r}; pass "
                         f"wb.load_classifier({inv_name!r})")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    dataset = TinyWorld("test", size=max(num_images, 2000), seed=0) if dataset is None else dataset
    images, labels, idx = select_images(dataset, num_images, seed)              # 1.
    feats = extract_features(classifier, images, layer)                         # 2.
    kwargs = dict(invert_kwargs)
    if "classifier" in inspect.signature(inverter.invert).parameters:  # FeatInv's feature guidance runs this one
        kwargs.setdefault("classifier", classifier)
    t0 = time.perf_counter()
    recon = inverter.invert(feats, num_samples=num_samples, seed=seed, progress=progress, **kwargs)  # 3.
    seconds = (time.perf_counter() - t0) / num_images
    table = evaluate_reconstructions(classifier, layer, images, recon, reference=reference, extractor=extractor,
                                     labels=labels, indices=idx)               # 4.
    distance = feature_distance(inverter, feats)
    if distance is not None:
        table["feature_distance"] = distance.repeat_interleave(num_samples).numpy()
    table.attrs.update(inverter=inverter_label(inverter), seconds_per_image=seconds, seed=seed,
                       invert_kwargs=dict(invert_kwargs))
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
        raise ValueError(f"compare_inverters needs 2 * num_images = {2 * num_images} images (num_images for the "
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
