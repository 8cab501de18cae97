"""The denoising loop of every sampler here (:func:`denoise`, as diffusers' pipelines write it) and the guides that
correct its prediction at each step (:func:`gradient_guide`: a likelihood gradient on the predicted clean latents).

Example:
    >>> sched = base.make_scheduler("ddim", num_inference_steps=8)
    >>> z = denoise(base.prompt_predictor(2), torch.randn(2, *base.latent_shape), sched)
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from .diffusion_configs import PREDICTION_TYPES
from .errors import ArgumentValueError

#: A denoiser as :func:`denoise` calls it: ``(model_input [B, C, h, w], t) -> prediction [B, C, h, w]``.
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A correction of the (guided) prediction before the scheduler's step, as :func:`denoise` calls it:
#: ``(latents [B, C, h, w], t, prediction [B, C, h, w]) -> prediction [B, C, h, w]`` (see :func:`gradient_guide`).
Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _step_bar(total: int, desc: str, progress: bool):
    """A ``tqdm.auto`` bar over ``total`` denoising steps, off without ``progress``; ``bar.tick`` is a
    :func:`denoise` callback that moves it one step and closes it at the last."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)

    def tick(*_):
        bar.update(1)
        if bar.n >= total:
            bar.close()
    bar.tick = tick
    if total == 0:
        bar.close()
    return bar


def denoise(predict: Predictor, latents: torch.Tensor, scheduler, *, timesteps: torch.Tensor | None = None,
            guidance_scale: float = 1.0, guide: Guide | None = None,
            callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The denoising loop of every sampler here (:meth:`DiffusionBase.sample`, :meth:`DiffusionBase.img2img`,
    :meth:`FeatInv.invert <workbench.inverters.featinv.FeatInv.invert>`), as diffusers' pipelines write it.

    Args:
        predict: the denoiser, ``predict(model_input, t) -> prediction`` (the noise or ``v``, as the scheduler's
            ``prediction_type`` says). Without guidance ``model_input`` is ``[B, C, h, w]``. With guidance it is
            the scaled latents twice, ``[2B, C, h, w]``: the predictor conditions the first half and leaves the
            second half unconditional (see :meth:`DiffusionBase.prompt_predictor`).
        latents: ``Tensor[B, C, h, w]`` to start from: noise times ``scheduler.init_noise_sigma``, or (img2img)
            latents noised to the first of ``timesteps``.
        scheduler: a diffusers scheduler whose timesteps are set (``set_timesteps``).
        timesteps: the timesteps to run; default ``scheduler.timesteps`` (img2img runs only their tail).
        guidance_scale: classifier-free guidance, ``uncond + guidance_scale * (cond - uncond)``; 1.0 turns it
            off and runs the predictor on the batch once.
        guide: an optional correction of the prediction at every step, ``guide(latents, t, prediction)``, e.g. a
            likelihood gradient (:func:`gradient_guide`); ``None`` leaves the prediction as it is.
        callback: called after every step as ``callback(i, t, latents)``, e.g. to move a progress bar.
        generator: the seeded generator of the caller, handed to every scheduler step that draws noise (DDPM, DDIM
            with ``eta > 0``): without it they would draw from, and advance, torch's global RNG.

    Returns:
        the denoised latents, ``Tensor[B, C, h, w]``.

    Example:
        >>> sched = base.make_scheduler("ddim", num_inference_steps=8)
        >>> z = torch.randn(2, *base.latent_shape) * sched.init_noise_sigma
        >>> images = base.decode(denoise(base.prompt_predictor(2), z, sched))
    """
    guided = guidance_scale != 1.0
    step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(scheduler.timesteps if timesteps is None else timesteps):
        # 1. the scheduler's scaling of the input, twice over for guidance
        model_input = scheduler.scale_model_input(latents, t)
        if guided:
            model_input = torch.cat([model_input, model_input])
        # 2. the denoiser's prediction
        prediction = predict(model_input, t)
        # 3. classifier-free guidance, linear in the noise and in v alike
        if guided:
            cond, uncond = prediction.chunk(2)
            prediction = uncond + guidance_scale * (cond - uncond)
        # 4. an optional correction, e.g. the gradient of a likelihood of the predicted clean latents
        if guide is not None:
            prediction = guide(latents, t, prediction)
        # 5. one scheduler step
        latents = scheduler.step(prediction, t, latents, **step_options).prev_sample
        if callback is not None:
            callback(i, t, latents)
    return latents


def gradient_guide(loss: Callable[[torch.Tensor], torch.Tensor], scheduler, scale: float, *,
                   timesteps: torch.Tensor | None = None) -> Guide:
    """A :data:`Guide` that moves the predicted clean latents down the gradient of ``loss`` at every step: the
    likelihood term of diffusion posterior sampling (Chung et al. 2023) and of universal guidance (Bansal et al.
    2023), without back-propagating through the denoiser.

    At timestep ``t`` with ``a = alpha_bar_t``: 1. the clean latents the prediction implies,
    ``x0 = (z - sqrt(1 - a) * eps) / sqrt(a)`` (for ``v``: ``x0 = sqrt(a) * z - sqrt(1 - a) * v``); 2. the gradient
    ``g`` of ``loss(x0)`` summed over the batch; 3. a step of ``scale`` in units of each item's RMS gradient,
    ``x0' = x0 - scale * g / rms(g)``, so ``scale`` is how far each item's latents move per step whatever the loss's
    magnitude; 4. the prediction that implies ``x0'`` at the same ``z``, which the scheduler then steps with.

    Args:
        loss: ``x0 [B, C, h, w] -> Tensor[B]``, differentiable (e.g. one minus the feature cosine of the decoded
            image); it runs with gradients enabled.
        scheduler: the sampling scheduler (its ``alphas_cumprod`` and ``config.prediction_type`` are read).
        scale: the RMS step per denoising step in latent units; 0 leaves the prediction unchanged.
        timesteps: the timesteps it acts at (e.g. the last few of ``scheduler.timesteps``); it returns the prediction
            unchanged at the others. Default: every timestep.

    Returns:
        a :data:`Guide` for :func:`denoise`.

    Example:
        >>> guide = gradient_guide(lambda x0: (x0 - target).pow(2).flatten(1).mean(1), sched, 0.1)
        >>> z = denoise(base.prompt_predictor(2), z, sched, guide=guide)
    """
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ArgumentValueError(f"prediction_type {kind!r} of this scheduler is not supported; expected one of "
                                 f"{PREDICTION_TYPES}")

    active = None if timesteps is None else {int(t) for t in timesteps}

    def guide(latents: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        if active is not None and int(t) not in active:
            return prediction
        a = scheduler.alphas_cumprod.to(latents.device)[t].float()
        sa, sb = a.sqrt(), (1 - a).sqrt()
        # 1. the implied clean latents
        x0 = (latents - sb * prediction) / sa if kind == "epsilon" else sa * latents - sb * prediction
        # 2. the loss's gradient (outside inference mode, on a fresh leaf)
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x0.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(leaf).sum(), leaf)
        # 3. a step of `scale` RMS units per item
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
        x0 = x0 - scale * grad / rms
        # 4. the prediction implying the moved x0 at the same latents
        eps = (latents - sa * x0) / sb
        return eps if kind == "epsilon" else sa * eps - sb * x0

    return guide
