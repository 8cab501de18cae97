"""Helpers that several test files share (not a test file, so pytest collects nothing here): a miniature SD-shaped
diffusion base with random weights, and a FeatInv whose condition reaches the UNet."""
from __future__ import annotations

import torch

from workbench.diffusion import DiffusionBase, sd_miniature_configs
from workbench.inverters.featinv import FeatInv


def make_condition_matter(inv: FeatInv) -> FeatInv:
    """Randomise the zero-initialised convs, so that the features reach the UNet (as after training)."""
    g = torch.Generator().manual_seed(0)
    convs = [inv.conditioning.zero_out, *inv.controlnet.controlnet_down_blocks, inv.controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
    return inv


def miniature_base(pixel: bool = False) -> DiffusionBase:
    """SD 1.x block types (CrossAttn down/up blocks, KL-VAE) at tiny widths, random weights, 64 px."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    cfg = sd_miniature_configs()
    unet_cfg = dict(cfg["unet"])
    size = 64
    if pixel:  # pixel space at 16 px keeps the attention of the first block cheap
        size = 16
        unet_cfg.update(sample_size=16, in_channels=3, out_channels=3)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = None if pixel else AutoencoderKL(**cfg["vae"])
    prompt = torch.randn(1, 77, unet_cfg["cross_attention_dim"])
    null = torch.randn(1, 77, unet_cfg["cross_attention_dim"])
    return DiffusionBase(unet, cfg["scheduler"], prompt, null, vae, image_size=size, name="miniature-sd")
