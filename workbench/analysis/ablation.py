"""Channel ablations: which channels of a layer matter, and what the image loses without them.

Channels are ranked three ways (mean activation, class selectivity, logit drop when ablated). Sets of
channels are then set to zero or to their dataset mean with :func:`ablate_features`, the edit from
:mod:`workbench.interventions` that the hook :func:`workbench.ablate_channels` applies too. The effect shows
in the logits (the rest of the network run on the edited map, :func:`~workbench.analysis.map_logits`) and,
through FeatInv, in images.

Example:
    >>> table = channel_table(cnn, x, y, "stages.3")                          # one row per channel
    >>> top = rank_channels(table, by="logit_drop")[:16]
    >>> ablation_table(cnn, x, y, "stages.3", {"top16": top, "all": range(192)})
    >>> edited = ablate_features(feats, top, mode="mean", means=channel_means(cnn, x, "stages.3"))
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..checks import checked_int
from ..errors import AnalysisError
from ..interventions import ablate_features, check_mode
from ..inverters.sampler import Sampler, study_sampler
from . import check_channels, invert_edited, map_logits, score_inversions

RANKINGS = ("mean_activation", "selectivity", "logit_drop")


@torch.no_grad()
def channel_means(classifier: nn.Module, images: Tensor, layer: str, *, batch_size: int = 256) -> Tensor:
    """Per-channel mean of ``layer`` over images and positions: ``Tensor[N, 3, H, W]`` -> ``Tensor[C]`` (CPU).

    Example:
        >>> means = channel_means(cnn, wb.TinyWorld("val", size=512).images(), "stages.3")   # [192]
    """
    from ..hooks import extract_features

    return extract_features(classifier, images, layer, batch_size=batch_size).float().mean((0, 2, 3)).cpu()


def _fill(features: Tensor, mode: str, means: Tensor | None) -> Tensor:
    """What ablation puts in place of each channel, broadcastable to ``features`` (``means`` given for "mean")."""
    if mode == "zero":
        return torch.zeros(1, features.shape[1], 1, 1)
    return means.float().view(1, -1, 1, 1)


def _linear_drops(classifier: nn.Module, images: Tensor, labels: Tensor, layer: str, fill: Tensor,
                  batch_size: int) -> Tensor:
    """First-order estimate of each channel's logit drop: ``sum_hw grad * (act - fill)``, averaged."""
    from ..hooks import run_with_hooks

    dev = next(classifier.parameters()).device
    total = None
    for s in range(0, len(images), batch_size):
        leaf = {}

        def grab(act: Tensor, *, name: str) -> Tensor:
            leaf["x"] = act.detach().requires_grad_(True)
            return leaf["x"]

        with torch.enable_grad():
            logits = run_with_hooks(classifier, images[s:s + batch_size].to(dev), {layer: grab})
            y = labels[s:s + batch_size].to(dev)
            logits.gather(1, y[:, None]).sum().backward()
        act, grad = leaf["x"].detach().float().cpu(), leaf["x"].grad.float().cpu()
        part = (grad * (act - fill)).sum((2, 3)).sum(0)
        total = part if total is None else total + part
    return total / len(images)


