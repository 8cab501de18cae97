"""Real-scale recipes: timm backbones paired with the layers the FeatInv paper inverts, on miniSD.

Each preset names a timm classifier, the layer whose map is inverted, the diffusion base
(``lambdalabs/miniSD-diffusers``: SD 1.4 fine-tuned to 256 px, latents 4x32x32), the training arguments of its
recipe and the sampler settings to invert with. Our presets share our fast recipe (bf16, cosine LR, EMA weights,
the default sampler); ``"official"`` reproduces the official FeatInv training of ConvNeXt-B as far as our
configuration can express it (see :data:`OFFICIAL`). The feature shapes are those at the size the classifier reads
(timm's ``input_size`` for its weights, or the recipe's ``classifier_size``), not the base's 256 px:
``tests/test_presets.py`` builds each classifier with random weights and checks them.

Example:
    >>> p = wb.presets.get("resnet50")
    >>> p.train_command(data="/data/imagenet/train", out="runs/r50")
    'accelerate launch -m workbench.cli train-inverter --classifier resnet50 --layer layer4 ...'
    >>> official = wb.presets.get("official")
    >>> config = official.config(data="/data/imagenet/train", out="runs/featinv-official")   # a FeatInvConfig
    >>> images = inv.invert(features, sampler=wb.Sampler(**official.sampler))   # DDIM 50, guidance 1.75, "prompt"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MINISD = "lambdalabs/miniSD-diffusers"

#: our fast recipe's training arguments (beyond classifier, layer and base): bf16 autocast, and the defaults of
#: ``workbench train-inverter`` (cosine LR from 3e-4, EMA 0.999, gradient clipping at 1, augmentation)
FAST_TRAIN: dict[str, Any] = {"steps": 100_000, "batch_size": 32, "mixed_precision": "bf16"}


@dataclass(frozen=True)
class Preset:
    """A real-scale FeatInv recipe."""

    classifier: str          #: timm model name (pretrained ImageNet weights)
    layer: str               #: layer name as in ``wb.layer_table``
    feature_shape: tuple     #: (C, h, w) of that layer's map at the classifier's input size
    base: str = MINISD       #: diffusion base (hub id or local folder)
    image_size: int = 256    #: pixels; miniSD's resolution
    note: str = ""
    #: ``workbench train-inverter`` arguments of the recipe (``FeatInvConfig`` fields), beyond classifier, layer and
    #: base
    train: dict = field(default_factory=lambda: dict(FAST_TRAIN))
    #: this recipe's :class:`~workbench.inverters.sampler.Sampler` settings, as JSON for cards (empty: the library's
    #: defaults); ``wb.Sampler(**preset.sampler)`` is the sampler to pass to ``invert(sampler=...)``
    sampler: dict = field(default_factory=dict)

    @property
    def classifier_size(self) -> int | None:
        """The pixels the classifier reads when the recipe sets them (``classifier_size``); None: timm's
        ``input_size`` of its weights (224 for resnet50, convnext_base and vit_base; 256 for swinv2)."""
        return self.train.get("classifier_size")

    def arguments(self, *, data: str, out: str, **overrides) -> dict[str, Any]:
        """The run's ``FeatInvConfig`` fields: the preset's, then ``data``, ``out`` and ``overrides``."""
        return {"classifier": self.classifier, "layer": self.layer, "base": self.base, **self.train, "data": data,
                "out": out, **overrides}

    def config(self, *, data: str, out: str, **overrides):
        """The :class:`~workbench.training.featinv.FeatInvConfig` of this recipe (for ``wb.train_featinv``);
        ``overrides`` replace any field (a smaller ``batch_size``, local ``base`` and ``classifier_checkpoint``)."""
        from .training.featinv import FeatInvConfig

        return FeatInvConfig(**self.arguments(data=data, out=out, **overrides))

    def train_command(self, *, data: str, out: str, **overrides) -> str:
        """The one-line training command of this recipe. ``accelerate launch`` runs one process per GPU of the
        machine; ``--batch-size`` is per process, so N GPUs train on N x that per step (see the README)."""
        import shlex

        from .training.featinv import FeatInvConfig

        defaults = {f: FeatInvConfig.__dataclass_fields__[f].default for f in FeatInvConfig.__dataclass_fields__}
        words = ["accelerate launch -m workbench.cli train-inverter"]
        for name, value in self.arguments(data=data, out=out, **overrides).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                if value != defaults.get(name):
                    words.append(flag if value else "--no-" + flag[2:])
            elif value is None:
                if defaults.get(name) is not None:
                    words.append(f"{flag} none")
            else:
                words.append(f"{flag} {shlex.quote(str(value))}")
        return " ".join(words)


#: the official training's fixed prompt (its dropped items get the empty prompt, our null prompt)
OFFICIAL_PROMPT = "a high-quality, detailed, and professional image"


def official() -> Preset:
    """The official FeatInv recipe for ConvNeXt-B (AI4HealthUOL/FeatInv: ``code/tutorial_train_featinv.py``,
    ``code/models/cldm_featinv_convnext.yaml``, and the hint block its reconstruction and Gradio scripts build), as
    far as our configuration expresses it; ``wb.presets.get("official")``.

    What it sets as the official code does:

    * the backbone and weights ``convnext_base.fb_in22k_ft_in1k``, read at 288 px (``--classifier-size 288``; timm's
      ``test_input_size`` for these weights), inverted at ``forward_features``: for ConvNeXt that is ``stages.3``'s
      output (its ``norm_pre`` is the identity), 1024x9x9; the trained inverter records the 288 px input
      (``classifier_input_size``), so the classifier it loads by name for ``invert_images`` and feature guidance
      reads 288 px, and one passed at another size is refused;
    * the augmentation: ``RandomResizedCrop(288)``, random horizontal and vertical flips; the classifier reads the
      crop, and the crop resized to miniSD's 256 px is the target;
    * the hint encoder's widths: convolutions 1024->512 and 512->512 with SiLU, then a zero convolution to the
      ControlNet's 320 channels, after a bilinear resize to the 32x32 latent grid (``--hidden-channels 512``);
    * the fixed prompt ``"a high-quality, detailed, and professional image"`` (recorded in the inverter, which loads
      its base with it), and 15 % condition dropout (the map
      zeroed and the empty prompt, together);
    * AdamW at a constant 1e-5 (weight decay 0.01, its default), no gradient clipping, no EMA, fp32, batch 8,
      3 epochs;
    * the sampler: DDIM, 50 steps, guidance 1.75, both branches conditioned on the features
      (``guidance_mode="prompt"``), and no feature guidance (the official sampler has none), in
      :attr:`Preset.sampler`.

    What still differs, and why:

    * **Feature normalisation.** Our conditioning encoder standardises each channel of the map (statistics of the
      first batch) before its first convolution; the official hint block takes the raw map. It is a per-channel
      affine map that the first convolution could absorb, kept because it lets one learning rate serve layers whose
      scales differ by orders of magnitude.
    * **A dropped condition.** Both zero a dropped item's map and give it the null prompt; ours zeroes it before that
      normalisation, so the encoder sees the constant ``-mean/std`` instead of zeros: the same information (one
      fixed input meaning "no features"), from the shared :class:`~workbench.inverters.featinv.FeatInv`.
    * **The base.** ``lambdalabs/miniSD-diffusers`` is the diffusers conversion of the miniSD checkpoint the official
      code starts from; the scheduler is the same (scaled-linear betas 0.00085-0.012, 1000 steps, epsilon).
    * **The 256 px target.** The official code resizes the 288 px crop with ``transforms.Resize((256, 256))``; ours
      resizes the batch bilinearly with antialiasing, on the device.
    * **Epochs.** The official loader keeps an epoch's last, incomplete batch; ours drops it, so that a global batch
      never straddles two epochs and the processes' shares stay disjoint: at most 7 of ImageNet's 1.28 M images an
      epoch (more under several processes: fewer than 8 x processes).
    * **Several GPUs.** The official script trains on one GPU. ``--batch-size 8`` is per process here, so N GPUs
      train on 8N images a step and 3 epochs take 1/N of the steps; pass ``--batch-size`` 8/N (and ``--epochs 3``)
      to keep the official global batch.
    * **Classifier batches.** The official dataset runs the classifier on one image per ``__getitem__``; ours runs it
      on the batch (the same maps up to floating-point summation order): this is where our speed comes from.
    * **Sampling prompts.** The official Gradio app appends an "added prompt" to the prompt and takes a negative
      prompt from the user; the preset samples with the training prompt and the null prompt, as it was trained.
    """
    return Preset(
        "convnext_base.fb_in22k_ft_in1k", "stages.3", (1024, 9, 9),
        note="the official FeatInv recipe: forward_features at 288 px, fp32, batch 8, constant LR 1e-5, 3 epochs",
        train={"classifier_size": 288, "augment": True, "hidden_channels": 512, "prompt": OFFICIAL_PROMPT,
               "drop_prob": 0.15, "lr": 1e-5, "lr_schedule": "constant", "max_grad_norm": None, "batch_size": 8,
               "epochs": 3, "mixed_precision": "no", "ema": 0.0},
        sampler={"scheduler": "ddim", "num_inference_steps": 50, "guidance_scale": 1.75, "guidance_mode": "prompt",
                 "feature_guidance_scale": 0.0},
    )


PRESETS: dict[str, Preset] = {
    "resnet50": Preset("resnet50", "layer4", (2048, 7, 7), note="the paper's main CNN, read at 224 px"),
    "convnext_base": Preset("convnext_base", "stages.3", (1024, 7, 7),
                            note="our recipe for the official backbone (fb_in22k_ft_in1k weights), read at 224 px "
                                 "(the official recipe reads 288 px: 1024x9x9)"),
    "swinv2": Preset("swinv2_base_window16_256", "layers.3", (1024, 8, 8),
                     note="timm's Swin stages are NHWC; workbench hands them over as NCHW"),
    "vit_base": Preset("vit_base_patch16_224", "blocks.11", (768, 14, 14), image_size=256,
                       note="224 px input: images are resized for the classifier; class token kept aside"),
    "official": official(),
}


def get(name: str) -> Preset:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise KeyError(f"no preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]
