"""Metrics of an inversion: is the reconstruction true to the features, and is it a natural image?

All image arguments follow the one convention: ``Tensor[N, 3, H, W]`` float in [0, 1]. Per-image metrics
return ``Tensor[N]`` on the CPU with NaN where a reconstruction is not finite: such rows are never fed to a
classifier and never averaged in; count them with ``(~torch.isfinite(values)).sum()``.

* :func:`feature_cosine`: cosine between the flattened maps at the inverted layer (the inverted model's view).
* :func:`cross_model_cosine`: the same, seen by a second, independent classifier (cannot be gamed by
  matching the inverted model's features with adversarial pixels).
* :func:`topk_agreement`: whether the original's top-1 class is in the reconstruction's top-k.
* :func:`psnr`, :func:`ssim`: pixel fidelity (torchmetrics); reported, not the goal.
* :func:`frechet_distance`: how natural the set of reconstructions is (torchmetrics' FID machinery) in the
  feature space of a pluggable extractor: :func:`pooled_extractor` of a classifier other than the inverted
  one (tiny world) or :func:`inception_extractor` (real scale, when its weights are available).

Example:
    >>> cos = feature_cosine(cnn, "stages.3", originals, reconstructions)   # Tensor[N]
    >>> agree = topk_agreement(cnn, originals, reconstructions)             # {"top1": Tensor[N], "top5": ...}
    >>> fd = frechet_distance(originals, reconstructions, pooled_extractor(vit))
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .checks import check_images
from .errors import ArgumentValueError, BadInputError, WeightsUnavailableError
from .hooks import _device, extract_features


def _check_pair(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    if originals.shape != reconstructions.shape:
        raise BadInputError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} "
                            f"differ in shape; pass one reconstruction per original (select a sample with recon[:, s] "
                            f"from an inverter's [B, S, 3, H, W] output)")
    if originals.ndim != 4 or originals.shape[1] != 3:
        raise BadInputError(f"images are Tensor[N, 3, H, W], got {tuple(originals.shape)}")
    for name, images in (("originals", originals), ("reconstructions", reconstructions)):
        check_images(images[finite_rows(images)], name)     # rows with NaN are scored NaN; the rest must be [0, 1]


def finite_rows(images: torch.Tensor) -> torch.Tensor:
    """``Tensor[N, ...] -> Tensor[N]`` bool: True where every value of the image is finite."""
    return torch.isfinite(images.reshape(len(images), -1)).all(1).cpu()


def _on_finite(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], originals: torch.Tensor,
               reconstructions: torch.Tensor) -> torch.Tensor:
    """Apply a per-image metric to the pairs whose both images are finite; NaN elsewhere. Returns ``Tensor[N]``."""
    ok = finite_rows(originals) & finite_rows(reconstructions)
    out = torch.full((len(originals),), float("nan"))
    if ok.any():
        out[ok] = fn(originals[ok], reconstructions[ok]).float().cpu()
    return out


@torch.no_grad()
def feature_cosine(classifier: nn.Module, layer: str, originals: torch.Tensor, reconstructions: torch.Tensor, *,
                   batch_size: int = 256) -> torch.Tensor:
    """Cosine similarity between the flattened maps at ``layer`` of each original and its reconstruction.

    Args:
        classifier: the inverted classifier.
        layer: the inverted layer (``"stages.3"``).
        originals: ``Tensor[N, 3, H, W]`` in [0, 1].
        reconstructions: ``Tensor[N, 3, H, W]`` in [0, 1], same shape.

    Returns:
        ``Tensor[N]`` on the CPU; NaN where a reconstruction is not finite.

    Raises:
        ValueError: the two sets differ in shape.

    Example:
        >>> feature_cosine(cnn, "stages.3", x, x)            # tensor([1., 1., ...])
    """
    _check_pair(originals, reconstructions)

    def cos(a, b):
        fa = extract_features(classifier, a, layer, batch_size=batch_size).flatten(1).float()
        fb = extract_features(classifier, b, layer, batch_size=batch_size).flatten(1).float()
        return torch.nn.functional.cosine_similarity(fa, fb, dim=1)
    return _on_finite(cos, originals, reconstructions)


@torch.no_grad()
def cross_model_cosine(reference: nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor, *,
                       layer: str | None = None, batch_size: int = 256) -> torch.Tensor:
    """Cosine between an *independent* classifier's features of each original and its reconstruction.

    Matching the inverted model's own features can be gamed (adversarial pixels); a second model that took
    no part in the inversion cannot be.

    Args:
        reference: a classifier that is not the inverted one (``tinyworld-vit`` for a ``tinyworld-cnn`` inverter).
        originals, reconstructions: ``Tensor[N, 3, H, W]`` in [0, 1], same shape. Images of another size than
            the reference's input are resized (bilinear, antialiased) to it.
        layer: a layer of ``reference`` (flattened map); ``None`` (default) uses its pooled pre-logit features.

    Returns:
        ``Tensor[N]`` on the CPU; NaN where a reconstruction is not finite.

    Example:
        >>> cross_model_cosine(vit, x, recon)                # Tensor[N]
    """
    _check_pair(originals, reconstructions)
    if layer is not None:
        return feature_cosine(reference, layer, originals, reconstructions, batch_size=batch_size)
    extractor = pooled_extractor(reference)

    def cos(a, b):
        dev = _device(extractor)
        fa = torch.cat([extractor(a[s:s + batch_size].to(dev)) for s in range(0, len(a), batch_size)]).float()
        fb = torch.cat([extractor(b[s:s + batch_size].to(dev)) for s in range(0, len(b), batch_size)]).float()
        return torch.nn.functional.cosine_similarity(fa, fb, dim=1)
    return _on_finite(cos, originals, reconstructions)


@torch.no_grad()
def _logits(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    dev = _device(classifier)
    return torch.cat([classifier(images[s:s + batch_size].to(dev)).float().cpu()
                      for s in range(0, len(images), batch_size)])


@torch.no_grad()
def predictions(classifier: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """The classifier's top-1 class per image: ``[N, 3, H, W]`` -> ``Tensor[N]`` int64 (-1 where not finite).

    Example:
        >>> predictions(cnn, x)                               # tensor([3, 0, 7, ...])
    """
    ok = finite_rows(images)
    out = torch.full((len(images),), -1, dtype=torch.int64)
    if ok.any():
        out[ok] = _logits(classifier, images[ok], batch_size).argmax(1)
    return out


@torch.no_grad()
def topk_agreement(classifier: nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor,
                   k: Sequence[int] = (1, 5)) -> dict[str, torch.Tensor]:
    """Whether the original's top-1 class is among the reconstruction's top-k classes.

    Args:
        classifier: the classifier whose classes are compared.
        originals, reconstructions: ``Tensor[N, 3, H, W]`` in [0, 1], same shape.
        k: the k values; a k larger than the class count is clipped.

    Returns:
        ``{"top1": Tensor[N], "top5": Tensor[N], ...}`` float: 1.0 (agrees), 0.0 (does not) or NaN (the
        reconstruction is not finite), so ``.nanmean()`` is the agreement rate.

    Example:
        >>> topk_agreement(cnn, x, x)["top1"].mean()        # tensor(1.)
    """
    _check_pair(originals, reconstructions)
    ok = finite_rows(originals) & finite_rows(reconstructions)
    out = {f"top{kk}": torch.full((len(originals),), float("nan")) for kk in k}
    if ok.any():
        target = _logits(classifier, originals[ok]).argmax(1)
        rec = _logits(classifier, reconstructions[ok])
        for kk in k:
            top = rec.topk(min(kk, rec.shape[1]), dim=1).indices
            out[f"top{kk}"][ok] = (top == target[:, None]).any(1).float()
    return out


@torch.no_grad()
def psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (torchmetrics, data range 1): ``Tensor[N]``, NaN where not
    finite, ``inf`` for identical images.

    Example:
        >>> psnr(x, (x + 0.1).clamp(0, 1))                   # ~20 dB
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(originals, reconstructions)
    return _on_finite(lambda a, b: peak_signal_noise_ratio(b.float(), a.float(), data_range=1.0, reduction="none",
                                                           dim=(1, 2, 3)), originals, reconstructions)


@torch.no_grad()
def ssim(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (torchmetrics, Gaussian window 11, data range 1): ``Tensor[N]`` in
    [-1, 1], NaN where not finite.

    Example:
        >>> ssim(x, x)                                        # tensor([1., 1., ...])
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(originals, reconstructions)
    return _on_finite(lambda a, b: structural_similarity_index_measure(b.float(), a.float(), data_range=1.0,
                                                                      reduction="none"), originals, reconstructions)


class PooledFeatures(nn.Module):
    """A classifier's pooled pre-logit features as a Fréchet-distance extractor: ``[N, 3, H, W]`` in [0, 1]
    -> ``[N, D]``. Images of another size than the classifier's input are resized (bilinear, antialiased)
    to it, so any image set can be measured.

    Example:
        >>> PooledFeatures(vit)(torch.rand(2, 3, 64, 64)).shape     # [2, 128] (resized to 32 px)
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.size = tuple(classifier.input_size[-2:])
        with torch.no_grad():
            self.num_features = int(self.forward(torch.zeros(1, 3, *self.size, device=_device(classifier))).shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        m = self.classifier.model
        feats = m.forward_features(self.classifier.normalize(x))
        return m.forward_head(feats, pre_logits=True).flatten(1)


def pooled_extractor(classifier: nn.Module) -> PooledFeatures:
    """See :class:`PooledFeatures`. Example: ``fd = frechet_distance(x, rec, pooled_extractor(vit))``."""
    return PooledFeatures(classifier).eval()


def inception_extractor() -> nn.Module:
    """The standard FID Inception-v3 (torchmetrics / torch-fidelity, 2048-d pool features) for real-scale images.

    Inputs of any size are resized by the network itself to 299 px. Its weights are downloaded once by
    torch-fidelity into the torch hub cache.

    Raises:
        WeightsUnavailableError: torch-fidelity is not installed, or the weights are neither cached nor
            downloadable (no network). The message says how to fix it, or to use :func:`pooled_extractor`.

    Example:
        >>> fd = frechet_distance(real, generated, inception_extractor())
    """
    fix = ("Fix: `pip install torch-fidelity` and run once with network (the weights go to the torch hub cache, "
           f"{torch.hub.get_dir()}), or copy that cache over; or measure in a classifier's feature space with "
           "frechet_distance(real, generated, pooled_extractor(other_classifier)).")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except (ImportError, ModuleNotFoundError) as e:
        raise WeightsUnavailableError(f"the FID Inception network is unavailable ({e}). {fix}") from e
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except Exception as e:  # no torch-fidelity, no network, no cache
        raise WeightsUnavailableError(f"the FID Inception weights could not be loaded ({type(e).__name__}: {e}). "
                                      f"{fix}") from e
    net.num_features = 2048

    class _Inception(nn.Module):  # [N, 3, H, W] floats in [0, 1] -> [N, 2048]
        def __init__(self):
            super().__init__()
            self.net, self.num_features = net, 2048

        def forward(self, x):
            return self.net((x.clamp(0, 1) * 255).to(torch.uint8)).reshape(len(x), -1)
    return _Inception().eval()


@torch.no_grad()
def frechet_distance(real: torch.Tensor, generated: torch.Tensor, extractor: nn.Module | None = None, *,
                     batch_size: int = 256) -> float:
    """Fréchet distance between two image sets in ``extractor``'s feature space (torchmetrics' FID machinery).

    Args:
        real: ``Tensor[N, 3, H, W]`` in [0, 1].
        generated: ``Tensor[M, 3, H, W]`` in [0, 1]; all finite (drop non-finite rows first and report them,
            see :func:`finite_rows`).
        extractor: a module ``[B, 3, H, W] -> [B, D]`` with a ``num_features`` attribute, e.g.
            :func:`pooled_extractor` of a classifier that is *not* the inverted one; it resizes images of
            another size itself. ``None`` uses :func:`inception_extractor` (real scale).

    Returns:
        the distance, a float >= 0 (about 0 for identical sets). With few images (``N`` below the feature
        dimension) the covariances are singular and the value is noisy: compare like with like.

    Raises:
        ValueError: fewer than 2 images in a set, or non-finite images.
        WeightsUnavailableError: ``extractor=None`` and the Inception weights are not available.

    Example:
        >>> frechet_distance(x, x, pooled_extractor(vit))     # ~0.0
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(generated) < 2:
        raise ArgumentValueError(f"the Fréchet distance needs at least 2 images per set, got {len(real)} and "
                                 f"{len(generated)}")
    for name, t in (("real", real), ("generated", generated)):
        if not bool(finite_rows(t).all()):
            raise BadInputError(f"{name} has {int((~finite_rows(t)).sum())} non-finite images; drop them "
                                f"(images[finite_rows(images)]) and report how many there were")
    extractor = inception_extractor() if extractor is None else extractor
    dev = _device(extractor)
    fid = FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=True,
                                   input_img_size=(3, *getattr(extractor, "size", real.shape[-2:]))).to(dev)
    fid.inception = extractor  # keep the caller's module (torchmetrics may wrap or move it)
    for s in range(0, len(real), batch_size):
        fid.update(real[s:s + batch_size].to(dev).float(), real=True)
    for s in range(0, len(generated), batch_size):
        fid.update(generated[s:s + batch_size].to(dev).float(), real=False)
    return max(0.0, float(fid.compute()))