@torch.no_grad()
def _exact_drops(classifier: nn.Module, images: Tensor, labels: Tensor, layer: str, channels: list[int],
                 mode: str, means: Tensor | None, feats: Tensor, batch_size: int, progress: bool) -> Tensor:
    """Ablate each channel alone and rerun; channels are stacked into batches of about ``batch_size`` images."""
    from tqdm.auto import tqdm

    n = len(images)
    base = map_logits(classifier, images, layer, feats).gather(1, labels[:, None])[:, 0]
    fill = _fill(feats, mode, means)[0, :, 0, 0]
    group = max(1, batch_size // n)
    drops = []
    for s in tqdm(range(0, len(channels), group), desc="logit drop", disable=not progress):
        chans = channels[s:s + group]
        edited = feats.repeat(len(chans), 1, 1, 1)                        # [g * N, C, h, w], channel-major
        for i, c in enumerate(chans):
            edited[i * n:(i + 1) * n, c] = fill[c]
        after = map_logits(classifier, images.repeat(len(chans), 1, 1, 1), layer, edited, batch_size=batch_size)
        after = after.gather(1, labels.repeat(len(chans))[:, None])[:, 0].view(len(chans), n)
        drops.extend((base[None] - after).mean(1).tolist())
    return torch.tensor(drops)


def channel_table(classifier: nn.Module, images: Tensor, labels: Tensor, layer: str, *, logit_drop: str | None = "linear",
                  mode: str = "zero", means: Tensor | None = None, batch_size: int = 256, progress: bool = True):
    """Rank material for every channel of ``layer``: activation, class selectivity and logit drop.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        labels: ``Tensor[N]`` class indices.
        layer: layer name.
        logit_drop: ``"exact"`` (ablate each channel alone and rerun: ``C`` forward passes over ``images``),
            ``"linear"`` (first-order estimate from one backward pass) or ``None`` (skip).
        mode: ablation used for the logit drop, ``"zero"`` or ``"mean"``.
        means: ``Tensor[C]`` for ``mode="mean"`` (default: :func:`channel_means` over ``images``); ignored for
            ``mode="zero"``.
        batch_size: images per forward pass.
        progress: progress bar for ``"exact"``.

    Returns:
        pandas.DataFrame with one row per channel: ``channel``, ``mean_activation`` (over images and
        positions), ``selectivity`` (Morcos et al. 2018 on rectified spatial means:
        ``(mu_max - mu_rest) / (mu_max + mu_rest)`` in [0, 1]), ``preferred_class`` and ``logit_drop``
        (mean drop of the true-class logit when the channel alone is ablated).

    Example:
        >>> table = channel_table(cnn, x, y, "stages.3", logit_drop="exact")
        >>> table.sort_values("logit_drop", ascending=False).head()
    """
    import pandas as pd

    from ..hooks import extract_features

    check_mode(mode, means if mode == "mean" else None)       # means is ignored in zero mode, as in ablate_features
    feats = extract_features(classifier, images, layer, batch_size=batch_size).float().cpu()
    check_mode(mode, means if mode == "mean" else None, feats.shape[1])
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) != len(images):
        raise AnalysisError(f"{len(labels)} labels for {len(images)} images")
    c = feats.shape[1]
    pooled = feats.clamp_min(0).mean((2, 3))                                     # [N, C]
    classes = torch.unique(labels)
    per_class = torch.stack([pooled[labels == k].mean(0) for k in classes])       # [K, C]
    best, arg = per_class.max(0)
    rest = (per_class.sum(0) - best) / max(len(classes) - 1, 1)
    selectivity = (best - rest) / (best + rest).clamp_min(1e-8)
    table = pd.DataFrame({"channel": range(c), "mean_activation": feats.mean((0, 2, 3)).numpy(),
                          "selectivity": selectivity.numpy(), "preferred_class": classes[arg].numpy()})
    if mode == "mean" and means is None:
        means = feats.mean((0, 2, 3))
    if logit_drop == "linear":
        table["logit_drop"] = _linear_drops(classifier, images, labels, layer, _fill(feats, mode, means),
                                            batch_size).numpy()
    elif logit_drop == "exact":
        table["logit_drop"] = _exact_drops(classifier, images, labels, layer, list(range(c)), mode, means, feats,
                                           batch_size, progress).numpy()
    elif logit_drop is not None:
        raise AnalysisError(f"logit_drop is 'exact', 'linear' or None, got {logit_drop!r}")
    return table


def rank_channels(table, by: str = "logit_drop") -> list[int]:
    """Channel indices from a :func:`channel_table`, most important first.

    Args:
        table: the DataFrame of :func:`channel_table`.
        by: ``"mean_activation"``, ``"selectivity"`` or ``"logit_drop"``.

    Example:
        >>> rank_channels(table, by="selectivity")[:8]
    """
    if by not in RANKINGS or by not in table:
        raise AnalysisError(f"by={by!r}: rank by one of {[r for r in RANKINGS if r in table]} "
                            f"(logit_drop needs channel_table(..., logit_drop='exact' or 'linear'))")
    return table.sort_values(by, ascending=False, kind="stable").channel.astype(int).tolist()


@torch.no_grad()
def ablation_table(classifier: nn.Module, images: Tensor, labels: Tensor, layer: str,
                   channel_sets: Mapping[str, Sequence[int]] | Sequence[Sequence[int]], *, mode: str = "zero",
                   means: Tensor | None = None, batch_size: int = 256):
    """The effect of ablating each set of channels on the logits and the accuracy.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        labels: ``Tensor[N]``.
        layer: layer name.
        channel_sets: ``{name: channels}`` or a list of channel lists (named by position).
        mode: ``"zero"`` or ``"mean"``.
        means: ``Tensor[C]`` for ``mode="mean"`` (default: the mean over ``images``).

    Returns:
        pandas.DataFrame, one row per set: ``set``, ``n_channels``, ``accuracy``, ``accuracy_before``,
        ``logit_drop`` (mean drop of the true-class logit), ``logit_change`` (mean absolute change of all
        logits), ``agreement`` (prediction unchanged) and ``map_cosine`` (edited vs original map).

    Example:
        >>> ablation_table(cnn, x, y, "stages.3", {"all": range(192)}).accuracy   # near chance: 1 / number of classes
    """
    import pandas as pd

    from ..hooks import extract_features

    feats = extract_features(classifier, images, layer, batch_size=batch_size).float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    if mode == "mean" and means is None:
        means = feats.mean((0, 2, 3))
    sets = dict(channel_sets) if isinstance(channel_sets, Mapping) else {str(i): s for i, s in enumerate(channel_sets)}
    before = map_logits(classifier, images, layer, feats, batch_size=batch_size)
    rows = []
    for name, chans in sets.items():
        chans = check_channels(list(chans), feats.shape[1])
        edited = ablate_features(feats, chans, mode=mode, means=means)
        after = map_logits(classifier, images, layer, edited, batch_size=batch_size)
        rows.append({"set": name, "n_channels": len(chans),
                     "accuracy": float((after.argmax(1) == labels).float().mean()),
                     "accuracy_before": float((before.argmax(1) == labels).float().mean()),
                     "logit_drop": float((before - after).gather(1, labels[:, None]).mean()),
                     "logit_change": float((before - after).abs().mean()),
                     "agreement": float((after.argmax(1) == before.argmax(1)).float().mean()),
                     "map_cosine": float(torch.nn.functional.cosine_similarity(edited.flatten(1), feats.flatten(1),
                                                                               dim=1).mean())})
    return pd.DataFrame(rows)


