"""The factor reader: a network that reads every known factor of a tiny-world image back from its pixels.

The tiny world knows why each image looks as it does (:mod:`workbench.tinyworld`). The factor reader is trained on
real renders to read those factors back, so that an inversion can be graded factor by factor by a model that took no
part in making it: does the CNN's ``stages.3`` keep the object's position but drop its hue?

What it reads (:data:`READ_FACTORS`):

* as classes: ``shape`` (the class), ``background`` (flat, gradient, stripes, noise), ``distractor`` (present);
* as an angle: ``hue`` (period 1);
* as values: ``saturation``, ``size``, ``x``, ``y``;
* ``rotation`` as an angle modulo the shape's symmetry (a square repeats every quarter turn, a star every fifth; a
  circle and a ring have none and are not scored), one head per shape.

Errors are measured in units of each factor's **spread** (its standard deviation over real images; an angle's is
that of a uniform angle, ``period / sqrt(12)``), so that 1.0 means "no better than a random real image". Class-like
factors are scored as accuracy. The reader's own score on real images is the **ceiling** an inversion can reach.

Example:
    >>> reader = load_factor_reader()                           # data/tinyworld-factor-reader.*
    >>> read = reader.read(images)                              # {"shape": Tensor[B], "hue": Tensor[B], ...}
    >>> errors = factor_errors(read, TinyWorld("test", size=64).factors)   # {"shape": Tensor[B] of 0/1, ...}
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tinyworld import BACKGROUNDS, CLASSES, FACTOR_RANGES, TWO_PI

#: The shipped factor reader's name (``data/<name>.safetensors`` and ``.json``).
READER_NAME = "tinyworld-factor-reader"

#: The factors it reads and how: ``"class"`` (with its number of classes), ``"angle"`` (with its period) or
#: ``"value"`` (with its range, for standardising).
READ_FACTORS: dict[str, tuple[str, Any]] = {
    "shape": ("class", len(CLASSES)),
    "background": ("class", len(BACKGROUNDS)),
    "distractor": ("class", 2),
    "hue": ("angle", 1.0),
    "saturation": ("value", FACTOR_RANGES["saturation"]),
    "size": ("value", FACTOR_RANGES["size"]),
    "x": ("value", (0.0, 1.0)),
    "y": ("value", (0.0, 1.0)),
    "rotation": ("angle", TWO_PI),
}

#: Rotational symmetry order of each shape, in :data:`~workbench.tinyworld.CLASSES` order: a shape looks the same
#: after ``2 pi / order``; 0 marks shapes with no orientation (circle, ring), whose rotation is not scored.
ROTATION_ORDER = (0, 4, 3, 5, 4, 0, 1, 1)

#: Factors scored as accuracy (1 when read right), the rest as an error in spread units (lower is better).
CLASS_FACTORS = tuple(n for n, (kind, _) in READ_FACTORS.items() if kind == "class")

#: The reader's backbone: a timm ResNet (basic blocks, output stride 8, so its last map is 4x4) without pooling; its
#: head flattens that map, so that where things are survives to the position and size outputs.
READER_ARCH = {"block": "basic", "layers": [1, 1, 1, 1], "channels": [32, 64, 96, 128], "stem_width": 32,
               "output_stride": 8}
#: Width of the head's hidden layer (flattened 4x4 map -> hidden -> every factor's outputs).
READER_HIDDEN = 256
#: Training seed of the shipped reader (the classifiers use 0, the judges 11 to 13).
READER_SEED = 21


def _head_sizes() -> dict[str, int]:
    sizes = {}
    for name, (kind, arg) in READ_FACTORS.items():
        if name == "rotation":
            sizes[name] = 2 * len(CLASSES)
        else:
            sizes[name] = arg if kind == "class" else (2 if kind == "angle" else 1)
    return sizes


HEAD_SIZES = _head_sizes()
NUM_OUTPUTS = sum(HEAD_SIZES.values())


def spread(name: str) -> float:
    """A factor's standard deviation over real images (the unit of :func:`factor_errors`).

    Angles: a uniform angle's, ``period / sqrt(12)`` (rotation: per shape, divided by its symmetry order, see
    :func:`rotation_period`). Values: measured once on 20,000 real renders of the test split with seed 0.
    """
    kind, arg = READ_FACTORS[name]
    if kind == "angle":
        return arg / math.sqrt(12)
    if kind == "value":
        return _value_spreads()[name]
    raise KeyError(f"{name!r} is scored as accuracy and has no spread")


_SPREADS: dict[str, float] = {}


def _value_spreads() -> dict[str, float]:
    if not _SPREADS:
        from .tinyworld import sample_factors

        f = sample_factors(20_000, seed=0, split="test")
        _SPREADS.update({n: float(f[n].float().std()) for n, (k, _) in READ_FACTORS.items() if k == "value"})
    return _SPREADS


def rotation_period(shape: Tensor) -> Tensor:
    """``Tensor[B]`` of class indices -> the period of their rotation, ``2 pi / order`` (NaN: not scored)."""
    order = torch.tensor(ROTATION_ORDER, dtype=torch.float32, device=shape.device)[shape.long()]
    return torch.where(order > 0, TWO_PI / order.clamp(min=1), torch.full_like(order, float("nan")))


class FactorReader(nn.Module):
    """A timm ResNet with a spatial head whose outputs are the heads of :data:`READ_FACTORS`, with the tiny world's
    normalisation.

    Args:
        arch: overrides of :data:`READER_ARCH` (tests use smaller widths).

    Example:
        >>> reader = FactorReader()
        >>> raw = reader(images)        # Tensor[B, NUM_OUTPUTS]
        >>> read = reader.read(images)  # decoded factors, Tensor[B] each (rotation: Tensor[B, 8], one per shape)
    """

    def __init__(self, arch: Mapping[str, Any] | None = None):
        super().__init__()
        from .zoo import TINY_MEAN, TINY_STD, build_network

        self.arch = {**READER_ARCH, **(arch or {})}
        backbone = build_network("resnet", {**self.arch, "num_classes": 0, "global_pool": ""})
        side = 32 // 8  # output stride 8 on the tiny world's 32 px
        self.model = nn.Sequential(backbone, nn.Flatten(1),
                                   nn.Linear(backbone.num_features * side * side, READER_HIDDEN), nn.GELU(),
                                   nn.Linear(READER_HIDDEN, NUM_OUTPUTS))
        self.register_buffer("mean", torch.tensor(TINY_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(TINY_STD).view(1, 3, 1, 1), persistent=False)
        self.name = READER_NAME

    def extra_repr(self) -> str:
        return f"name={self.name!r}, factors={list(READ_FACTORS)}"

    def forward(self, images: Tensor) -> Tensor:
        """``Tensor[B, 3, 32, 32]`` in [0, 1] -> raw head outputs ``Tensor[B, NUM_OUTPUTS]``."""
        return self.model((images - self.mean) / self.std)

    def heads(self, raw: Tensor) -> dict[str, Tensor]:
        """Split raw outputs ``[B, NUM_OUTPUTS]`` into one tensor per factor (rotation: ``[B, 8, 2]``)."""
        out = dict(zip(HEAD_SIZES, raw.split(list(HEAD_SIZES.values()), dim=1)))
        out["rotation"] = out["rotation"].reshape(len(raw), len(CLASSES), 2)
        return out

    @torch.no_grad()
    def read(self, images: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
        """Read the factors of ``images`` ``[B, 3, 32, 32]`` in [0, 1].

        Returns:
            ``shape``, ``background``, ``distractor``: ``Tensor[B]`` int64 class indices; ``hue``: ``Tensor[B]`` in
            [0, 1); ``saturation``, ``size``, ``x``, ``y``: ``Tensor[B]``; ``rotation``: ``Tensor[B, 8]``, the
            angle in radians read under each shape's symmetry (in [0, 2 pi / order)).
        """
        parts = [self.heads(self(images[s:s + batch_size].float())) for s in range(0, len(images), batch_size)]
        h = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out: dict[str, Tensor] = {}
        for name, (kind, arg) in READ_FACTORS.items():
            if kind == "class":
                out[name] = h[name].argmax(1)
            elif name == "hue":
                out[name] = (torch.atan2(h[name][:, 1], h[name][:, 0]) / TWO_PI) % 1.0
            elif name == "rotation":
                order = torch.tensor([max(o, 1) for o in ROTATION_ORDER], dtype=torch.float32, device=images.device)
                angle = torch.atan2(h[name][..., 1], h[name][..., 0]) % TWO_PI  # [B, 8], order * rotation
                out[name] = angle / order
            else:
                lo, hi = arg
                out[name] = lo + (h[name][:, 0] + 1) * (hi - lo) / 2
        return out


def _truth(factors: Mapping[str, Tensor], name: str) -> Tensor:
    return factors[name].long() if READ_FACTORS[name][0] == "class" else factors[name].float()


def reader_loss(reader: FactorReader, raw: Tensor, factors: Mapping[str, Tensor]) -> Tensor:
    """Training loss of the reader's raw outputs ``[B, NUM_OUTPUTS]`` against true ``factors`` (``Tensor[B]`` per
    name, as :func:`~workbench.tinyworld.sample_factors` gives them): cross-entropy for classes, squared error of
    the unit vector for angles (rotation: of ``order * rotation``, at the true shape's head, skipped for circles and
    rings) and of the standardised value for values."""
    h = reader.heads(raw)
    loss = raw.new_zeros(())
    for name, (kind, arg) in READ_FACTORS.items():
        t = _truth(factors, name).to(raw.device)
        if kind == "class":
            loss = loss + F.cross_entropy(h[name], t)
        elif name == "rotation":
            shape = factors["shape"].long().to(raw.device)
            order = torch.tensor(ROTATION_ORDER, dtype=torch.float32, device=raw.device)[shape]
            pred = h[name][torch.arange(len(raw), device=raw.device), shape]  # [B, 2]
            target = torch.stack([torch.cos(order * t), torch.sin(order * t)], 1)
            scored = (order > 0).float()
            loss = loss + ((pred - target) ** 2).sum(1).mul(scored).sum() / scored.sum().clamp(min=1)
        elif kind == "angle":
            target = torch.stack([torch.cos(TWO_PI / arg * t), torch.sin(TWO_PI / arg * t)], 1)
            loss = loss + ((h[name] - target) ** 2).sum(1).mean()
        else:
            lo, hi = arg
            loss = loss + ((h[name][:, 0] - (2 * (t - lo) / (hi - lo) - 1)) ** 2).mean()
    return loss


def _circular(a: Tensor, b: Tensor, period: Tensor | float) -> Tensor:
    d = torch.remainder(a - b, period)
    return torch.minimum(d, period - d)


def factor_errors(read: Mapping[str, Tensor], factors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Score what the reader read against the true factors, per image.

    Args:
        read: :meth:`FactorReader.read` of ``B`` images.
        factors: the true factors of the images they should show (``Tensor[B]`` per name, codes for classes).

    Returns:
        ``Tensor[B]`` per factor of :data:`READ_FACTORS`: 1.0 / 0.0 for the class-like ones (read right or not);
        the absolute error in units of :func:`spread` for the rest (circular for angles; rotation is NaN for
        circles and rings, which have none).
    """
    out: dict[str, Tensor] = {}
    for name, (kind, arg) in READ_FACTORS.items():
        r, t = read[name].cpu(), _truth(factors, name).cpu()
        if kind == "class":
            out[name] = (r == t).float()
        elif name == "rotation":
            shape = factors["shape"].long().cpu()
            period = rotation_period(shape)
            picked = r[torch.arange(len(t)), shape]
            out[name] = _circular(picked, t, period) / (period / math.sqrt(12))
        elif kind == "angle":
            out[name] = _circular(r, t, arg) / spread(name)
        else:
            out[name] = (r - t).abs() / spread(name)
    return out


def load_factor_reader(*, device: str | torch.device = "cpu", root: str | Path | None = None) -> FactorReader:
    """The shipped factor reader (``data/tinyworld-factor-reader.*``, or ``root``), in eval mode.

    Raises:
        WeightsUnavailableError: its weights or card are missing, corrupted or do not fit each other.
    """
    from .errors import WeightsUnavailableError
    from .weights import card_path, load_state, read_card, weights_path

    root = Path(root) if root is not None else None
    card = read_card(READER_NAME, root)
    with torch.random.fork_rng(devices=[]):        # its initial weights, replaced below, leave the caller's RNG
        reader = FactorReader(card.get("arch"))
    try:
        reader.model.load_state_dict(load_state(weights_path(READER_NAME, root)), strict=True)
    except RuntimeError as e:
        raise WeightsUnavailableError(
            f"the card {card_path(READER_NAME, root)} does not match the weights in {weights_path(READER_NAME, root)}:"
            f" {str(e).splitlines()[0]} ... Retrain with `workbench train-factor-reader` or restore both files with "
            "`git checkout data/`.") from e
    reader.card = card
    return reader.to(device).eval()
