"""Drawing tiny-world factors (:func:`sample_factors`): a counter-based hash makes item ``i`` depend only on
``(seed, split, i)``, and the draws keep every object visible against its background (:mod:`workbench.tinyworld`
states the rules).

Example:
    >>> sample_factors(4, seed=0, split="train")["shape"]           # Tensor[4] of class indices
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from torch import Tensor

from .checks import check_seed, checked_int
from .errors import ArgumentValueError
from .tinyworld_factors import BACKGROUNDS, CLASSES, FACTOR_NAMES, FACTOR_RANGES, OOD_COMBOS, SPLITS, TWO_PI, _as_tensor

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
