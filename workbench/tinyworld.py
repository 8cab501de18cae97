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

Example:
    >>> ds = TinyWorld("train", size=1000, seed=0)
    >>> item = ds[3]; item["image"].shape, item["label"], item["factors"]["shape"]
    (torch.Size([3, 32, 32]), 2, 'triangle')
    >>> x = ds.images()                                  # Tensor[1000, 3, 32, 32]
    >>> img = render(shape="star", hue=0.1, rotation=0.3)  # Tensor[3, 32, 32]
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .checks import check_allocation, check_seed, checked_int
from .errors import ArgumentTypeError, ArgumentValueError

IMAGE_SIZE = 32
"""Height and width of every image, in pixels."""

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "crescent")
"""Shape names; the label of an image is the index of its shape here."""

BACKGROUNDS = ("flat", "gradient", "stripes", "noise")
"""Background families."""

OOD_COMBOS = frozenset({("star", "stripes")})
"""(shape, background) pairs held out of every ordinary split; ``ood=True`` produces only these."""

SPLITS = ("train", "val", "test")
"""Split names; each has its own random stream, so splits never share an image."""

DEFAULT_SIZES = {"train": 50_000, "val": 2_000, "test": 2_000}
"""Number of images in each split when ``TinyWorld(size=None)``."""

TWO_PI = 2.0 * math.pi

FACTOR_RANGES: dict[str, Any] = {
    # main object
    "shape": CLASSES,                      # class name; label = CLASSES.index(shape)
    "hue": (0.0, 1.0),                     # periodic; sampled in [0, 1)
    "saturation": (0.5, 1.0),
    "value": (0.3, 1.0),                   # sampled in [0.75, 1] on dark and [0.3, 0.55] on pale backgrounds
    "size": (0.18, 0.36),                  # circumradius / image width (0.36 -> 11.5 px)
    "x": (0.0, 1.0),                       # centre, left -> right; sampled in [size, 1 - size]
    "y": (0.0, 1.0),                       # centre, top -> bottom; sampled in [size, 1 - size]
    "rotation": (0.0, TWO_PI),             # radians, counter-clockwise; periodic
    # background
    "background": BACKGROUNDS,
    "bg_hue": (0.0, 1.0),                  # first colour
    "bg_hue2": (0.0, 1.0),                 # second colour (gradient, stripes, noise)
    "bg_saturation": (0.0, 1.0),           # shared by both colours
    "bg_value": (0.0, 1.0),
    "bg_value2": (0.0, 1.0),
    "bg_angle": (0.0, TWO_PI),             # radians; direction of the gradient and across the stripes
    "stripe_freq": (2.0, 6.0),             # stripe periods per image width
    "stripe_phase": (0.0, 1.0),            # fraction of a period
    "noise_seed": (0, 2**31 - 1),          # integer; seeds the noise lattice
    # distractor (drawn under the main object)
    "distractor": (False, True),
    "distractor_shape": CLASSES,
    "distractor_hue": (0.0, 1.0),
    "distractor_saturation": (0.5, 1.0),
    "distractor_value": (0.3, 1.0),
    "distractor_size": (0.08, 0.12),
    "distractor_x": (0.0, 1.0),
    "distractor_y": (0.0, 1.0),
    "distractor_rotation": (0.0, TWO_PI),
}
"""Valid range of every factor: ``(low, high)`` inclusive for numbers, a tuple of names for categories."""

FACTOR_NAMES = tuple(FACTOR_RANGES)
"""Every factor, in a fixed order (the columns of :meth:`TinyWorld.factor_table`)."""

DEFAULT_FACTORS: dict[str, Any] = {
    "shape": "circle", "hue": 0.0, "saturation": 1.0, "value": 1.0, "size": 0.3, "x": 0.5, "y": 0.5,
    "rotation": 0.0,
    "background": "flat", "bg_hue": 0.6, "bg_hue2": 0.8, "bg_saturation": 0.6, "bg_value": 0.2,
    "bg_value2": 0.3, "bg_angle": 0.0, "stripe_freq": 3.0, "stripe_phase": 0.0, "noise_seed": 0,
    "distractor": False, "distractor_shape": "square", "distractor_hue": 0.15,
    "distractor_saturation": 1.0, "distractor_value": 1.0, "distractor_size": 0.1,
    "distractor_x": 0.15, "distractor_y": 0.15, "distractor_rotation": 0.0,
}
"""Factors :func:`render` uses for those it is not given: a red circle, centred, on a dark blue background."""

