"""Metrics of an inversion: is the reconstruction true to the features, and is it a natural image?

All image arguments follow the one convention: ``Tensor[N, 3, H, W]`` float in [0, 1].

Example:
    >>> cos = feature_cosine(cnn, "stages.3", originals, reconstructions)   # Tensor[N]
    >>> agree = topk_agreement(cnn, originals, reconstructions)             # {"top1": Tensor[N] bool, "top5": ...}
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _check_pair(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} "
                         f"differ in shape; pass one reconstruction per original (select a sample with recon[:, s] "
                         f"from an inverter's [B, S, 3, H, W] output)")


@torch.no_grad()
def extract_features(classifier: nn.Module, images: torch.Tensor, layer: str, *, batch_size: int = 256) -> torch.Tensor:
    """The classifier's NCHW map at ``layer`` for each image: ``[N, 3, H, W]`` -> ``Tensor[N, C, h, w]``,
    computed in batches on the classifier's device and returned there."""
    from .hooks import run_with_cache

    dev = next(classifier.parameters()).device
    outs = []
    for s in range(0, len(images), batch_size):
        _, cache = run_with_cache(classifier, images[s:s + batch_size].to(dev), [layer])
        outs.append(cache[layer])
    return torch.cat(outs)


@torch.no_grad()
def feature_cosine(classifier: nn.Module, layer: str, originals: torch.Tensor, reconstructions: torch.Tensor, *,
                   batch_size: int = 256) -> torch.Tensor:
    """Cosine similarity between the flattened maps at ``layer`` of each original and its reconstruction.

    Returns:
        ``Tensor[N]`` on the CPU; NaN where a reconstruction is NaN (count those, never average them in).
    """
    _check_pair(originals, reconstructions)
    a = extract_features(classifier, originals, layer, batch_size=batch_size).flatten(1)
    b = extract_features(classifier, reconstructions, layer, batch_size=batch_size).flatten(1)
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).cpu()


@torch.no_grad()
def _logits(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    dev = next(classifier.parameters()).device
    return torch.cat([classifier(images[s:s + batch_size].to(dev)).float().cpu()
                      for s in range(0, len(images), batch_size)])


@torch.no_grad()
def topk_agreement(classifier: nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor,
                   k: Sequence[int] = (1, 5)) -> dict[str, torch.Tensor]:
    """Whether the original's top-1 class is among the reconstruction's top-k classes.

    Returns:
        ``{"top1": Tensor[N] bool, "top5": Tensor[N] bool, ...}`` (``k`` larger than the class count is clipped).
    """
    _check_pair(originals, reconstructions)
    target = _logits(classifier, originals).argmax(1)
    rec = _logits(classifier, reconstructions)
    out = {}
    for kk in k:
        top = rec.topk(min(kk, rec.shape[1]), dim=1).indices
        out[f"top{kk}"] = (top == target[:, None]).any(1)
    return out


class PooledFeatures(nn.Module):
    """A classifier's pooled pre-logit features as a Fréchet-distance extractor: ``[N, 3, H, W]`` in [0, 1]
    -> ``[N, D]``. Images of another size are resized (bilinear) to the classifier's input size."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.size = tuple(classifier.input_size[-2:])
        with torch.no_grad():
            dev = next(classifier.parameters()).device
            self.num_features = int(self.forward(torch.rand(1, 3, *self.size, device=dev)).shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        m = self.classifier.model
        feats = m.forward_features(self.classifier.normalize(x))
        return m.forward_head(feats, pre_logits=True).flatten(1)


def pooled_extractor(classifier: nn.Module) -> PooledFeatures:
    """See :class:`PooledFeatures`."""
    return PooledFeatures(classifier).eval()


@torch.no_grad()
def frechet_distance(real: torch.Tensor, generated: torch.Tensor, extractor: nn.Module, *,
                     batch_size: int = 256) -> float:
    """Fréchet distance between two image sets in ``extractor``'s feature space (torchmetrics' FID machinery).

    Args:
        real: ``Tensor[N, 3, H, W]`` in [0, 1].
        generated: ``Tensor[M, 3, H, W]`` in [0, 1].
        extractor: a module ``[B, 3, H, W] -> [B, D]`` with a ``num_features`` attribute, e.g.
            :func:`pooled_extractor` of a classifier that is *not* the inverted one. It resizes inputs itself.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(generated) < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 images per set, got {len(real)} and {len(generated)}")
    dev = next(extractor.parameters()).device
    fid = FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=True,
                                   input_img_size=(3, *getattr(extractor, "size", real.shape[-2:]))).to(dev)
    fid.inception = extractor  # keep the caller's module (torchmetrics may wrap or move it)
    for s in range(0, len(real), batch_size):
        fid.update(real[s:s + batch_size].to(dev), real=True)
    for s in range(0, len(generated), batch_size):
        fid.update(generated[s:s + batch_size].to(dev), real=False)
    return float(fid.compute())
