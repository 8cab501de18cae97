"""The training objective of a denoiser: the target it learns (:func:`training_target`: the noise, or ``v``) and the
loss of one batch (:func:`diffusion_loss`, with optional Min-SNR-gamma weighting).

Example:
    >>> loss = diffusion_loss(predict, base.encode(images), base.make_scheduler("ddpm"), generator=g)
"""
from __future__ import annotations

import torch

from .denoising import Predictor
from .diffusion_configs import PREDICTION_TYPES
from .errors import ArgumentValueError


def training_target(noise_scheduler, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to output for ``sample`` ``[B, C, h, w]`` noised with ``noise`` at ``timesteps``
    ``[B]``: the noise for an ``"epsilon"`` scheduler, ``noise_scheduler.get_velocity(...)`` for ``"v_prediction"``
    (as diffusers' training scripts do)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(sample, noise, timesteps)
    raise ArgumentValueError(f"prediction_type {kind!r} of this scheduler is not supported; expected one of "
                             f"{PREDICTION_TYPES}")



def diffusion_loss(predict: Predictor, latents: torch.Tensor, noise_scheduler, *,
                   generator: torch.Generator | None = None, min_timestep: int = 0,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """The denoising loss of one batch: noise ``latents`` at random timesteps and score what ``predict`` makes of them.

    Steps: 1. draw the noise ``[B, C, h, w]``, then the timesteps ``[B]`` in ``[min_timestep, T)``, both from
    ``generator``, in that order; 2. noise the latents (``noise_scheduler.add_noise``); 3. call
    ``predict(noisy_latents [B, C, h, w], timesteps [B]) -> [B, C, h, w]``, which may draw more from ``generator``
    (condition dropout, say); 4. the MSE against :func:`training_target` (the noise, or ``v`` for a v-prediction
    scheduler), with Min-SNR-gamma weighting when ``snr_gamma`` is given: each sample's MSE is weighted by
    ``min(SNR, gamma) / SNR`` for epsilon-prediction and ``min(SNR, gamma) / (SNR + 1)`` for v-prediction (Hang et
    al. 2023, as diffusers' training scripts weight it, with ``diffusers.training_utils.compute_snr``).

    Args:
        predict: the denoiser with its condition bound, ``(noisy_latents, timesteps) -> prediction``.
        latents: ``Tensor[B, C, h, w]`` clean (scaled) latents, or pixels in [-1, 1] for a pixel base.
        noise_scheduler: a diffusers ``DDPMScheduler`` (``base.make_scheduler("ddpm")``); its config's
            ``prediction_type`` sets the target.
        generator: the source of every random draw (on ``latents``' device).
        min_timestep: train on timesteps ``>= min_timestep`` only (0: all).
        snr_gamma: Min-SNR-gamma's ``gamma`` (5 in the paper); ``None``: the plain MSE.

    Returns:
        the loss, a scalar fp32 tensor.

    Example:
        >>> sched = base.make_scheduler("ddpm")
        >>> loss = diffusion_loss(lambda z, t: base.unet(z, t, encoder_hidden_states=base.embeds(len(z))).sample,
        ...                       base.encode(images), sched, generator=torch.Generator().manual_seed(0))
    """
    import torch.nn.functional as F

    num_timesteps = noise_scheduler.config.num_train_timesteps
    if not 0 <= min_timestep < num_timesteps:
        raise ArgumentValueError(f"min_timestep={min_timestep}: must be in [0, {num_timesteps}), the scheduler's "
                                 f"timesteps")
    if snr_gamma is not None and not snr_gamma > 0:
        raise ArgumentValueError(f"snr_gamma={snr_gamma}: must be > 0 (5 is the paper's choice), or None for the "
                                 f"plain MSE")
    b, device = latents.shape[0], latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device)                              # 1.
    timesteps = torch.randint(min_timestep, num_timesteps, (b,), generator=generator, device=device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)                                          # 2.
    pred = predict(noisy, timesteps).float()                                                               # 3.
    target = training_target(noise_scheduler, latents, noise, timesteps).float()                           # 4.
    if snr_gamma is None:
        return F.mse_loss(pred, target)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        weight = snr.clamp(max=snr_gamma) / (snr + 1)
    else:
        weight = torch.where(snr > snr_gamma, snr_gamma / snr, torch.ones_like(snr))  # safe where SNR is 0
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample * weight).mean()
