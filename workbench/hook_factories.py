"""Interventions as hooks: :func:`ablate_channels` and :func:`add_direction` build hooks with readable reprs, for
:func:`workbench.hooks.run_with_hooks`, over the edits and checks of :mod:`workbench.interventions` (the same edits
that the analysis families apply to captured maps).

Example:
    >>> wb.run_with_hooks(cnn, x, {"stages.2": ablate_channels([3, 7], mode="mean", means=mu)})
    >>> add_direction(star.direction, alpha=2.0)     # add_direction(direction=Tensor[192], alpha=2.0)
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor

from . import interventions
from .errors import InterventionError


def _shape_str(t: Tensor) -> str:
    return f"Tensor{list(t.shape)}"


@contextlib.contextmanager
def _at_layer(name: str) -> Iterator[None]:
    """Prefix an :class:`InterventionError` raised inside the block with the layer it happened at."""
    try:
        yield
    except InterventionError as err:
        raise InterventionError(f"layer {name!r}: {err}") from None


class ChannelAblation:
    """Hook that sets channels to zero or to their mean. Build it with :func:`ablate_channels`."""

    def __init__(self, channels: Sequence[int], mode: str, means: Tensor | None):
        self.channels, self.mode, self.means = list(channels), mode, means

    def __call__(self, act: Tensor, *, name: str = "?") -> Tensor:
        with _at_layer(name):
            means = self.means
            if self.mode == "mean" and means is None and act.ndim >= 2:   # the mean over the batch and space
                idx = interventions.check_channels(self.channels, act.shape[1])
                means = act.new_zeros(act.shape[1])
                means[idx] = act[:, idx].mean(dim=[0] + list(range(2, act.ndim)))
            return interventions.ablate_features(act, self.channels, mode=self.mode, means=means)

    def __repr__(self) -> str:
        means = "" if self.means is None else f", means={_shape_str(self.means)}"
        return f"ablate_channels({self.channels}, mode={self.mode!r}{means})"


def ablate_channels(channels: int | Sequence[int], mode: str = "zero", means: Tensor | None = None) -> ChannelAblation:
    """A hook that replaces some channels by zero (``mode="zero"``) or by their mean (``mode="mean"``).

    The edit is :func:`workbench.interventions.ablate_features`, applied to the layer's activation.

    Args:
        channels: channel indices (non-negative), an int or any iterable of ints.
        mode: ``"zero"`` or ``"mean"``.
        means: ``Tensor[C]`` per-channel means over a dataset, indexed by channel (``mode="mean"``
            only). Without it, the mean over the current batch and space is used.

    Returns:
        ChannelAblation: ``fn(act: Tensor[B, C, H, W], *, name) -> Tensor[B, C, H, W]``.

    Raises:
        InterventionError: a bad mode, means or index here, or (when it runs) an index or means that
        do not fit the layer's channels.

    Example:
        >>> wb.run_with_hooks(clf, x, {"layer3": wb.ablate_channels([3, 7], mode="mean")})
    """
    channels = interventions.check_channels(channels)
    if not channels:
        raise InterventionError("ablate_channels got no channels")
    interventions.check_mode(mode, means)
    return ChannelAblation(channels, mode, means)


class DirectionAddition:
    """Hook that adds ``alpha * direction`` at every (masked) position. Build it with :func:`add_direction`."""

    def __init__(self, direction: Tensor, alpha: float, mask: Tensor | None):
        self.direction, self.alpha, self.mask = direction, alpha, mask

    def __call__(self, act: Tensor, *, name: str = "?") -> Tensor:
        with _at_layer(name):
            return interventions.shift_features(act, self.direction, self.alpha, self.mask)

    def __repr__(self) -> str:
        mask = "" if self.mask is None else f", mask={_shape_str(self.mask)}"
        return f"add_direction(direction={_shape_str(self.direction)}, alpha={self.alpha}{mask})"


def add_direction(direction: Tensor, alpha: float, mask: Tensor | None = None) -> DirectionAddition:
    """A hook that moves activations along a channel direction: ``act + alpha * direction * mask``.

    The edit is :func:`workbench.interventions.shift_features`, applied to the layer's activation.

    Args:
        direction: ``Tensor[C]``.
        alpha: step size.
        mask: optional ``Tensor[H, W]`` or ``Tensor[B, 1, H, W]`` weighting positions (1 = full step).

    Returns:
        DirectionAddition: ``fn(act: Tensor[B, C, H, W], *, name) -> Tensor[B, C, H, W]``.

    Raises:
        InterventionError: a direction that is not 1-D or a mask that is not 2-D / 4-D here; a channel
        count or mask size that does not fit the layer when it runs.

    Example:
        >>> wb.run_with_hooks(clf, x, {"stages.1": wb.add_direction(d, alpha=3.0)})
    """
    interventions.check_direction(direction)
    alpha = interventions.check_alpha(alpha)
    if mask is not None:
        interventions.check_mask(mask)
    return DirectionAddition(direction.detach(), alpha, None if mask is None else mask.detach())
