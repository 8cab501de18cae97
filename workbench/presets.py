"""Real-scale recipes: timm backbones paired with the layers the FeatInv paper inverts, on miniSD.

Each preset names a timm classifier, the layer whose map is inverted, and the diffusion base
(``lambdalabs/miniSD-diffusers``: SD 1.4 fine-tuned to 256 px, latents 4x32x32). The feature
shapes are those at 256 px input.

Example:
    >>> p = wb.presets.get("resnet50")
    >>> p.train_command(data="/data/imagenet/train", out="runs/r50")
    'accelerate launch -m workbench.cli train-inverter --classifier resnet50 --layer layer4 ...'
"""
from __future__ import annotations

from dataclasses import dataclass

MINISD = "lambdalabs/miniSD-diffusers"


@dataclass(frozen=True)
class Preset:
    """A real-scale FeatInv recipe."""

    classifier: str          #: timm model name (pretrained ImageNet weights)
    layer: str               #: layer name as in ``wb.layer_table``
    feature_shape: tuple     #: (C, h, w) of that layer's map at ``image_size``
    base: str = MINISD       #: diffusion base (hub id or local folder)
    image_size: int = 256    #: pixels; miniSD's resolution
    note: str = ""

    def train_command(self, *, data: str, out: str, steps: int = 100_000, batch_size: int = 32) -> str:
        """The one-line training command for this preset (``accelerate launch`` runs it on every GPU)."""
        return (f"accelerate launch -m workbench.cli train-inverter --classifier {self.classifier} --layer {self.layer} "
                f"--base {self.base} --data {data} --steps {steps} --batch-size {batch_size} "
                f"--mixed-precision bf16 --out {out}")


PRESETS: dict[str, Preset] = {
    "resnet50": Preset("resnet50", "layer4", (2048, 8, 8), note="the paper's main CNN"),
    "convnext_base": Preset("convnext_base", "stages.3", (1024, 8, 8)),
    "swinv2": Preset("swinv2_base_window16_256", "layers.3", (1024, 8, 8),
                     note="timm's Swin stages are NHWC; workbench hands them over as NCHW"),
    "vit_base": Preset("vit_base_patch16_224", "blocks.11", (768, 14, 14), image_size=256,
                       note="224 px input: images are resized for the classifier; class token kept aside"),
}


def get(name: str) -> Preset:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise KeyError(f"no preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]