_CATEGORICAL = {"shape": CLASSES, "background": BACKGROUNDS, "distractor_shape": CLASSES}
_INTEGER = {"noise_seed"}
_BOOL = {"distractor"}

CATEGORICAL_FACTORS = frozenset({"shape", "background", "distractor_shape", "distractor"})
"""Factors without an order: the names and the distractor's presence (probes classify them)."""

FACTOR_PERIODS: dict[str, float] = {
    "hue": 1.0, "bg_hue": 1.0, "bg_hue2": 1.0, "distractor_hue": 1.0, "stripe_phase": 1.0,   # in turns
    "rotation": TWO_PI, "distractor_rotation": TWO_PI, "bg_angle": TWO_PI,                    # in radians
}
"""The circular factors and their periods: a value and the value plus its period render alike (hues and the stripe
phase in turns, angles in radians). Probes, drifts and concept matches compare them on the circle."""
_FLOAT = tuple(n for n in FACTOR_NAMES if n not in _CATEGORICAL and n not in _INTEGER and n not in _BOOL)

_SUPERSAMPLE = 2
_RENDER_CHUNK = {"cpu": 1024, "cuda": 16384}  # images per pass: cache-sized on CPU, launch-bound on GPU
_NOISE_SPANS = 4  # B-spline spans across the image; the lattice has _NOISE_SPANS + 3 points per side


