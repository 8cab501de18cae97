"""The tiny world's shipped classifiers, described: their timm architectures, normalisation and layers.

Each is a timm architecture sized for 32 px input. This module only describes them; :mod:`workbench.models`
builds and loads them, and :mod:`workbench.weights` reads their files (``data/<name>.safetensors``, fp16, beside
``data/<name>.json``, the card with the architecture arguments, the training command and the measured accuracy).

| name            | architecture                                   | inverted layers                     |
|-----------------|------------------------------------------------|-------------------------------------|
| tinyworld-cnn   | timm ConvNeXt, patch-1 stem, 4 stages          | ``stages.2`` (8x8), ``stages.3`` (4x4) |
| tinyworld-vit   | timm VisionTransformer, patch 4 -> 8x8 tokens, class token | ``blocks.2``, ``blocks.5`` (8x8) |
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


#: Normalisation used by all tiny-world classifiers (inputs are in [0, 1]).
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.25, 0.25, 0.25)
TINY_INPUT_SIZE = (3, 32, 32)

#: name -> (architecture family, constructor keyword arguments). These are the shipped configs.
SHIPPED_CLASSIFIERS: dict[str, dict[str, Any]] = {
    "tinyworld-cnn": {
        "architecture": "convnext",
        "arch_args": {"depths": [2, 2, 3, 2], "dims": [32, 64, 128, 192], "patch_size": 1, "num_classes": 8},
        "layers": {"last": "stages.3", "mid": "stages.2"},
    },
    "tinyworld-vit": {
        "architecture": "vit",
        "arch_args": {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4,
                      "num_classes": 8, "class_token": True, "global_pool": "token"},
        "layers": {"last": "blocks.5", "mid": "blocks.2"},
    },
}


def build_network(architecture: str, arch_args: dict[str, Any]) -> nn.Module:
    """Build a timm network from a card's ``architecture`` and ``arch_args`` (random weights).

    Args:
        architecture: ``"convnext"`` or ``"vit"``.
        arch_args: keyword arguments of ``timm.models.convnext.ConvNeXt`` or
            ``timm.models.vision_transformer.VisionTransformer``.
    """
    from timm.models.convnext import ConvNeXt
    from timm.models.vision_transformer import VisionTransformer

    args = dict(arch_args)
    if architecture == "convnext":
        args["depths"], args["dims"] = tuple(args["depths"]), tuple(args["dims"])
        return ConvNeXt(**args)
    if architecture == "vit":
        return VisionTransformer(**args)
    raise ValueError(f"unknown architecture {architecture!r}; expected 'convnext' or 'vit'")
