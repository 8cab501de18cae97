"""A FeatInv distilled into one or two network evaluations per image: the lens at the speed of a slider.

The teacher (a shipped :class:`~workbench.inverters.featinv.FeatInv` with its default sampler: DDIM, classifier-free
guidance and feature guidance, 10 network evaluations and 2 backward passes per image) maps starting noise ``z`` and
a map to clean latents. The student is the same ControlNet on the same frozen base, trained to reach those latents
from the same noise in ``len(timesteps)`` evaluations: knowledge distillation of the deterministic sampler
(Luhman & Luhman 2021, "Knowledge distillation in iterative generative models"), trained by
:mod:`workbench.training.distill` (``workbench distill``). Classifier-free guidance and feature guidance are
distilled in: the student runs neither a second branch nor a backward pass. Different noise still gives different
images, so the lens stays probabilistic (invariance maps work as with the teacher).

One step at timestep ``t``: the denoiser's prediction at ``(z, t)`` implies clean latents
``x0 = (z - sqrt(1 - a_t) eps) / sqrt(a_t)`` (noise prediction; ``x0 = sqrt(a_t) z - sqrt(1 - a_t) v`` for
v-prediction), with ``a_t`` the base's ``alphas_cumprod``. Two steps re-noise the first ``x0`` to the second
timestep along the same predicted noise (a DDIM step) and predict again.

Example:
    >>> fast = load_inverter("tinyworld-cnn/stages.3-distilled")
    >>> fast.invert(features, num_samples=4, seed=0).shape          # [B, 4, 3, 32, 32], one evaluation per image
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..checks import check_allocation, check_result
from ..errors import ArgumentValueError
from .base import register_inverter
from .featinv import FeatInv, _embedded_condition
from .interface import describe, register_to_config


@register_inverter("featinv-distilled")
class DistilledFeatInv(FeatInv):
    """A FeatInv whose ControlNet was distilled to sample in ``len(timesteps)`` evaluations, without guidance.

    Args:
        base, classifier_name, layer, feature_shape, pooling, hidden_channels, classifier_input_size, prompt: as
            :class:`~workbench.inverters.featinv.FeatInv` (the teacher's values).
        timesteps: the denoiser's timesteps, one per evaluation, highest first (``(801,)``: the teacher's first
            DDIM timestep, where its sampling starts from pure noise).
        teacher: the teacher inverter's name or folder, recorded for the card and for benchmarks.

    It ignores ``sampler=`` (there is no scheduler loop to set: a study that passes the default sampler to every
    inverter still runs); ``classifier=`` is only used by :meth:`invert_images` to capture the maps.
    """

    uses_sampler = False

    @register_to_config
    def __init__(self, base, classifier_name: str, layer: str, feature_shape: Sequence[int], pooling: str = "none",
                 *, hidden_channels: int = 64, classifier_input_size: Sequence[int] | None = None,
                 prompt: str | None = None, timesteps: Sequence[int] = (801,), teacher: str | None = None):
        super().__init__(base, classifier_name, layer, feature_shape, pooling, hidden_channels=hidden_channels,
                         classifier_input_size=classifier_input_size, prompt=prompt)
        steps = [int(t) for t in timesteps]
        total = base.make_scheduler("ddim", 1).config.num_train_timesteps
        if not steps or len(steps) > 4 or any(not 0 <= t < total for t in steps) or steps != sorted(steps)[::-1]:
            raise ArgumentValueError(f"timesteps={list(timesteps)}: give 1 to 4 distinct timesteps in [0, {total}), "
                                     "highest first, e.g. (801,) or (801, 401)")
        if len(set(steps)) != len(steps):
            raise ArgumentValueError(f"timesteps={steps} repeats a timestep; give distinct ones, highest first")
        self.timesteps = tuple(steps)
        self.teacher = teacher

    def __repr__(self) -> str:
        c, h, w = self.base.latent_shape
        return describe(self, pooling=repr(self.pooling), base=f"{self.base.name} (latents {c}x{h}x{w})",
                        timesteps=list(self.timesteps), teacher=repr(self.teacher),
                        sampler=f"{len(self.timesteps)} evaluation(s) per image, guidance distilled in")

    # ------------------------------------------------------------------ the student's map from noise to latents
    def clean_latents(self, noise: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                      ) -> torch.Tensor:
        """Noise ``[b, C, h, w]`` -> clean latents ``[b, C, h, w]`` in ``len(self.timesteps)`` calls of
        ``predict(latents, t)`` (the conditioned denoiser, :meth:`_predictor`). Differentiable (training calls it
        with gradients on)."""
        sched = self._scheduler()
        alphas = sched.alphas_cumprod.to(noise.device)
        kind = sched.config.prediction_type
        z, x0 = noise, noise
        for i, step in enumerate(self.timesteps):
            t = torch.tensor(step, device=noise.device)
            a = alphas[step].float()
            sa, sb = a.sqrt(), (1 - a).sqrt()
            pred = predict(z, t)
            x0 = (z - sb * pred) / sa if kind == "epsilon" else sa * z - sb * pred
            if i + 1 < len(self.timesteps):  # a DDIM step to the next timestep along the predicted noise
                eps = pred if kind == "epsilon" else sa * pred + sb * z
                a_next = alphas[self.timesteps[i + 1]].float()
                z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x0

    def _scheduler(self):
        """The base's scheduler, for its ``alphas_cumprod`` and ``prediction_type`` (made once, kept)."""
        cached = self.__dict__.get("_alphas_scheduler")
        if cached is None:
            cached = self.base.make_scheduler("ddim", 1)
            self.__dict__["_alphas_scheduler"] = cached
        return cached

    def student_predictor(self, maps: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The conditioned denoiser of maps ``[b, C_f, h_f, w_f]`` (one row per noise row), with gradients when
        enabled: what :meth:`clean_latents` calls during training."""
        dtype = next(self.controlnet.parameters()).dtype
        emb = self.base.embeds(len(maps))
        return lambda z, t: self.predict_noise(z, t, maps.to(dtype), emb)

    # ------------------------------------------------------------------ sampling
    def _sample(self, features: torch.Tensor, *, num_samples: int, generator: torch.Generator, progress: bool,
                batch_size: int, sampler=None, classifier: nn.Module | None = None) -> torch.Tensor:
        """Maps ``[B, C, h, w]`` -> images ``[B, S, 3, H, W]`` in [0, 1], float32 on the CPU: all noise drawn up
        front on the CPU from ``generator`` (images do not depend on ``batch_size`` or the device), then per chunk
        of ``batch_size`` rows one (or ``len(timesteps)``) conditioned evaluation and the decoder."""
        from tqdm.auto import tqdm

        B, S = features.shape[0], num_samples
        check_allocation((B * S, 3 + self.base.latent_shape[0], self.image_size, self.image_size), torch.float32,
                         "cpu", f"invert({B} maps, num_samples={S})")
        noise = torch.randn((B * S, *self.base.latent_shape), generator=generator)
        maps = features.detach().float()
        device = self.base.prompt_embeds.device
        out = torch.empty(B * S, 3, self.image_size, self.image_size)
        chunks = range(0, B * S, batch_size)
        with (tqdm(total=len(chunks), desc="FeatInv (distilled)", disable=not progress) as bar,
              torch.inference_mode(), _embedded_condition(self.controlnet) as embed):
            for s in chunks:
                rows = range(s, min(s + batch_size, B * S))
                predict = self._predictor(embed, maps, rows, S, False, "features")
                z = self.clean_latents(noise[rows.start:rows.stop].to(device), predict)
                out[rows.start:rows.stop] = check_result(
                    self.base.decode(z).float().cpu(), "DistilledFeatInv.invert",
                    "maps far outside those the student was trained on (see the OffDistributionWarning, if any)")
                bar.update(1)
        return out.view(B, S, 3, self.image_size, self.image_size)

    # ------------------------------------------------------------------ building one from its teacher
    @classmethod
    def from_teacher(cls, teacher: FeatInv, *, timesteps: Sequence[int] | None = None,
                     teacher_name: str | None = None) -> "DistilledFeatInv":
        """A student initialised as a copy of ``teacher``'s ControlNet on the same base (the starting point of
        distillation), at ``timesteps`` (default: the teacher's first default DDIM timestep)."""
        from .sampler import Sampler

        if timesteps is None:
            first = teacher.base.make_scheduler(Sampler().scheduler, Sampler().num_inference_steps).timesteps[0]
            timesteps = (int(first),)
        config = {k: v for k, v in teacher.init_arguments.items() if k != "base"}
        student = cls(teacher.base, **config, timesteps=tuple(timesteps), teacher=teacher_name)
        student.controlnet.load_state_dict(teacher.controlnet.state_dict())
        return student.to(device=teacher.device, dtype=teacher.dtype)