# ---------------------------------------------------------------------------------------------
# Index-based randomness: a counter-based hash, so item i depends only on (seed, split, i).
# ---------------------------------------------------------------------------------------------

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# Each random draw has a fixed stream id; append new ones at the end so old items never change.
_FIELDS = {name: k for k, name in enumerate((
    "shape", "background", "hue", "saturation", "value", "size", "x", "y", "rotation",
    "theme", "bg_hue", "bg_hue2", "bg_saturation", "bg_value", "bg_value2", "bg_angle",
    "stripe_freq", "stripe_phase", "noise_seed", "distractor", "distractor_shape", "distractor_hue",
    "distractor_saturation", "distractor_value", "distractor_size", "distractor_rotation",
    "cand_x0", "cand_y0", "cand_x1", "cand_y1", "cand_x2", "cand_y2", "cand_x3", "cand_y3", "ood_combo",
))}


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _item_keys(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """One uint64 key per item from (seed, stream, index)."""
    base = np.full(index.shape, int(seed) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    key = _mix64(base + _GOLDEN)
    key = _mix64(key ^ np.uint64(stream))
    return _mix64(key ^ index.astype(np.uint64))


def _uniform(keys: np.ndarray, field: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """float64 uniform draws in [low, high), one per key, from the named stream."""
    z = _mix64(keys + np.uint64((_FIELDS[field] + 1) * int(_GOLDEN) & 0xFFFFFFFFFFFFFFFF))
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return low + (high - low) * u


_LUMA = np.array([0.299, 0.587, 0.114])


def _luminance(h: np.ndarray, s: np.ndarray, v: np.ndarray | float) -> np.ndarray:
    """Rec. 601 luma of HSV colours (float64 arrays)."""
    rgb = [v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0) for k in (np.mod(h * 6.0 + o, 6.0) for o in (5, 3, 1))]
    return sum(w * c for w, c in zip(_LUMA, rgb))


def _light_saturation_cap(h: np.ndarray) -> np.ndarray:
    """Largest saturation in [0.5, 1] that keeps the luminance of hue ``h`` at value 1 >= 0.45."""
    return np.clip(0.55 / (1.0 - _luminance(h, 1.0, 1.0)), 0.5, 1.0)


def _capped(u: np.ndarray, low: float, high: np.ndarray) -> np.ndarray:
    """Map uniforms in [0, 1) to [low, high] elementwise."""
    return low + (high - low) * u


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ArgumentValueError(f"unknown split {split!r}; valid splits are {SPLITS}")
    return SPLITS.index(split)


_Draw = Callable[..., np.ndarray]
"""``u(field, low=0.0, high=1.0) -> ndarray[n]``: the items' uniform draws from one named stream."""


def _shape_and_background(u: _Draw, ood: bool) -> tuple[np.ndarray, np.ndarray]:
    """Class and background codes, ``int64[n]`` each: the held-out pairs removed, or kept alone if ``ood``."""
    n_cls, n_bg = len(CLASSES), len(BACKGROUNDS)
    if ood:
        combos = sorted(OOD_COMBOS)
        pick = np.minimum((u("ood_combo") * len(combos)).astype(np.int64), len(combos) - 1)
        shape = np.array([CLASSES.index(s) for s, _ in combos])[pick]
        background = np.array([BACKGROUNDS.index(b) for _, b in combos])[pick]
        return shape, background
    allowed = [[b for b in range(n_bg) if (CLASSES[c], BACKGROUNDS[b]) not in OOD_COMBOS] for c in range(n_cls)]
    counts = np.array([len(a) for a in allowed])
    table = np.array([a + [a[-1]] * (n_bg - len(a)) for a in allowed])
    shape = np.minimum((u("shape") * n_cls).astype(np.int64), n_cls - 1)
    slot = np.minimum((u("background") * counts[shape]).astype(np.int64), counts[shape] - 1)
    return shape, table[shape, slot]


def _colours(u: _Draw) -> dict[str, np.ndarray]:
    """Object, distractor and background colours that contrast in luminance (and background hues by >= 0.2).

    Dark theme (2/3 of items): object and distractor value in [0.75, 1], saturation capped so that even
    blue stays light; background value <= 0.3 and luminance >= 0.2 below both objects'.
    Pale theme: background value >= 0.85, saturation <= 0.35; objects' value in [0.3, 0.55], capped to
    sit about 0.3 in luminance below the paler background colour.
    """
    dark = u("theme") < 2.0 / 3.0
    hue, d_hue = u("hue"), u("distractor_hue")
    bg_hue = np.mod(hue + u("bg_hue", 0.2, 0.8), 1.0)
    bg_hue2 = np.mod(hue + u("bg_hue2", 0.2, 0.8), 1.0)
    bg_saturation = np.where(dark, u("bg_saturation", 0.3, 0.9), u("bg_saturation", 0.0, 0.35))
    saturation = _capped(u("saturation"), 0.5, np.where(dark, _light_saturation_cap(hue), 1.0))
    d_saturation = _capped(u("distractor_saturation"), 0.5, np.where(dark, _light_saturation_cap(d_hue), 1.0))
    lum_obj = _luminance(hue, saturation, 1.0)    # luminance at value 1
    lum_d = _luminance(d_hue, d_saturation, 1.0)
    lum_bg = _luminance(bg_hue, bg_saturation, 1.0)
    lum_bg2 = _luminance(bg_hue2, bg_saturation, 1.0)
    bright_value = u("value", 0.75, 1.0)
    bright_d_value = u("distractor_value", 0.75, 1.0)
    lum_floor = np.minimum(bright_value * lum_obj, bright_d_value * lum_d) - 0.2
    pale_bg_value = u("bg_value", 0.85, 1.0)
    pale_bg_value2 = u("bg_value2", 0.85, 1.0)
    lum_ceiling = np.minimum(pale_bg_value * lum_bg, pale_bg_value2 * lum_bg2) - 0.3
    value = np.where(dark, bright_value, _capped(u("value"), 0.3, np.clip(lum_ceiling / lum_obj, 0.3, 0.55)))
    distractor_value = np.where(dark, bright_d_value,
                                _capped(u("distractor_value"), 0.3, np.clip(lum_ceiling / lum_d, 0.3, 0.55)))
    bg_value = np.where(dark, _capped(u("bg_value"), 0.0, np.clip(lum_floor / lum_bg, 0.0, 0.3)), pale_bg_value)
    bg_value2 = np.where(dark, _capped(u("bg_value2"), 0.0, np.clip(lum_floor / lum_bg2, 0.0, 0.3)), pale_bg_value2)
    return {"hue": hue, "saturation": saturation, "value": value,
            "bg_hue": bg_hue, "bg_hue2": bg_hue2, "bg_saturation": bg_saturation,
            "bg_value": bg_value, "bg_value2": bg_value2,
            "distractor_hue": d_hue, "distractor_saturation": d_saturation, "distractor_value": distractor_value}


def _placement(u: _Draw) -> dict[str, np.ndarray]:
    """Sizes and centres: the object inside the frame, the distractor at the farthest of four random spots."""
    size = u("size", *FACTOR_RANGES["size"])
    x = size + (1.0 - 2.0 * size) * u("x")
    y = size + (1.0 - 2.0 * size) * u("y")
    d_size = u("distractor_size", *FACTOR_RANGES["distractor_size"])
    cand_x = np.stack([d_size + (1.0 - 2.0 * d_size) * u(f"cand_x{k}") for k in range(4)], axis=1)
    cand_y = np.stack([d_size + (1.0 - 2.0 * d_size) * u(f"cand_y{k}") for k in range(4)], axis=1)
    best = np.argmax((cand_x - x[:, None]) ** 2 + (cand_y - y[:, None]) ** 2, axis=1)
    rows = np.arange(len(size))
    return {"size": size, "x": x, "y": y, "distractor_size": d_size,
            "distractor_x": cand_x[rows, best], "distractor_y": cand_y[rows, best]}


def _other_factors(u: _Draw) -> dict[str, np.ndarray]:
    """Rotations, background pattern, noise seed and the distractor's presence and shape."""
    n_cls = len(CLASSES)
    return {
        "rotation": u("rotation", 0.0, TWO_PI), "bg_angle": u("bg_angle", 0.0, TWO_PI),
        "stripe_freq": u("stripe_freq", *FACTOR_RANGES["stripe_freq"]), "stripe_phase": u("stripe_phase"),
        "noise_seed": (u("noise_seed") * 2**31).astype(np.int64),
        "distractor": u("distractor") < 0.5,
        "distractor_shape": np.minimum((u("distractor_shape") * n_cls).astype(np.int64), n_cls - 1),
        "distractor_rotation": u("distractor_rotation", 0.0, TWO_PI),
    }


def sample_factors(n: int, *, seed: int, split: str, start: int = 0, ood: bool = False) -> dict[str, Tensor]:
    """Draw the factors of items ``start .. start + n - 1`` of a split.

    Item ``i`` depends only on ``(seed, split, ood, i)``, never on ``n`` or ``start``: the factors of
    item 7 are the same whether drawn alone or in a batch of 100k. Each factor comes from its own named
    stream of a counter-based hash (:data:`_FIELDS`), so draws need no shared generator state.

    Args:
        n: number of items.
        seed: integer seed of the world, in ``[0, 2**64)`` (the hash tells no more apart).
        split: one of :data:`SPLITS`.
        start: index of the first item.
        ood: if True draw only the held-out (shape, background) pairs of :data:`OOD_COMBOS`;
            otherwise those pairs never occur.

    Returns:
        Batched factors on the CPU, keyed by :data:`FACTOR_NAMES`: ``shape``, ``background`` and
        ``distractor_shape`` as int64 codes (indices into :data:`CLASSES` / :data:`BACKGROUNDS`),
        ``noise_seed`` int64, ``distractor`` bool, everything else float32; each ``Tensor[n]``.

    Example:
        >>> f = sample_factors(4, seed=0, split="train")
        >>> f["shape"], f["size"].shape
        (tensor([...]), torch.Size([4]))
    """
    n = checked_int(n, "n", minimum=0)
    start = checked_int(start, "start", minimum=0)
    seed = check_seed(seed)
    stream = 2 * _split_id(split) + int(bool(ood))
    keys = _item_keys(seed, stream, np.arange(start, start + n, dtype=np.uint64))

    def u(field: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        return _uniform(keys, field, low, high)

    shape, background = _shape_and_background(u, ood)
    out = {"shape": shape, "background": background, **_colours(u), **_placement(u), **_other_factors(u)}
    return {name: _as_tensor(name, out[name]) for name in FACTOR_NAMES}


def _as_tensor(name: str, values: Any, device: torch.device | str | None = None) -> Tensor:
    """Factor values as a tensor of the dtype :func:`render_batch` expects."""
    if name in _BOOL:
        dtype = torch.bool
    elif name in _CATEGORICAL or name in _INTEGER:
        dtype = torch.int64
    else:
        dtype = torch.float32
    if isinstance(values, np.ndarray):
        return torch.from_numpy(values).to(device=device, dtype=dtype)
    return torch.as_tensor(values, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Colour, signed distances and backgrounds. Local shape coordinates are y-up with circumradius 1.
# ---------------------------------------------------------------------------------------------

def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] -> RGB, ``Tensor[n]`` each -> ``Tensor[n, 3]``."""
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = h * 6.0 + offset
        k = k - 6.0 * torch.floor(k / 6.0)
        f = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(v - v * s * f)
    return torch.stack(channels, dim=1)


def _length(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y)


def _sd_box(px: Tensor, py: Tensor, bx: float, by: float) -> Tensor:
    qx, qy = px.abs() - bx, py.abs() - by
    return _length(qx.clamp(min=0.0), qy.clamp(min=0.0)) + torch.maximum(qx, qy).clamp(max=0.0)


def _sd_circle(px: Tensor, py: Tensor) -> Tensor:
    return _length(px, py) - 0.88


def _sd_square(px: Tensor, py: Tensor) -> Tensor:
    return _sd_box(px, py, 0.68, 0.68)


def _sd_triangle(px: Tensor, py: Tensor) -> Tensor:
    # Equilateral, pointing up, circumradius 1 (Inigo Quilez's sdEquilateralTriangle).
    k, r = math.sqrt(3.0), math.sqrt(3.0) / 2.0
    qx, qy = px.abs() - r, py + r / k
    fold = qx + k * qy > 0.0
    qx, qy = torch.where(fold, (qx - k * qy) * 0.5, qx), torch.where(fold, (-k * qx - qy) * 0.5, qy)
    qx = qx - qx.clamp(-2.0 * r, 0.0)
    return -_length(qx, qy) * torch.sign(qy)


def _sd_star(px: Tensor, py: Tensor) -> Tensor:
    # Five points, one pointing up, outer radius 1, inner ratio 0.45 (Quilez's sdStar5).
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    px = px.abs()
    m = (k1x * px + k1y * py).clamp(min=0.0) * 2.0
    px, py = px - m * k1x, py - m * k1y
    m = (k2x * px + k2y * py).clamp(min=0.0) * 2.0
    px, py = px - m * k2x, py - m * k2y
    px, py = px.abs(), py - 1.0
    rf = 0.45
    bax, bay = rf * -k1y, rf * k1x - 1.0
    h = ((px * bax + py * bay) * (1.0 / (bax * bax + bay * bay))).clamp(0.0, 1.0)
    return _length(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)


def _sd_cross(px: Tensor, py: Tensor) -> Tensor:
    return torch.minimum(_sd_box(px, py, 0.95, 0.3), _sd_box(px, py, 0.3, 0.95))


def _sd_ring(px: Tensor, py: Tensor) -> Tensor:
    return (_length(px, py) - 0.68).abs() - 0.27


def _sd_heart(px: Tensor, py: Tensor) -> Tensor:
    # Quilez's sdHeart (tip at the origin, lobes up to y = 1.1), recentred and scaled to circumradius 1.
    scale = 0.631
    hx, hy = px.abs() * scale, py * scale + 0.63
    lobe = _length(hx - 0.25, hy - 0.75) - math.sqrt(2.0) / 4.0
    m = (hx + hy).clamp(min=0.0) * 0.5
    a, b = hx * hx + (hy - 1.0) * (hy - 1.0), (hx - m) * (hx - m) + (hy - m) * (hy - m)
    body = torch.sqrt(torch.minimum(a, b)) * torch.sign(hx - hy)
    return torch.where(hx + hy > 1.0, lobe, body) * (1.0 / scale)


def _sd_crescent(px: Tensor, py: Tensor) -> Tensor:
    return torch.maximum(_length(px, py) - 0.95, 0.78 - _length(px - 0.42, py))


_SDFS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _sd_circle, _sd_square, _sd_triangle, _sd_star, _sd_cross, _sd_ring, _sd_heart, _sd_crescent)
assert len(_SDFS) == len(CLASSES)


def _cos_sin(angle: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of per-image angles, computed in float64 so float32 results do not depend on the batch."""
    a = angle.double()
    return torch.cos(a).float(), torch.sin(a).float()


def _pixel_centres(n: int, device: torch.device) -> Tensor:
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def _shape_alpha(shape: Tensor, x: Tensor, y: Tensor, size: Tensor, rotation: Tensor, *, ss: int) -> Tensor:
    """Anti-aliased coverage of each image's shape, ``Tensor[B]`` factors -> ``Tensor[B, 32, 32]`` in [0, 1]."""
    n_img, s = shape.shape[0], IMAGE_SIZE * ss
    alpha = torch.zeros(n_img, IMAGE_SIZE, IMAGE_SIZE, device=x.device)
    u = _pixel_centres(s, x.device)
    cos, sin = _cos_sin(rotation)
    for code, sdf in enumerate(_SDFS):
        idx = torch.nonzero(shape == code).squeeze(1)
        if idx.numel() == 0:
            continue
        r = size[idx].view(-1, 1, 1)
        dx = (u.view(1, 1, s) - x[idx].view(-1, 1, 1)) / r          # [n, 1, s]
        dy = (y[idx].view(-1, 1, 1) - u.view(1, s, 1)) / r          # [n, s, 1], y up
        c, sn = cos[idx].view(-1, 1, 1), sin[idx].view(-1, 1, 1)
        lx, ly = dx * c + dy * sn, dy * c - dx * sn                 # [n, s, s], rotated by -rotation
        cover = (0.5 - sdf(lx, ly) * (r * float(s))).clamp(0.0, 1.0)
        alpha[idx] = _box_downsample(cover, ss)
    return alpha


def _box_downsample(a: Tensor, ss: int) -> Tensor:
    """Average ``ss x ss`` blocks, ``[n, 32*ss, 32*ss] -> [n, 32, 32]``, summing in a fixed order."""
    if ss == 1:
        return a
    a = a.view(a.shape[0], IMAGE_SIZE, ss, IMAGE_SIZE, ss)
    total = a[:, :, 0, :, 0]
    for i in range(ss):
        for j in range(ss):
            if i or j:
                total = total + a[:, :, i, :, j]
    return total * (1.0 / (ss * ss))


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2**32), overflow-free."""
    mask = 0xFFFFFFFF

    def mul(v: Tensor, c: int) -> Tensor:  # (v * c) mod 2**32 without leaving int64
        return ((((v >> 16) * c) & 0xFFFF) << 16) + (v & 0xFFFF) * c & mask

    x = x ^ (x >> 16)
    x = mul(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul(x, 0x846CA68B)
    return x ^ (x >> 16)


def _bspline_weights(device: torch.device) -> Tensor:
    """Uniform cubic B-spline weights from the noise lattice to pixel centres, ``Tensor[32, spans + 3]``."""
    t = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * _NOISE_SPANS
    cell = np.floor(t).astype(int)
    f = t - cell
    w = np.zeros((IMAGE_SIZE, _NOISE_SPANS + 3))
    basis = [(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6]
    for k, b in enumerate(basis):
        w[np.arange(IMAGE_SIZE), cell + k] = b
    return torch.tensor(w, dtype=torch.float32, device=device)


def _noise_field(noise_seed: Tensor) -> Tensor:
    """Smooth value noise in [0, 1], ``Tensor[n]`` seeds -> ``Tensor[n, 32, 32]``."""
    g = _NOISE_SPANS + 3
    cells = torch.arange(g * g, device=noise_seed.device, dtype=torch.int64)
    lattice = _hash32(_hash32(noise_seed.view(-1, 1) & 0xFFFFFFFF) ^ cells.view(1, -1))
    lattice = ((lattice >> 8).float() * (1.0 / 2**24)).view(-1, g, g)   # [n, row, col]
    w = _bspline_weights(noise_seed.device)                              # [32, g]
    rows = lattice[:, :, 0:1] * w[:, 0].view(1, 1, -1)                   # [n, g, 32]: along x
    for b in range(1, g):
        rows = rows + lattice[:, :, b:b + 1] * w[:, b].view(1, 1, -1)
    field = rows[:, 0:1, :] * w[:, 0].view(1, -1, 1)                    # [n, 32, 32]: along y
    for a in range(1, g):
        field = field + rows[:, a:a + 1, :] * w[:, a].view(1, -1, 1)
    return ((field - 0.5) * 2.5 + 0.5).clamp(0.0, 1.0)  # the spline shrinks contrast; stretch it back


def _background_mix(f: Mapping[str, Tensor]) -> Tensor:
    """Per-pixel weight of the second background colour, ``Tensor[B, 32, 32]`` in [0, 1]."""
    background = f["background"]
    device = background.device
    t = torch.zeros(background.shape[0], IMAGE_SIZE, IMAGE_SIZE, device=device)
    u = _pixel_centres(IMAGE_SIZE, device) - 0.5
    cos, sin = _cos_sin(f["bg_angle"])

    def along(idx: Tensor) -> Tensor:  # [n, 32, 32] coordinate along bg_angle, in [-0.71, 0.71]
        return u.view(1, 1, -1) * cos[idx].view(-1, 1, 1) + u.view(1, -1, 1) * sin[idx].view(-1, 1, 1)

    idx = torch.nonzero(background == BACKGROUNDS.index("gradient")).squeeze(1)
    if idx.numel():
        t[idx] = (along(idx) * (1.0 / math.sqrt(2.0)) + 0.5).clamp(0.0, 1.0)
    idx = torch.nonzero(background == BACKGROUNDS.index("stripes")).squeeze(1)
    if idx.numel():
        freq = f["stripe_freq"][idx].view(-1, 1, 1)
        w = along(idx) * freq + f["stripe_phase"][idx].view(-1, 1, 1)
        tri = ((w - torch.floor(w)) - 0.5).abs() * 2.0                   # triangle wave in [0, 1]
        sharpness = float(IMAGE_SIZE) / (3.0 * freq)                      # edges about 1.5 px wide
        t[idx] = ((tri - 0.5) * sharpness + 0.5).clamp(0.0, 1.0)
    idx = torch.nonzero(background == BACKGROUNDS.index("noise")).squeeze(1)
    if idx.numel():
        t[idx] = _noise_field(f["noise_seed"][idx])
    return t


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _check_batch(factors: Mapping[str, Tensor]) -> None:
    missing = [n for n in FACTOR_NAMES if n not in factors]
    if missing:
        raise ArgumentValueError(f"factors are missing {missing}; render_batch needs all of {list(FACTOR_NAMES)}")
    unknown = [n for n in factors if n not in FACTOR_RANGES]
    if unknown:
        raise ArgumentValueError(f"unknown factors {unknown}; valid factors are {list(FACTOR_NAMES)}")
    n = factors["shape"].shape[0]
    for name in FACTOR_NAMES:
        v = factors[name]
        if v.ndim != 1 or v.shape[0] != n:
            raise ArgumentValueError(f"factor {name!r} must be a Tensor[{n}], got shape {tuple(v.shape)}")
        if n == 0 or name in _BOOL:
            continue
        if name in _CATEGORICAL:
            low, high = 0, len(_CATEGORICAL[name]) - 1
        else:
            low, high = FACTOR_RANGES[name]
        bad = ~((v >= low) & (v <= high))
        if bool(bad.any()):
            value = v[bad][0].item()
            raise ArgumentValueError(f"factor {name!r} = {value} is outside its valid range [{low}, {high}]")


def render_batch(factors: Mapping[str, Tensor], *, device: torch.device | str | None = None,
                 supersample: int = _SUPERSAMPLE) -> Tensor:
    """Render a batch of images from batched factors, vectorised over the batch.

    Args:
        factors: ``Tensor[B]`` per factor name, as returned by :func:`sample_factors` (categories as
            int64 codes, ``distractor`` bool, ``noise_seed`` int64, the rest float).
        device: where to render; defaults to the device of ``factors["x"]``. CPU and CUDA agree to
            within about 1e-6; on the CPU an image's bytes do not depend on the rest of the batch.
        supersample: shapes are evaluated on a ``(32*supersample)^2`` grid and averaged down.

    Returns:
        ``Tensor[B, 3, 32, 32]`` float32 in [0, 1] on ``device``.

    Raises:
        ValueError: a factor is missing, unknown, badly shaped or outside :data:`FACTOR_RANGES`.

    Example:
        >>> images = render_batch(sample_factors(16, seed=0, split="train"))   # [16, 3, 32, 32]
    """
    _check_batch(factors)
    device = torch.device(device) if device is not None else factors["x"].device
    f = {name: _as_tensor(name, v, device) for name, v in factors.items()}
    n = f["x"].shape[0]
    out = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    step = _RENDER_CHUNK.get(device.type, 1024)
    for start in range(0, n, step):
        chunk = {name: v[start:start + step] for name, v in f.items()}
        out[start:start + step] = _render_chunk(chunk, supersample)
    return out


def _render_chunk(f: Mapping[str, Tensor], ss: int) -> Tensor:
    # 1. Background: two colours blended by a per-pixel weight.
    c1 = _hsv_to_rgb(f["bg_hue"], f["bg_saturation"], f["bg_value"]).view(-1, 3, 1, 1)
    c2 = _hsv_to_rgb(f["bg_hue2"], f["bg_saturation"], f["bg_value2"]).view(-1, 3, 1, 1)
    image = c1 + (c2 - c1) * _background_mix(f).unsqueeze(1)            # [B, 3, 32, 32]

    # 2. Distractor, under the main object.
    idx = torch.nonzero(f["distractor"]).squeeze(1)
    if idx.numel():
        a = _shape_alpha(f["distractor_shape"][idx], f["distractor_x"][idx], f["distractor_y"][idx],
                         f["distractor_size"][idx], f["distractor_rotation"][idx], ss=ss).unsqueeze(1)
        colour = _hsv_to_rgb(f["distractor_hue"][idx], f["distractor_saturation"][idx],
                             f["distractor_value"][idx]).view(-1, 3, 1, 1)
        image[idx] = image[idx] + (colour - image[idx]) * a

    # 3. Main object on top.
    a = _shape_alpha(f["shape"], f["x"], f["y"], f["size"], f["rotation"], ss=ss).unsqueeze(1)
    colour = _hsv_to_rgb(f["hue"], f["saturation"], f["value"]).view(-1, 3, 1, 1)
    image = image + (colour - image) * a
    return image.clamp(0.0, 1.0)


def _validate_factor(name: str, value: Any) -> Any:
    """Check one factor in public form (names for categories) and return it normalised."""
    if name not in FACTOR_RANGES:
        raise TypeError(f"unknown factor {name!r}; valid factors are {list(FACTOR_NAMES)}")
    valid = FACTOR_RANGES[name]
    if name in _CATEGORICAL:
        if value not in valid:
            raise ArgumentValueError(f"factor {name!r} = {value!r} is not one of {valid}")
        return value
    if name in _BOOL:
        if not isinstance(value, (bool, np.bool_)) and value not in (0, 1):
            raise ArgumentValueError(f"factor {name!r} = {value!r} must be True or False")
        return bool(value)
    low, high = valid
    if name in _INTEGER and (isinstance(value, bool) or int(value) != value):
        raise ArgumentValueError(f"factor {name!r} = {value!r} must be an integer in [{low}, {high}]")
    if not (low <= value <= high):  # also rejects NaN
        raise ArgumentValueError(f"factor {name!r} = {value!r} is outside its valid range [{low}, {high}]")
    return int(value) if name in _INTEGER else float(value)


def factors_from_dicts(records: Sequence[Mapping[str, Any]], *, fill_defaults: bool = True) -> dict[str, Tensor]:
    """Public per-image factor dicts -> batched factor tensors for :func:`render_batch`.

    Args:
        records: one dict per image in the form of ``TinyWorld[i]["factors"]`` (names for categories);
            a ``label`` key is ignored.
        fill_defaults: take omitted factors from :data:`DEFAULT_FACTORS` (else omitting one raises).

    Returns:
        ``Tensor[len(records)]`` per factor name.

    Raises:
        TypeError: an unknown factor name. ValueError: a value outside its range, or a missing factor.
    """
    columns: dict[str, list] = {name: [] for name in FACTOR_NAMES}
    for record in records:
        full = dict(DEFAULT_FACTORS) if fill_defaults else {}
        full.update({k: v for k, v in record.items() if k != "label"})
        for name, value in full.items():
            value = _validate_factor(name, value)
            if name in _CATEGORICAL:
                value = _CATEGORICAL[name].index(value)
            columns[name].append(value)
        missing = [n for n in FACTOR_NAMES if n not in full]
        if missing:
            raise ArgumentValueError(f"factors are missing {missing}")
    return {name: _as_tensor(name, values) for name, values in columns.items()}


def factors_to_dicts(factors: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    """Batched factor tensors -> one JSON-serialisable dict per image (names for categories, plus ``label``).

    Example:
        >>> factors_to_dicts(sample_factors(1, seed=0, split="val"))[0]["shape"]
        'ring'
    """
    columns = {name: factors[name].detach().cpu().tolist() for name in FACTOR_NAMES}
    n = len(columns["shape"])
    records = []
    for i in range(n):
        record: dict[str, Any] = {}
        for name in FACTOR_NAMES:
            v = columns[name][i]
            record[name] = _CATEGORICAL[name][v] if name in _CATEGORICAL else v
        record["label"] = columns["shape"][i]
        records.append(record)
    return records


def render(*, device: torch.device | str | None = None, **factors: Any) -> Tensor:
    """Render one image from explicit factors; omitted ones come from :data:`DEFAULT_FACTORS`.

    Change one factor at a time to probe what a model responds to. Any factor name of
    :data:`FACTOR_NAMES` is accepted; a ``label`` key (as in ``TinyWorld[i]["factors"]``) is ignored,
    so ``render(**ds[i]["factors"])`` reproduces ``ds[i]["image"]``. Defaults: a red (``hue=0``)
    circle of ``size=0.3`` at the centre, ``rotation=0``, on a flat dark blue background
    (``bg_hue=0.6, bg_saturation=0.6, bg_value=0.2``), no distractor.

    Args:
        device: where to render (CPU by default).
        **factors: factor values in public form: ``shape="star"``, ``background="noise"``,
            ``distractor=True``, numbers within :data:`FACTOR_RANGES`.

    Returns:
        ``Tensor[3, 32, 32]`` float32 in [0, 1].

    Raises:
        TypeError: an unknown factor name (the message lists the valid ones).
        ValueError: a value outside its range (the message names the factor, value and range).

    Example:
        >>> a = render(shape="star", rotation=0.0)
        >>> b = render(shape="star", rotation=0.6)       # the same star, turned
    """
    batch = factors_from_dicts([factors])
    return render_batch(batch, device=device)[0]


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
