"""Is this image a tiny-world image? The guard that tells a user their photo is not what a tiny-world classifier knows.

The shipped classifiers saw only 32 px renderings of 8 shapes on four background families. Given a photo they still
answer, often confidently ("heart", p = 0.75), and their maps still invert, into tiny-world shapes. What tells a
photo apart is the image itself: the tiny base's VAE, trained on tiny-world renderings only, reconstructs them
closely and a photo poorly. :func:`image_scores` is that reconstruction's root-mean-square error per image.

Measured (2026-12-07, ``tinyworld-base`` VAE, images in [0, 1] at 32 px; min / median / 95th percentile / max):

=============================================  =====  ======  =====  =====
images                                         min    median  p95    max
=============================================  =====  ======  =====  =====
96 tiny-world test images                      0.017  0.032   0.047  0.072
32 of them, gaussian blur (severity 3)         0.030  0.042   0.060  0.070
32 of them, JPEG quality 8 (severity 3)        0.038  0.053   0.063  0.064
32 of them, gaussian noise 0.16 (severity 3)   0.108  0.137   0.152  0.155
13 ``skimage.data`` photos                     0.057  0.124   0.256  0.270
=============================================  =====  ======  =====  =====

The threshold, 0.09, lies above every clean and blurred or compressed tiny-world image and catches 9 of the 13
photos (astronaut 0.13, coffee 0.12, chelsea 0.10, grass, gravel, brick, moon, clock, immunohistochemistry) and
strong noise; it misses rocket (0.070), camera (0.067), coins (0.081) and hubble_deep_field (0.057), smooth or
dark photos. The classifiers' own signals separate nothing: on these photos the CNN's confidence has median 0.99
(tiny-world images 1.00), its energy and the channel z-scores of its maps at every stage overlap the tiny world's
range. ``workbench invert`` also knows the file's size: any file that is not 32 x 32 pixels is no rendering.

Example:
    >>> scores = image_scores(clf, images)               # Tensor[B]; below 0.07 for tiny-world images
    >>> warn_if_not_tiny_world(clf, images)              # warns, naming cause and remedy, above the threshold
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import nn

from .errors import OffDistributionWarning

#: the classifiers this guard speaks for: the shipped tiny-world ones
TINY_WORLD_CLASSIFIERS = ("tinyworld-cnn", "tinyworld-vit")

#: VAE reconstruction error above which :func:`warn_if_not_tiny_world` warns (see the measurement above)
THRESHOLD = 0.09


@lru_cache(maxsize=1)
def _base():
    """The tiny diffusion base, whose VAE measures the images (loaded once per process, on the CPU)."""
    from .diffusion import DiffusionBase

    return DiffusionBase.from_pretrained("tinyworld-base")


@torch.no_grad()
def image_scores(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """How unlike tiny-world renderings each image is: ``Tensor[B, 3, 32, 32]`` in [0, 1] -> ``Tensor[B]`` on the
    CPU, the root-mean-square error of the tiny base's VAE reconstruction (below 0.07 for tiny-world images). None
    for a classifier that is not a shipped tiny-world one (this guard speaks only for those).

    Example:
        >>> image_scores(wb.load_classifier("tinyworld-cnn"), wb.TinyWorld("test", size=8).images())   # ~0.03
    """
    if getattr(classifier, "name", None) not in TINY_WORLD_CLASSIFIERS:
        return None
    base = _base()
    x = images.detach().float().cpu()
    if x.shape[-2:] != (base.image_size, base.image_size):
        x = torch.nn.functional.interpolate(x, size=(base.image_size,) * 2, mode="bilinear", antialias=True)
    return (base.decode(base.encode(x)).cpu() - x).pow(2).mean((1, 2, 3)).sqrt()


def warn_if_not_tiny_world(classifier: nn.Module, images: torch.Tensor, *, threshold: float = THRESHOLD,
                           source_size: tuple[int, int] | None = None) -> torch.Tensor | None:
    """Warn (:class:`~workbench.errors.OffDistributionWarning`) when images given to a shipped tiny-world
    classifier are not tiny-world images: their score (:func:`image_scores`) is above ``threshold``, or their file's
    ``source_size`` ``(width, height)`` is not 32 x 32. The warning names the likely cause and the remedy. Returns
    the scores (None for other classifiers).

    Example:
        >>> warn_if_not_tiny_world(wb.load_classifier("tinyworld-cnn"), photo)   # OffDistributionWarning
    """
    scores = image_scores(classifier, images)
    if scores is None:
        return None
    reasons = []
    if bool((scores > threshold).any()):
        reasons.append(f"{int((scores > threshold).sum())} of {len(scores)} look unlike it (score "
                       f"{float(scores.max()):.2f}: the tiny base's VAE error, below 0.07 for tiny-world images, "
                       f"threshold {threshold})")
    if source_size is not None and tuple(source_size) != (32, 32):
        reasons.append(f"the file is {source_size[0]}x{source_size[1]} px, not a 32x32 rendering")
    if reasons:
        name = classifier.name
        warnings.warn(
            f"these images are not from the tiny world that {name} was trained on: {'; '.join(reasons)}. {name} "
            "knows only 32 px renderings of 8 shapes, so it answers a photo in tiny-world shapes, and so does its "
            "inverter. For your own photos use a real-scale classifier and inverter (wb.presets, "
            "docs/real-scale.md); to explore the tiny world, use wb.TinyWorld images",
            OffDistributionWarning, stacklevel=2)
    return scores
