"""Shared fixtures: the architectures every hook contract runs over, tiny and with random weights.

Nothing here touches the network: every model is built with ``pretrained=False`` (timm) or
``weights=None`` (torchvision).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn


@dataclass(frozen=True)
class Arch:
    """One architecture of the contract list.

    Attributes:
        build: returns the model (a ``Classifier`` or a bare ``nn.Module``), random weights, eval mode.
        size: input ``(H, W)``.
        mid: a mid-depth layer name, used for ablations and replacement hooks.
        four: four layer names (capture tests).
    """

    build: Callable[[], nn.Module]
    size: tuple[int, int]
    mid: str
    four: tuple[str, str, str, str]


def _timm(name: str, **kwargs):
    import workbench as wb
    return lambda: wb.load_classifier(name, pretrained=False, num_classes=10, **kwargs)


def _torchvision_resnet18():
    import torchvision
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(_timm("resnet18"), (64, 64), "layer3", ("layer1", "layer2", "layer3", "layer4")),
    "convnext_atto": Arch(_timm("convnext_atto"), (64, 64), "stages.2", ("stem", "stages.1", "stages.2", "stages.3")),
    "vit_tiny": Arch(_timm("vit_tiny_patch16_224", img_size=64), (64, 64), "blocks.5",
                     ("patch_embed", "blocks.2", "blocks.5", "blocks.11")),
    "vit_reg": Arch(_timm("vit_small_patch16_224", img_size=32, patch_size=4, depth=2, embed_dim=64,
                          num_heads=2, reg_tokens=2), (32, 32), "blocks.0",
                    ("patch_embed", "blocks.0", "blocks.1", "norm")),
    "swinv2": Arch(_timm("swinv2_tiny_window8_256", img_size=64, window_size=4, embed_dim=32,
                                depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)), (64, 64), "layers.1",
                   ("patch_embed", "layers.1", "layers.2", "norm")),
    "swinv2_cr": Arch(_timm("swinv2_cr_tiny_224", img_size=64, window_size=4, embed_dim=32,
                                   depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)), (64, 64), "stages.1",
                      ("stages.1.blocks.0", "stages.1", "stages.2", "stages.3")),
    "tv_resnet18": Arch(_torchvision_resnet18, (64, 64), "layer3", ("layer1", "layer2", "layer3", "layer4")),
}


@functools.lru_cache(maxsize=None)
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ARCHS[name].build()


@pytest.fixture(params=sorted(ARCHS))
def arch(request) -> tuple[str, Arch, nn.Module, torch.Tensor]:
    """``(name, Arch, model, x)`` for each contract architecture; ``x`` is ``Tensor[2, 3, H, W]`` in [0, 1]."""
    spec = ARCHS[request.param]
    model = _built(request.param)
    x = torch.rand(2, 3, *spec.size, generator=torch.Generator().manual_seed(1))
    return request.param, spec, model, x


@pytest.fixture(scope="module")
def cnn():
    """The shipped tiny-world CNN (``tinyworld-cnn``), loaded once per test module."""
    import workbench as wb

    return wb.load_classifier("tinyworld-cnn")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a small shared CPU,
    more threads per process make the sampling tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_no_hooks(model: nn.Module) -> None:
    """Every module of ``model`` has no forward hook or pre-hook left."""
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name!r}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name!r}"
        assert not getattr(module, "_backward_hooks", None), f"backward hook left on {name!r}"
