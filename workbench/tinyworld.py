"""TinyWorld: a procedural 32x32 RGB world of coloured shapes whose every factor is known.

Each image shows one main object (the class) on a background, and sometimes a smaller distractor
object drawn *under* the main object. Every pixel is a function of a handful of factors:

* the object: ``shape`` (one of :data:`CLASSES`), ``hue``, ``saturation``, ``value``, ``size``
  (circumradius as a fraction of the image width), centre ``x``, ``y`` (in [0, 1], origin top left)
  and ``rotation`` (radians, counter-clockwise);
* the background: ``background`` (one of :data:`BACKGROUNDS`) blends two colours
  ``(bg_hue, bg_saturation, bg_value)`` and ``(bg_hue2, bg_saturation, bg_value2)``: ``flat`` uses
  the first only, ``gradient`` blends them along direction ``bg_angle``, ``stripes`` alternates them
  ``stripe_freq`` times per image width along ``bg_angle`` shifted by ``stripe_phase``, and ``noise``
  mixes them with smooth value noise (a 7x7 lattice of random values from ``noise_seed``, upsampled
  with a cubic B-spline, so a small VAE can reconstruct it);
* the distractor: ``distractor`` (bool) and ``distractor_shape``, ``distractor_hue``,
  ``distractor_saturation``, ``distractor_value``, ``distractor_size``, ``distractor_x``,
  ``distractor_y``, ``distractor_rotation``.

:data:`FACTOR_RANGES` lists the valid range of each factor. :func:`sample_factors` draws factors so
the object is always visible: backgrounds are dark (value <= 0.3) behind bright objects
(value >= 0.75) or pale (value >= 0.85, saturation <= 0.35) behind darker ones (value <= 0.55), every
background colour differs from the object and the distractor by at least 0.2 in luminance, and
background hues sit at least 0.2 away from the object's hue. The object stays inside the frame
(``size <= x, y <= 1 - size``) and the distractor is placed at the farthest of four random spots.
Combinations in :data:`OOD_COMBOS` (a star on stripes) never appear in the ordinary splits;
``ood=True`` produces only them.

Rendering is vectorised in torch over the batch (no per-image Python loop) and runs on any device:
shapes are signed-distance functions evaluated on a 2x supersampled grid, turned into soft coverage
and averaged down, which anti-aliases edges. Only exact arithmetic (+, -, *, /, sqrt, min, max) runs
per pixel, so on the CPU an image's bytes do not depend on the batch it is rendered in.

This module holds the dataset (:class:`TinyWorld`, :func:`tinyworld_images`); the factors' vocabulary lives in
:mod:`.tinyworld_factors`, their draw in :mod:`.tinyworld_sampling` and rendering in :mod:`.tinyworld_rendering`,
and every public name is importable from here.

Example:
    >>> ds = TinyWorld("train", size=1000, seed=0)
    >>> item = ds[3]; item["image"].shape, item["label"], item["factors"]["shape"]
    (torch.Size([3, 32, 32]), 2, 'triangle')
    >>> x = ds.images()                                  # Tensor[1000, 3, 32, 32]
    >>> img = render(shape="star", hue=0.1, rotation=0.3)  # Tensor[3, 32, 32]
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .checks import check_allocation, check_seed, checked_int
from .errors import ArgumentTypeError
from .tinyworld_factors import (
    _CATEGORICAL, BACKGROUNDS, CATEGORICAL_FACTORS, CLASSES, DEFAULT_FACTORS, DEFAULT_SIZES, FACTOR_NAMES,
    FACTOR_PERIODS, FACTOR_RANGES, IMAGE_SIZE, OOD_COMBOS, SPLITS, TWO_PI, factors_from_dicts, factors_to_dicts)
from .tinyworld_rendering import render, render_batch
from .tinyworld_sampling import _split_id, sample_factors

#: the public names: the factors (:mod:`.tinyworld_factors`), their draw (:mod:`.tinyworld_sampling`) and rendering
#: (:mod:`.tinyworld_rendering`) live in their own modules, and ``workbench.tinyworld`` re-exports them
__all__ = ["BACKGROUNDS", "CATEGORICAL_FACTORS", "CLASSES", "DEFAULT_FACTORS", "DEFAULT_SIZES", "FACTOR_NAMES",
           "FACTOR_PERIODS", "FACTOR_RANGES", "IMAGE_SIZE", "OOD_COMBOS", "SPLITS", "TWO_PI", "TinyWorld",
           "factors_from_dicts", "factors_to_dicts", "render", "render_batch", "sample_factors", "tinyworld_images"]


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

class TinyWorld(torch.utils.data.Dataset):
    """A split of TinyWorld, rendered lazily in cached chunks.

    Images are rendered deterministically from ``(seed, split, ood, index)``: the same bytes every
    time on a given device, whatever the access order. Chunks of ``chunk_size`` consecutive items are rendered
    together on first access and kept in a least-recently-used cache of ``cache_chunks`` chunks, so
    a huge split never needs to be held in memory.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split has its own random stream.
        size: number of items; ``None`` uses :data:`DEFAULT_SIZES` (train 50000, val 2000, test 2000).
        seed: integer world seed in ``[0, 2**64)``; any other (``1.9``, ``-1``, ``2**64``) is refused here.
        ood: if True, items are drawn only from the held-out pairs of :data:`OOD_COMBOS`.
        chunk_size: items rendered together.
        cache_chunks: chunks kept in memory (each ``chunk_size * 12 KiB``).
        device: where to render (cached images always live on the CPU).

    Each item is a dict: ``image`` ``Tensor[3, 32, 32]`` float in [0, 1], ``label`` int, and
    ``factors`` a JSON-serialisable dict of the factors (names for categories).

    Example:
        >>> ds = TinyWorld("val", size=256)
        >>> ds[0]["image"].shape, len(ds)
        (torch.Size([3, 32, 32]), 256)
        >>> x, y = ds.images(), ds.labels()               # [256, 3, 32, 32], [256]
    """

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, ood: bool = False, *,
                 chunk_size: int = 1024, cache_chunks: int = 64, device: torch.device | str | None = None):
        _split_id(split)
        size = DEFAULT_SIZES[split] if size is None else checked_int(size, "size", minimum=0)
        chunk_size = checked_int(chunk_size, "chunk_size", minimum=1)
        cache_chunks = checked_int(cache_chunks, "cache_chunks", minimum=1)
        self.split, self.size, self.seed, self.ood = split, size, check_seed(seed), bool(ood)
        self.chunk_size, self.cache_chunks, self.device = chunk_size, cache_chunks, device
        self._factors: dict[str, Tensor] | None = None
        self._cache: OrderedDict[int, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"TinyWorld(split={self.split!r}, size={self.size}, seed={self.seed}, ood={self.ood})"

    @property
    def factors(self) -> dict[str, Tensor]:
        """Factors of every item, ``Tensor[len(self)]`` per name (codes for categories), computed once."""
        if self._factors is None:
            # every factor of every item at once, in float64 while they are drawn: refuse a size that cannot fit
            check_allocation((self.size, len(FACTOR_NAMES) + 1), torch.float64, "cpu",
                             f"TinyWorld(size={self.size})'s factors")
            self._factors = sample_factors(self.size, seed=self.seed, split=self.split, ood=self.ood)
        return self._factors

    def _index(self, i: int) -> int:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self!r}")
        return i % self.size

    def _chunk(self, k: int) -> Tensor:
        """Images of chunk ``k``, ``Tensor[chunk, 3, 32, 32]`` on the CPU, rendered on first use."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        lo, hi = k * self.chunk_size, min((k + 1) * self.chunk_size, self.size)
        chunk = {name: v[lo:hi] for name, v in self.factors.items()}
        images = render_batch(chunk, device=self.device).cpu()
        self._cache[k] = images
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return images

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(checked_int(i, "index"))         # ds[1.9] or ds["3"] is refused, not truncated
        image = self._chunk(i // self.chunk_size)[i % self.chunk_size]
        factors = factors_to_dicts({name: v[i:i + 1] for name, v in self.factors.items()})[0]
        return {"image": image.clone(), "label": factors["label"], "factors": factors}

    def _indices(self, indices: Iterable[int] | Tensor | None) -> Tensor:
        if indices is None:
            return torch.arange(self.size)
        idx = torch.as_tensor(indices)
        if idx.numel() and (idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool):
            raise ArgumentTypeError(f"indices of dtype {idx.dtype}: pass integer indices (a bool mask or floats "
                                    "would be read as the items 0 and 1, or truncated)")
        idx = idx.to(torch.int64).reshape(-1)
        bad = (idx < -self.size) | (idx >= self.size)
        if bool(bad.any()):
            raise IndexError(f"index {idx[bad][0].item()} out of range for {self!r}")
        return idx % max(self.size, 1)

    def images(self, indices: Iterable[int] | Tensor | None = None) -> Tensor:
        """Images of many items at once (all by default), ``Tensor[N, 3, 32, 32]`` float32 on the CPU."""
        idx = self._indices(indices)
        out = torch.empty(idx.numel(), 3, IMAGE_SIZE, IMAGE_SIZE)
        chunk_of = idx // self.chunk_size
        for k in torch.unique(chunk_of).tolist():
            where = torch.nonzero(chunk_of == k).squeeze(1)
            out[where] = self._chunk(k)[idx[where] - k * self.chunk_size]
        return out

    def labels(self, indices: Iterable[int] | Tensor | None = None) -> Tensor:
        """Labels (indices into :data:`CLASSES`) of many items, ``Tensor[N]`` int64."""
        return self.factors["shape"][self._indices(indices)].clone()

    def factor_table(self, indices: Iterable[int] | Tensor | None = None) -> pd.DataFrame:
        """One row per item with every factor (names for categories) and ``label``, indexed by item."""
        idx = self._indices(indices)
        data: dict[str, Any] = {}
        for name in FACTOR_NAMES:
            values = self.factors[name][idx].numpy()
            data[name] = np.asarray(_CATEGORICAL[name])[values] if name in _CATEGORICAL else values
        data["label"] = self.factors["shape"][idx].numpy()
        return pd.DataFrame(data, index=pd.Index(idx.numpy(), name="index"))


def tinyworld_images(num_images: int, *, split: str = "train", seed: int = 0, device: torch.device | str = "cpu",
                     progress: bool = False) -> tuple[Tensor, Tensor]:
    """Render ``num_images`` tiny-world images in chunks on ``device``: ``(uint8 [N, 3, 32, 32], int64 [N])``.

    The same items as ``TinyWorld(split, size=num_images, seed=seed)``, rendered straight on the device that
    trains on them (a device the renderer cannot use renders on the CPU and moves the images).

    Example:
        >>> images, labels = tinyworld_images(64, split="test")       # uint8 [64, 3, 32, 32], int64 [64]
    """
    from tqdm.auto import tqdm

    ds = TinyWorld(split, size=num_images, seed=seed)
    chunk = 1024
    imgs = []
    with tqdm(total=num_images, desc=f"render {split}", unit="img", disable=not progress) as bar:
        for s in range(0, num_images, chunk):
            part = {k: v[s:s + chunk] for k, v in ds.factors.items()}
            try:
                x = render_batch(part, device=device)
            except RuntimeError:
                x = render_batch(part, device="cpu").to(device)
            imgs.append((x * 255).round().to(torch.uint8))
            bar.update(len(x))
    return torch.cat(imgs), ds.labels().to(device)
