"""Rendering tiny-world images from their factors (:func:`render`, :func:`render_batch`): colours, the shapes'
signed-distance functions on a 2x supersampled grid, the four backgrounds (smooth value noise from a hashed lattice),
the distractor under the main object. Vectorised in torch over the batch, on any device; on the CPU an image's bytes do
not depend on the batch it is rendered in.

Example:
    >>> render(shape="star", hue=0.1, rotation=0.3).shape          # torch.Size([3, 32, 32])
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentValueError
from .tinyworld_factors import (
    _BOOL, _CATEGORICAL, BACKGROUNDS, CLASSES, FACTOR_NAMES, FACTOR_RANGES, IMAGE_SIZE, _as_tensor, factors_from_dicts)

_SUPERSAMPLE = 2
_RENDER_CHUNK = {"cpu": 1024, "cuda": 16384}  # images per pass: cache-sized on CPU, launch-bound on GPU
_NOISE_SPANS = 4  # B-spline spans across the image; the lattice has _NOISE_SPANS + 3 points per side


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