@torch.no_grad()
def ablation_sweep(classifier: nn.Module, images: Tensor, labels: Tensor, layer: str, order: Sequence[int],
                   counts: Sequence[int], *, mode: str = "zero", means: Tensor | None = None, inverter=None,
                   num_samples: int = 1, num_inference_steps: int | None = None, seed: int = 0, progress: bool = True,
                   sampler: Sampler | None = None):
    """Ablate the first ``n`` channels of ``order`` for each ``n`` in ``counts``; optionally invert each edit.

    Args:
        classifier, images, labels, layer, mode, means: as in :func:`ablation_table`.
        order: channels, most important first (from :func:`rank_channels`).
        counts: how many of them to ablate, e.g. ``[0, 4, 16, 64, 192]``.
        inverter: a FeatInv for ``layer``; if given, each edited map is inverted and scored.
        num_samples, num_inference_steps, seed, progress: passed to ``inverter.invert``.
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps), passed to ``inverter.invert`` and recorded in
            the table's ``attrs["sampler"]``.

    Returns:
        ``(table, samples)``: the :func:`ablation_table` columns plus ``n`` and, with an inverter,
        ``inversion_accuracy`` (the inversion is classified as the true label), ``inversion_cosine``
        (the inversion's map vs the edited map) and ``feature_distance`` (the edited maps' mean distance from the
        inverter's training maps, :func:`~workbench.analysis.invert_edited`; absent without feature statistics);
        ``samples`` is ``{n: Tensor[B, S, 3, H, W]}`` (empty without an inverter).

    Example:
        >>> table, samples = ablation_sweep(cnn, x, y, "stages.3", rank_channels(t), [0, 8, 64], inverter=inv)
    """
    from ..hooks import extract_features

    if inverter is not None and inverter.layer != layer:
        raise AnalysisError(f"the inverter inverts {inverter.layer!r}, not {layer!r}; load the inverter for {layer!r}")
    feats = extract_features(classifier, images, layer).float().cpu()
    order = check_channels(list(order), feats.shape[1])
    labels = torch.as_tensor(labels).long().cpu()
    if mode == "mean" and means is None:
        means = feats.mean((0, 2, 3))
    counts = [checked_int(n, "each of counts") for n in counts]   # 2.5 channels is not a count
    for n in counts:
        if not 0 <= n <= len(order):
            raise AnalysisError(f"count {n} is outside 0..{len(order)} (the length of order)")
    table = ablation_table(classifier, images, labels, layer, {int(n): order[:int(n)] for n in counts}, mode=mode,
                           means=means)
    table.insert(0, "n", table.pop("set").astype(int))
    samples = {}
    if inverter is not None:
        acc, cos, dist = [], [], []
        for n in counts:
            edited = ablate_features(feats, order[:int(n)], mode=mode, means=means)
            out, distance = invert_edited(inverter, feats, edited, num_samples=num_samples, seed=seed, sampler=sampler,
                                          num_inference_steps=num_inference_steps, progress=progress)
            scores = score_inversions(classifier, layer, edited, out)
            samples[int(n)] = out
            acc.append(float((torch.tensor(scores.predicted.to_numpy()) == labels.repeat_interleave(out.shape[1])).float().mean()))
            cos.append(float(scores.feature_cosine.mean()))
            dist.append(None if distance is None else float(distance.mean()))
        table["inversion_accuracy"], table["inversion_cosine"] = acc, cos
        if dist[0] is not None:
            table["feature_distance"] = dist
        table.attrs["sampler"] = study_sampler(inverter, sampler, {"num_inference_steps": num_inference_steps})[0]
    return table, samples
