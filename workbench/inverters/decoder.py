"""The decoder baseline: a deterministic conv net from a feature map to an image.

Following Dosovitskiy and Brox, "Inverting visual representations with convolutional networks" (CVPR 2016)
and "Generating images with perceptual similarity metrics based on deep networks" (NeurIPS 2016): an
up-convolutional decoder is trained to map a classifier's features at one layer back to the image, with a
pixel loss plus a feature loss (the classifier's features of the output should match the input features).
It gives one answer per map (the mean of what the features allow), so its samples are all the same image.

The map ``Tensor[B, C, h, w]`` is normalised per channel (statistics fixed before training), lifted to
``hidden_channels`` by a 3x3 conv, then doubled in size ``log2(image_size / h)`` times by
nearest-neighbour upsampling and two 3x3 convs with GELU, and mapped to RGB in [0, 1] by a sigmoid.

Example:
    >>> dec = load_inverter("tinyworld-cnn/stages.3-decoder")
    >>> images = dec.invert(features, num_samples=1)          # Tensor[B, 1, 3, 32, 32] in [0, 1]
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ArgumentValueError, InverterMismatchError
from .base import InverterBase, register_inverter
from .interface import (
    describe, normalize_features, register_feature_statistics, register_to_config, set_feature_statistics)


class _UpBlock(nn.Sequential):
    """``[B, c_in, s, s] -> [B, c_out, 2s, 2s]``: nearest upsampling, then two 3x3 convs with GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.GELU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GELU())


@register_inverter("decoder")
class DecoderInverter(InverterBase):
    """A conv decoder that inverts one classifier layer: ``[B, C, h, w] -> [B, 3, H, W]``.

    Args:
        classifier_name: the classifier the features come from (``"tinyworld-cnn"``...).
        layer: the layer name, as in ``layer_table`` (``"stages.3"``, ``"blocks.5"``).
        feature_shape: ``(C, h, w)`` of the map at that layer; ``h == w`` and ``image_size / h`` a power of 2.
        image_size: ``H == W`` of the output images.
        hidden_channels: width of the first block; each upsampling block halves it, down to ``min_channels``.
        min_channels: narrowest block width.

    The constructor arguments are the config (:attr:`config`), saved as JSON with ``decoder.safetensors`` by
    :meth:`save_pretrained`. It is an :class:`~workbench.inverters.base.InverterBase`; being deterministic, it
    ignores ``invert``'s ``sampler``, ``seed`` and ``generator``.

    Example:
        >>> dec = DecoderInverter("tinyworld-cnn", "stages.3", (192, 4, 4), image_size=32)
        >>> dec(torch.randn(2, 192, 4, 4)).shape           # torch.Size([2, 3, 32, 32])
    """

    #: config keys that are not constructor arguments: recorded for loading to check
    derived_config = ("pooling",)
    weights_name = "decoder.safetensors"

    @register_to_config
    def __init__(self, classifier_name: str, layer: str, feature_shape: Sequence[int], image_size: int = 32, *,
                 hidden_channels: int = 128, min_channels: int = 16):
        super().__init__()
        if len(feature_shape) != 3:
            raise ArgumentValueError(f"feature_shape must be three numbers (C, h, w), got {tuple(feature_shape)}; "
                                     "pass the shape of one map without its batch axis, e.g. (64, 8, 8)")
        c, h, w = (int(s) for s in feature_shape)
        ups = math.log2(image_size / h) if h > 0 else -1
        if h != w or ups < 0 or not float(ups).is_integer():
            raise InverterMismatchError(
                f"DecoderInverter needs a square map whose side divides image_size={image_size} by a power of 2; "
                f"got feature_shape={tuple(feature_shape)}; pick a layer whose map is square with a side of "
                f"image_size / 2**k, or another image_size")
        self.classifier_name, self.layer = classifier_name, layer
        self.feature_shape, self.image_size = (c, h, w), int(image_size)
        self.hidden_channels, self.min_channels = int(hidden_channels), int(min_channels)
        register_feature_statistics(self, c)
        widths = [max(self.min_channels, self.hidden_channels // 2 ** i) for i in range(int(ups) + 1)]
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, padding=1), nn.GELU())
        self.blocks = nn.Sequential(*[_UpBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def __repr__(self) -> str:
        return describe(self, widths=f"{self.hidden_channels} -> {self.min_channels} channels")

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Fix the per-channel normalisation from a sample of maps ``[N, C, h, w]`` (once, before training)."""
        set_feature_statistics(self, features)

    # ------------------------------------------------------------------ the network
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features: Tensor[B, C, h, w]`` -> images ``Tensor[B, 3, H, W]`` in [0, 1] (differentiable)."""
        x = normalize_features(self, features)
        return torch.sigmoid(self.to_rgb(self.blocks(self.stem(x))))

    def _sample(self, features: torch.Tensor, *, num_samples: int, generator: torch.Generator, progress: bool,
                batch_size: int, sampler, classifier: nn.Module | None) -> torch.Tensor:
        """Decode checked maps ``[B, C, h, w]`` in chunks of ``batch_size`` (a progress bar over them) into
        ``[B, S, 3, H, W]`` in [0, 1] on the CPU: the decoder is deterministic, so the ``S`` samples are identical
        and ``generator``, ``sampler`` and ``classifier`` are unused (accepted so one harness drives every kind)."""
        from tqdm.auto import tqdm

        dev = self.feature_mean.device
        out = [self(features[s:s + batch_size].to(dev, self.dtype)).float().cpu()
               for s in tqdm(range(0, len(features), batch_size), desc="decoder", disable=not progress)]
        images = torch.cat(out) if out else torch.empty(0, 3, self.image_size, self.image_size)
        return images[:, None].expand(-1, num_samples, -1, -1, -1).contiguous()
