"""The tiny world's shipped classifiers, described: their timm architectures, normalisation and layers.

Each is a timm architecture sized for 32 px input. This module only describes them; :mod:`workbench.models`
builds and loads them, and :mod:`workbench.weights` reads their files (``data/<name>.safetensors``, fp16, beside
``data/<name>.json``, the card with the architecture arguments, the training command and the measured accuracy).

| name            | architecture                                   | inverted layers                     |
|-----------------|------------------------------------------------|-------------------------------------|
| tinyworld-cnn   | timm ConvNeXt, patch-1 stem, 4 stages          | ``stages.2`` (8x8), ``stages.3`` (4x4) |
| tinyworld-vit   | timm VisionTransformer, patch 4 -> 8x8 tokens, class token | ``blocks.2``, ``blocks.5`` (8x8) |

The **judges** (:data:`JUDGE_CLASSIFIERS`) are classifiers that no inverter, guide or decoder ever used: other
families or widths, other seeds, and trained with colour and texture augmentation (hue rotation, channel shuffle,
greyscale, noise, blur) so that they read shape and layout rather than tint. :mod:`workbench.judges` grades
inversions with them and with the factor reader (:mod:`workbench.factor_reader`).

| name                      | architecture                                     | map it is compared at |
|---------------------------|--------------------------------------------------|-----------------------|
| tinyworld-judge-resnet    | timm ResNet (basic blocks, output stride 8)      | ``layer4`` (4x4)      |
| tinyworld-judge-resnet-deep | timm ResNet, deep stem, twice the depth, other widths | ``layer4`` (4x4)  |
| tinyworld-judge-vit       | timm VisionTransformer, patch 8, no class token, avg pool | ``blocks.3`` (4x4) |
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


#: The independent judges: never used to train, guide or pick any inverter. ``judge_layer`` is the spatial map at
#: which a judge compares an inversion with its original; ``seed`` is the training seed (the shipped models use 0).
JUDGE_CLASSIFIERS: dict[str, dict[str, Any]] = {
    "tinyworld-judge-resnet": {
        "architecture": "resnet",
        "arch_args": {"block": "basic", "layers": [1, 1, 1, 1], "channels": [32, 64, 96, 128], "stem_width": 32,
                      "output_stride": 8, "num_classes": 8},
        "layers": {"last": "layer4", "mid": "layer3"}, "judge_layer": "layer4", "seed": 11,
    },
    "tinyworld-judge-resnet-deep": {
        "architecture": "resnet",
        "arch_args": {"block": "basic", "layers": [2, 2, 2, 2], "channels": [24, 48, 96, 160], "stem_width": 16,
                      "stem_type": "deep", "output_stride": 8, "num_classes": 8},
        "layers": {"last": "layer4", "mid": "layer3"}, "judge_layer": "layer4", "seed": 12,
    },
    "tinyworld-judge-vit": {
        "architecture": "vit",
        "arch_args": {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 4,
                      "num_classes": 8, "class_token": False, "global_pool": "avg"},
        "layers": {"last": "blocks.3", "mid": "blocks.1"}, "judge_layer": "blocks.3", "seed": 13,
    },
}

#: Every tiny-world classifier that loads by name: the two inverted ones and the judges.
TINY_CLASSIFIERS: dict[str, dict[str, Any]] = {**SHIPPED_CLASSIFIERS, **JUDGE_CLASSIFIERS}


def build_network(architecture: str, arch_args: dict[str, Any]) -> nn.Module:
    """Build a timm network from a card's ``architecture`` and ``arch_args`` (random weights).

    Args:
        architecture: ``"convnext"``, ``"vit"`` or ``"resnet"``.
        arch_args: keyword arguments of ``timm.models.convnext.ConvNeXt``,
            ``timm.models.vision_transformer.VisionTransformer`` or ``timm.models.resnet.ResNet`` (whose ``block``
            is named: ``"basic"`` or ``"bottleneck"``).
    """
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    from timm.models.vision_transformer import VisionTransformer

    from .errors import ArgumentValueError

    args = dict(arch_args)
    if architecture == "convnext":
        args["depths"], args["dims"] = tuple(args["depths"]), tuple(args["dims"])
        return ConvNeXt(**args)
    if architecture == "vit":
        return VisionTransformer(**args)
    if architecture == "resnet":
        args["block"] = {"basic": BasicBlock, "bottleneck": Bottleneck}[args.get("block", "basic")]
        args["layers"], args["channels"] = tuple(args["layers"]), tuple(args["channels"])
        return ResNet(**args)
    raise ArgumentValueError(f"unknown architecture {architecture!r}; expected 'convnext', 'vit' or 'resnet'")
