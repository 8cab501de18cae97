"""workbench.diffusion.miniature_base: miniSD's block types at tiny widths, seeded, saved and loaded like a real base."""
from __future__ import annotations

import pytest
import torch

from workbench.diffusion import DiffusionBase, miniature_base, sd_miniature_configs


@pytest.fixture(scope="module")
def base():
    return miniature_base(seed=0)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_miniature_has_minisd_block_types_at_tiny_widths(base):
    cfg = sd_miniature_configs()
    assert isinstance(base, DiffusionBase) and base.name == "miniature-sd" and base.is_latent
    assert base.image_size == 64 and base.latent_shape == (4, 8, 8)
    assert tuple(base.unet.config.down_block_types) == cfg["unet"]["down_block_types"]
    assert tuple(base.unet.config.up_block_types) == cfg["unet"]["up_block_types"]
    assert tuple(base.vae.config.block_out_channels) == cfg["vae"]["block_out_channels"]
    assert base.prompt_embeds.shape == base.null_embeds.shape == (1, 77, cfg["unet"]["cross_attention_dim"])
    assert not torch.equal(base.prompt_embeds, base.null_embeds)
    assert base.encode(torch.rand(2, 3, 64, 64)).shape == (2, 4, 8, 8)


def test_miniature_is_seeded_and_leaves_the_global_rng_alone(base):
    state = torch.random.get_rng_state()
    again = miniature_base(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same_weights(again, base)
    assert not _same_weights(miniature_base(seed=1), base)


def test_pixel_miniature():
    pixel = miniature_base(pixel=True)
    assert pixel.vae is None and pixel.image_size == 16 and pixel.latent_shape == (3, 16, 16)
    out = pixel.unet(torch.randn(1, 3, 16, 16), 10, encoder_hidden_states=pixel.embeds(1)).sample
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_miniature_round_trips_through_a_folder(base, tmp_path):
    base.save_pretrained(tmp_path, fp16=False)
    back = DiffusionBase.from_pretrained(tmp_path)
    assert back.image_size == base.image_size and back.latent_shape == base.latent_shape
    assert _same_weights(back, base)
