"""Regions of a tiny-world image: the class of what lies inside a mask (:func:`region_probabilities`), the disk over
each image's object from its factors (:func:`object_masks`), and how much inversions vary on the object against the
background (:func:`invariance_by_region`).

Example:
    >>> region_probabilities(cnn, images, left_half).argmax(1)                # the class of the left half
    >>> invariance_by_region(samples, ds.factor_table()).mean()              # object vs background spread
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import check_mask, class_probabilities

def region_probabilities(classifier: nn.Module, images: Tensor, mask: Tensor) -> Tensor:
    """Class probabilities of one region: outside ``mask`` the image is painted with the region's median colour.

    On a flat background the median colour is the background, so the crop shows only the objects inside
    the region, at their original place and scale.

    Args:
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        mask: ``Tensor[H, W]``, 1 inside the region.

    Returns:
        ``Tensor[N, K]``.

    Example:
        >>> region_probabilities(cnn, a, info["mask"]).argmax(1) == info["classes_a"]
    """
    m = check_mask(mask, images.shape[-2:]).bool()[0, 0]
    fill = images[:, :, m].median(dim=2).values[:, :, None, None]
    return class_probabilities(classifier, torch.where(m, images, fill))



def object_masks(table, size: int = 32) -> Tensor:
    """Disks covering each image's main object, from its factors: ``Tensor[N, 1, size, size]`` bool.

    The disk has the object's circumradius, so it covers the object and a little background.
    """
    ys, xs = torch.meshgrid((torch.arange(size) + 0.5) / size, (torch.arange(size) + 0.5) / size, indexing="ij")
    x = torch.as_tensor(table["x"].to_numpy(copy=True), dtype=torch.float32).view(-1, 1, 1)
    y = torch.as_tensor(table["y"].to_numpy(copy=True), dtype=torch.float32).view(-1, 1, 1)
    r = torch.as_tensor(table["size"].to_numpy(copy=True), dtype=torch.float32).view(-1, 1, 1)
    return (((xs - x) ** 2 + (ys - y) ** 2) <= r ** 2)[:, None]


def invariance_by_region(samples: Tensor, table):
    """Mean invariance-map value (spread across samples) on the object and on the background, per image.

    Args:
        samples: ``Tensor[B, S, 3, H, W]`` with ``S >= 2``.
        table: the inverted images' factor table (object position and size).

    Returns:
        pandas.DataFrame with ``object`` and ``background`` columns, one row per image.

    Example:
        >>> invariance_by_region(samples, ds.factor_table()).mean()
    """
    import pandas as pd

    from ..inverters.featinv import invariance_map

    spread = invariance_map(samples)                                 # [B, 1, H, W]
    m = object_masks(table, samples.shape[-1]).float()
    obj = (spread * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)
    bg = (spread * (1 - m)).sum((1, 2, 3)) / (1 - m).sum((1, 2, 3)).clamp_min(1)
    return pd.DataFrame({"object": obj.numpy(), "background": bg.numpy()}, index=table.index)
