"""The inverter family as one shape (issue 27): shipped weights still give the very same images at a fixed seed.

The hashes below were computed with the code before the family got its base class, its ``Sampler`` and its
diffusers-readable folders (commit 58542f3), under one torch thread: the refactor must not move a single bit.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

import workbench as wb

pytestmark = pytest.mark.usefixtures("one_thread")

#: sha256 of ``invert(features, num_samples=1, seed=0, num_inference_steps=2, feature_guidance_scale=fg)`` of the
#: shipped ``tinyworld-cnn/stages.3`` on two tiny-world test images, and of the shipped decoder's ``invert``.
REFERENCE = {
    ("featinv", 0.0): "6798a7c522a7ffc920d3711f5cb10de1ec180cb31c3c8fd52c8b18dcbaac7ab3",
    ("featinv", 0.025): "048f88f1e2f101d4d5c50b978715c5901aaac70a610d20fea1b37f149b7213df",
    ("decoder", None): "1a3dcad43bd6b0c10d2e7147ea9424b1cf457e0c6dd40fd0a6ea13afa2ff7f4b",
}


def _sha(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    """``Tensor[2, 192, 4, 4]``: the shipped CNN's maps at ``stages.3`` of two test images."""
    cnn = wb.load_classifier("tinyworld-cnn")
    return wb.extract_features(cnn, wb.TinyWorld("test", size=2, seed=0).images(), "stages.3")


@pytest.mark.parametrize("feature_guidance_scale", [0.0, 0.025])
def test_shipped_featinv_gives_the_same_images_bit_for_bit(features, feature_guidance_scale):
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    out = inv.invert(features, num_samples=1, seed=0, num_inference_steps=2,
                     feature_guidance_scale=feature_guidance_scale, progress=False)
    assert out.shape == (2, 1, 3, 32, 32) and out.dtype == torch.float32
    assert _sha(out) == REFERENCE[("featinv", feature_guidance_scale)]


def test_shipped_decoder_gives_the_same_images_bit_for_bit(features):
    out = wb.load_inverter("tinyworld-cnn/stages.3-decoder").invert(features, progress=False)
    assert _sha(out) == REFERENCE[("decoder", None)]
