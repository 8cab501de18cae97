"""The factors of a tiny-world image: their names, valid ranges, defaults and periods (:data:`FACTOR_RANGES`,
:data:`DEFAULT_FACTORS`, :data:`FACTOR_PERIODS`...), the classes and backgrounds, and the conversion between public
per-image dicts (names for categories) and the batched tensors :func:`~workbench.tinyworld_rendering.render_batch`
takes (:func:`factors_from_dicts`, :func:`factors_to_dicts`). :mod:`workbench.tinyworld` describes the world.

Example:
    >>> factors_from_dicts([{"shape": "star", "hue": 0.1}])["shape"]         # tensor([3])
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentValueError

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
