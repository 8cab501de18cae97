"""The diffusers configs of the bases built here: the tiny-world base's UNet, VAE and DDPM schedule
(:func:`tiny_unet_config`, :func:`tiny_vae_config`, :func:`tiny_scheduler_config`), and miniSD's block types at tiny
widths for offline tests of the real-scale path (:func:`sd_miniature_configs`).

Example:
    >>> UNet2DConditionModel(**tiny_unet_config())               # the tiny-world base's denoiser, untrained
    >>> tiny_scheduler_config("v_prediction", zero_terminal_snr=True)["timestep_spacing"]      # 'trailing'
"""
from __future__ import annotations

from typing import Any

from .errors import ArgumentValueError


def tiny_unet_config(*, sample_size: int = 16, in_channels: int = 4, widths=(64, 128, 128),
                     cross_attention_dim: int = 64, layers_per_block: int = 1) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of the tiny-world base (SD 1.x block types, tiny widths)."""
    return dict(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(widths), layers_per_block=int(layers_per_block),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(widths) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(widths) - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
    )


def tiny_vae_config(*, widths=(64, 128), latent_channels: int = 4, sample_size: int = 32) -> dict[str, Any]:
    """The ``AutoencoderKL`` config of the tiny-world base: 32 px -> 16x16x4 with two blocks."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=sample_size,
        down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths), layers_per_block=1, norm_num_groups=16,
    )


PREDICTION_TYPES = ("epsilon", "v_prediction")


def tiny_scheduler_config(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> dict[str, Any]:
    """The DDPM training schedule of the tiny base (cosine betas suit small images).

    ``prediction_type`` is what the UNet predicts: ``"epsilon"`` (the noise, as SD 1.x) or
    ``"v_prediction"`` (``v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0``, as SD 2.x). The samplers
    read it from this config, and the training target follows it (:func:`training_target`).

    ``timestep_spacing="leading"`` matters: the capped cosine schedule has ``alpha_bar ~ 0`` at
    ``t = 999``, where an epsilon-predicting sampler divides by ``sqrt(alpha_bar)``; "linspace" and
    "trailing" spacings start there, and DPM-Solver++ then returns noise.

    ``zero_terminal_snr=True`` is Lin et al. 2024's remedy instead: betas rescaled so that ``alpha_bar`` is exactly 0
    at ``t = 999`` (diffusers' ``rescale_betas_zero_snr``) and ``"trailing"`` spacing, so that every sampler starts
    from pure noise at the last timestep. It needs ``"v_prediction"``, whose clean-image estimate at
    ``alpha_bar = 0`` is ``-v`` rather than a division by zero.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ArgumentValueError(f"prediction_type {prediction_type!r}: expected one of {PREDICTION_TYPES}")
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ArgumentValueError(f"zero_terminal_snr needs prediction_type='v_prediction', got {prediction_type!r}: "
                                 f"at alpha_bar = 0 an epsilon-predicting sampler cannot recover the image (Lin et al. "
                                 f"2024)")
    config = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                  clip_sample=False, timestep_spacing="leading", steps_offset=1)
    if zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0)
    return config


def sd_miniature_configs() -> dict[str, dict[str, Any]]:
    """Configs with miniSD's (SD 1.x) block types at tiny widths, for offline tests of the real-scale path."""
    unet = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    )
    scheduler = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "scheduler": scheduler}
