"""Edits of feature maps as pure tensor functions, with the one set of checks they share.

Two edits cover every intervention in workbench: :func:`ablate_features` sets channels to zero or to
given means, and :func:`shift_features` adds ``alpha * direction`` at every (masked) position. The hook
factories :func:`workbench.hooks.ablate_channels` and :func:`workbench.hooks.add_direction` apply them
inside a forward pass; :func:`workbench.analysis.ablation.ablate_features` and
:func:`workbench.analysis.steering.steer` apply them to captured maps. So a channel index, mean vector,
direction or mask that does not fit a map raises the same :class:`~workbench.errors.InterventionError`
with the same message, whichever way the edit was asked for.

This module imports only torch and :mod:`workbench.errors`, so both ``hooks.py`` and ``analysis/`` can
build on it.

Example:
    >>> f = torch.randn(2, 8, 4, 4)                                   # Tensor[B, C, h, w]
    >>> ablate_features(f, [3, 5])[:, 3].abs().max()                  # tensor(0.)
    >>> shift_features(f, torch.ones(8), 2.0, mask=torch.eye(4)).shape
    torch.Size([2, 8, 4, 4])
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from .checks import check_result
from .errors import InterventionError

MODES = ("zero", "mean")

#: The most channel indices one edit takes (2**20): far more than any vision model's layer has (ResNet-50's last
#: stage has 2048), and few enough to check one by one. ``range(10**9)`` is refused by its length, before a list of
#: a billion ints could exhaust the memory.
MAX_CHANNELS = 2**20
"""What :func:`ablate_features` puts in place of a channel."""


# ------------------------------------------------------------------------------------------ checks
def check_channels(channels: Any, num_channels: int | None = None) -> list[int]:
    """Channel indices as a list of non-negative ints, below ``num_channels`` when it is given.

    Args:
        channels: an int, a ``Tensor`` of ints or any iterable of ints (``3.0`` counts as 3; ``True`` does not).
        num_channels: the map's channel count ``C``, or ``None`` to check only that indices are ints >= 0.

    Returns:
        ``list[int]``, in the order given.

    Raises:
        InterventionError: an index that is not a non-negative int, or one at or beyond ``num_channels``.

    Example:
        >>> check_channels([3, 7], 192)
        [3, 7]
        >>> check_channels(torch.tensor(5))
        [5]
    """
    if isinstance(channels, (int, Tensor)) and not isinstance(channels, bool):
        channels = torch.as_tensor(channels).reshape(-1).tolist()
    elif isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__"):
        channels = [channels]   # 1.5, True, "3": refused below with the value named
    if hasattr(channels, "__len__") and len(channels) > MAX_CHANNELS:
        raise InterventionError(f"{len(channels)} channel indices: more than the {MAX_CHANNELS} an edit takes (and "
                                f"than any layer has); pass the indices of the map's own channels")
    out = []
    for c in channels:
        try:
            ok = not isinstance(c, bool) and int(c) == c and int(c) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InterventionError(f"channel indices are non-negative ints, got {c!r}")
        out.append(int(c))
        if len(out) > MAX_CHANNELS:     # an endless iterator: stop before it fills the memory
            raise InterventionError(f"more than {MAX_CHANNELS} channel indices: more than an edit takes (and than "
                                    "any layer has); pass the indices of the map's own channels")
    bad = [c for c in out if num_channels is not None and c >= num_channels]
    if bad:
        raise InterventionError(f"channel indices {bad[:5]} are out of range: this map has {num_channels} channels, "
                                f"so indices run 0..{num_channels - 1}")
    return out


def check_mask(mask: Any, spatial: Sequence[int] | None = None, batch: int | None = None) -> Tensor:
    """A spatial mask as float ``Tensor[B or 1, 1, h, w]``, checked against the map's ``(h, w)`` when given.

    Args:
        mask: ``Tensor[h, w]`` or ``Tensor[B, 1, h, w]``, bool or float (1 = inside).
        spatial: the map's ``(h, w)``, or ``None`` to check only the layout.
        batch: the map's batch size, if a per-image mask is allowed.

    Returns:
        float ``Tensor[1, 1, h, w]`` (from a 2-D mask) or ``Tensor[B, 1, h, w]``.

    Raises:
        InterventionError: another layout, spatial size or batch size. Resize a pixel mask with
        :func:`workbench.analysis.downsample_mask`.

    Example:
        >>> check_mask(torch.eye(4), (4, 4)).shape
        torch.Size([1, 1, 4, 4])
    """
    h, w = ("h", "w") if spatial is None else (int(spatial[0]), int(spatial[1]))
    if not isinstance(mask, Tensor) or mask.ndim not in (2, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        got = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise InterventionError(f"mask is Tensor[{h}, {w}] or Tensor[B, 1, {h}, {w}], got {got}")
    m = mask.float().view(1, 1, *mask.shape) if mask.ndim == 2 else mask.float()
    if spatial is not None and tuple(m.shape[-2:]) != (h, w):
        raise InterventionError(f"mask is {tuple(mask.shape[-2:])} but the map is {h}x{w}; pass a Tensor[{h}, {w}] "
                                f"(resize an image mask with workbench.analysis.downsample_mask(mask, ({h}, {w})))")
    if batch is not None and m.shape[0] not in (1, batch):
        raise InterventionError(f"mask has batch {m.shape[0]} but the map has {batch}; use 1 or {batch}")
    return m


def check_mode(mode: str, means: Any = None, num_channels: int | None = None) -> None:
    """Raise :class:`InterventionError` unless ``mode`` is one of :data:`MODES` and ``means``, if given, is
    ``Tensor[C]`` (with ``C = num_channels`` when that is given) for ``mode="mean"``.

    Example:
        >>> check_mode("mean", torch.zeros(192), 192)
    """
    if mode not in MODES:
        raise InterventionError(f"mode is 'zero' or 'mean', got {mode!r}")
    if means is None:
        return
    if mode != "mean":
        raise InterventionError("means is only used with mode='mean'")
    if not isinstance(means, Tensor) or means.ndim != 1 or (num_channels is not None and len(means) != num_channels):
        c = "C" if num_channels is None else num_channels
        got = list(means.shape) if isinstance(means, Tensor) else repr(means)
        raise InterventionError(f"means is Tensor[{c}] (per-channel means, e.g. from "
                                f"workbench.analysis.ablation.channel_means), got {got}")


def check_direction(direction: Any, num_channels: int | None = None) -> None:
    """Raise :class:`InterventionError` unless ``direction`` is ``Tensor[C]`` (``C = num_channels`` if given).

    Example:
        >>> check_direction(torch.ones(192), 192)
    """
    if not isinstance(direction, Tensor) or direction.ndim != 1:
        got = f"Tensor{list(direction.shape)}" if isinstance(direction, Tensor) else repr(direction)
        raise InterventionError(f"direction is Tensor[C], got {got}")
    if direction.is_floating_point() and not bool(torch.isfinite(direction).all()):
        raise InterventionError(f"direction holds NaN or infinite values ({int((~torch.isfinite(direction)).sum())} "
                                f"of {len(direction)}); every activation it moves would be NaN")
    if num_channels is not None and len(direction) != num_channels:
        raise InterventionError(f"direction has {len(direction)} entries, but the map has {num_channels} channels "
                                "(in dimension 1)")


def check_alpha(alpha: Any) -> float:
    """A step size as a finite ``float``; NaN, an infinity or a non-number raises :class:`InterventionError`.

    Example:
        >>> check_alpha(2)
        2.0
    """
    try:
        out = float(alpha)
    except (TypeError, ValueError, RuntimeError):
        raise InterventionError(f"alpha is a number, got {alpha!r}") from None
    if isinstance(alpha, (bool, str)) or not math.isfinite(out):
        raise InterventionError(f"alpha={alpha!r}: the step size must be a finite number (a NaN or infinite alpha "
                                "makes every activation downstream NaN)")
    return out


def _check_map(features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.ndim < 2:
        got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise InterventionError(f"features are Tensor[B, C, h, w] (or Tensor[B, C]), got {got}")


# ------------------------------------------------------------------------------------------ edits
def ablate_features(features: Tensor, channels: Any, *, mode: str = "zero", means: Tensor | None = None) -> Tensor:
    """Set ``channels`` of each map to zero or to their given means.

    Args:
        features: ``Tensor[B, C, h, w]`` (any ``Tensor[B, C, ...]`` works).
        channels: indices in ``[0, C)``; none at all returns an unchanged copy.
        mode: ``"zero"`` or ``"mean"``.
        means: ``Tensor[C]``, indexed by channel; required for ``mode="mean"``, ignored for ``mode="zero"`` (so
            one call can sweep both modes with the same arguments, as ``ablation_table`` does).

    Returns:
        ``Tensor[B, C, h, w]``, a new tensor.

    Raises:
        InterventionError: indices out of range, a bad mode, or means missing or of the wrong length.

    Example:
        >>> ablate_features(f, [3, 7], mode="mean", means=f.mean((0, 2, 3)))[:, 3].std()   # tensor(0.)
    """
    _check_map(features)
    num = features.shape[1]
    idx = check_channels(channels, num)
    check_mode(mode, means if mode == "mean" else None, num)
    if mode == "mean" and means is None:
        raise InterventionError(f"mode='mean' needs means as Tensor[{num}] (per-channel means, e.g. from "
                                "workbench.analysis.ablation.channel_means)")
    out = features.clone()
    if not idx:
        return out
    if mode == "zero":
        out[:, idx] = 0
        return out
    view = (1, len(idx)) + (1,) * (features.ndim - 2)
    out[:, idx] = means.to(out)[idx].view(view).expand(out.shape[0], -1, *out.shape[2:])
    return out


def shift_features(features: Tensor, direction: Tensor, alpha: float, mask: Tensor | None = None) -> Tensor:
    """Move maps along a channel direction: ``features + alpha * direction * mask``.

    Args:
        features: ``Tensor[B, C, h, w]`` (any ``Tensor[B, C, ...]`` works without a mask).
        direction: ``Tensor[C]``.
        alpha: step size, in units of ``direction``.
        mask: optional ``Tensor[h, w]`` or ``Tensor[B, 1, h, w]`` weighting positions (1 = full step).

    Returns:
        ``Tensor[B, C, h, w]``, a new tensor.

    Raises:
        InterventionError: a direction that is not ``Tensor[C]`` or not finite, a NaN or infinite ``alpha``, or a
            mask that does not fit the map.
        NonFiniteResultError: finite maps moved to infinity (``alpha=1e38``).

    Example:
        >>> left = torch.zeros(4, 4); left[:, :2] = 1
        >>> shift_features(f, d, 3.0, mask=left)          # the step lands in the left half only
    """
    _check_map(features)
    check_direction(direction, features.shape[1])
    alpha = check_alpha(alpha)
    step = (alpha * direction).to(features).view((1, -1) + (1,) * (features.ndim - 2))
    if mask is None:
        out = features + step
    elif features.ndim != 4:
        raise InterventionError(f"a mask needs a spatial map Tensor[B, C, h, w], got {list(features.shape)}")
    else:
        out = features + step * check_mask(mask, features.shape[-2:], features.shape[0]).to(features)
    if bool(torch.isfinite(features).all()):       # finite maps moved into Inf: the step overflowed their dtype
        check_result(out, "shift_features", f"alpha={alpha:g}, a step so large that it overflows "
                                            f"{features.dtype}; steer by a few units of the direction instead")
    return out
