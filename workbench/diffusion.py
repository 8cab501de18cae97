"""The pretrained diffusion base that FeatInv puts a ControlNet on.

A :class:`DiffusionBase` is what Stable Diffusion is, minus the text: a diffusers
``UNet2DConditionModel``, an optional ``AutoencoderKL`` (latent bases; ``None`` for pixel bases),
a noise-scheduler config, and one fixed prompt embedding (plus the null-prompt embedding for
classifier-free guidance), computed once. The same class holds the embedded ``tinyworld-base``
(16x16x4 latents behind a small VAE, 32 px images) and miniSD (``lambdalabs/miniSD-diffusers``,
32x32x4 latents, 256 px images).

The denoising loop and its guides live in :mod:`.denoising`, the architectures' configs in
:mod:`.diffusion_configs`, the training loss in :mod:`.diffusion_loss`; this module re-exports their names.

Example:
    >>> base = DiffusionBase.from_pretrained("tinyworld-base")
    >>> z = base.encode(torch.rand(2, 3, 32, 32))      # [2, 4, 16, 16]
    >>> x = base.decode(z)                             # [2, 3, 32, 32] in [0, 1]
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checks import check_images, check_result, check_seed, checked_float, checked_int, seeded_generator
from .denoising import Guide, Predictor, _step_bar, denoise, gradient_guide
from .diffusion_configs import (
    PREDICTION_TYPES, sd_miniature_configs, tiny_scheduler_config, tiny_unet_config, tiny_vae_config)
from .diffusion_loss import diffusion_loss, training_target
from .errors import ArgumentValueError, BadInputError, WeightsUnavailableError
from .paths import data_dir
from .weights import check_finite_state, check_weight_file

#: the public names, the loop, the configs and the loss included: they live in :mod:`.denoising`,
#: :mod:`.diffusion_configs` and :mod:`.diffusion_loss`, and ``workbench.diffusion`` re-exports them
__all__ = ["DEFAULT_PROMPT", "DEFAULT_SCHEDULER", "DiffusionBase", "Guide", "PREDICTION_TYPES", "Predictor",
           "SHIPPED_BASES", "denoise", "diffusion_loss", "gradient_guide", "miniature_base", "sd_miniature_configs",
           "tiny_scheduler_config", "tiny_unet_config", "tiny_vae_config", "training_target"]

SHIPPED_BASES = ("tinyworld-base",)
DEFAULT_PROMPT = "a high-quality, detailed photograph"
#: The scheduler of every sampler here (``DiffusionBase.sample``, ``DiffusionBase.img2img``, ``FeatInv.invert``).
DEFAULT_SCHEDULER = "ddim"


def _check_sampling(guidance_scale: float, seed: int, **counts: int) -> None:
    """The argument checks every sampler shares: each count an int of at least 1, a finite ``guidance_scale >= 1``,
    a seed in ``[0, 2**64)``."""
    for name, value in counts.items():
        checked_int(value, name, minimum=1)
    checked_float(guidance_scale, "guidance_scale", minimum=1.0)
    check_seed(seed)


def _overflow_cause(guidance_scale: float) -> str:
    """What makes a sampler's images NaN from finite inputs, for :func:`~workbench.checks.check_result`'s message."""
    return (f"guidance_scale={guidance_scale:g}, so large that the guided prediction overflows; use a value "
            "between 1 and about 20")


def miniature_base(*, seed: int = 0, pixel: bool = False, device: str | torch.device = "cpu") -> "DiffusionBase":
    """A :class:`DiffusionBase` with miniSD's SD 1.x block types at tiny widths and random weights: the real-scale
    path (training, sampling, saving) runs on it offline, on a CPU.

    The UNet and KL-VAE are built from :func:`sd_miniature_configs`; the prompt and null-prompt embeddings are
    random ``Tensor[1, 77, 32]``. Everything is drawn from ``seed`` alone, so the same seed gives the same base,
    and the caller's global RNG is left as it was.

    Args:
        seed: seeds the weights and the embeddings.
        pixel: a pixel-space base at 16 px (the UNet denoises RGB, no VAE) instead of the latent one at 64 px.
        device: where the base is put.

    Returns:
        DiffusionBase named ``"miniature-sd"``: ``image_size=64`` and ``latent_shape=(4, 8, 8)``, or with
        ``pixel``, ``image_size=16`` and ``latent_shape=(3, 16, 16)``.

    Example:
        >>> base = miniature_base(seed=0)
        >>> base.latent_shape, base.image_size            # ((4, 8, 8), 64)
        >>> base.save_pretrained(tmp, fp16=False)          # a folder that from_pretrained and train-inverter read
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = sd_miniature_configs()
    unet_cfg, size = dict(cfg["unet"]), cfg["vae"]["sample_size"]
    if pixel:  # pixel space at 16 px keeps the attention of the first block cheap
        size = 16
        unet_cfg.update(sample_size=size, in_channels=3, out_channels=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = None if pixel else AutoencoderKL(**cfg["vae"])
        prompt, null = torch.randn(2, 1, 77, unet_cfg["cross_attention_dim"])
    return DiffusionBase(unet, cfg["scheduler"], prompt, null, vae, image_size=size, name="miniature-sd").to(device)


class DiffusionBase(nn.Module):
    """A frozen diffusion prior with an SD-style interface.

    Args:
        unet: ``UNet2DConditionModel`` predicting the noise or ``v`` (the scheduler config's ``prediction_type``);
            its cross-attention receives the prompt embedding.
        scheduler_config: a diffusers scheduler config (``DDPMScheduler`` for training; samplers are built from it).
        prompt_embeds: ``Tensor[1, L, D]`` the fixed prompt embedding.
        null_embeds: ``Tensor[1, L, D]`` the null-prompt embedding (classifier-free guidance, condition dropout).
        vae: ``AutoencoderKL`` for latent bases, ``None`` for a pixel-space base.
        image_size: side of the images in pixels.
        name: the name or path it was loaded from (recorded in inverter configs).
    """

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], prompt_embeds: torch.Tensor,
                 null_embeds: torch.Tensor, vae: nn.Module | None = None, *, image_size: int, name: str = "custom"):
        super().__init__()
        want = vae.config.latent_channels if vae is not None else 3
        got = getattr(getattr(unet, "config", None), "in_channels", want)
        if got != want:
            raise ArgumentValueError(f"the UNet takes {got} input channels, but the base denoises {want}: "
                                     + (f"its VAE's latent_channels is {want}; pass the VAE it was trained with" if vae
                                        is not None else "a pixel base denoises RGB; pass the AutoencoderKL whose "
                                        "latents it was trained on (a latent base folder needs its vae/)"))
        self.unet = unet
        self.vae = vae
        self.scheduler_config = dict(scheduler_config)
        self.register_buffer("prompt_embeds", prompt_embeds.detach().float().clone())
        self.register_buffer("null_embeds", null_embeds.detach().float().clone())
        self.image_size = int(image_size)
        self.name = name
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ shapes
    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def device(self) -> torch.device:
        """Where the base lives (its prompt embedding's device, which :meth:`to` moves with the weights)."""
        return self.prompt_embeds.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's weight dtype."""
        return next(self.unet.parameters(), self.prompt_embeds).dtype

    def __repr__(self) -> str:
        """One line: name, image and latent shapes, the UNet's size, the VAE, the prediction type, device and dtype
        (``print(base.unet)`` shows the whole network)."""
        params = sum(p.numel() for p in self.unet.parameters()) / 1e6
        vae = type(self.vae).__name__ if self.vae is not None else None
        return (f"DiffusionBase(name={self.name!r}, image_size={self.image_size}, latent_shape={self.latent_shape}, "
                f"unet={params:.1f}M params, vae={vae}, "
                f"prediction_type={self.scheduler_config.get('prediction_type', 'epsilon')!r}, device={self.device}, "
                f"dtype={self.dtype})")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of what the UNet denoises (latents, or pixels for a pixel base)."""
        c = self.unet.config.in_channels
        if self.vae is None:
            return (c, self.image_size, self.image_size)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (c, self.image_size // f, self.image_size // f)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    # ------------------------------------------------------------------ codec
    def encode(self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> scaled latents ``[B, C, h, w]`` (pixels in [-1, 1] for a pixel base)."""
        x = images * 2 - 1
        if self.vae is None:
            return x
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z.float() * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` clamped to [0, 1]."""
        if self.vae is None:
            x = latents
        else:
            x = self.vae.decode((latents / self.scaling_factor).to(self.vae.dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    def embeds(self, batch_size: int, *, null: torch.Tensor | bool = False) -> torch.Tensor:
        """Prompt embeddings for a batch: ``[B, L, D]``. ``null`` is a bool or a ``Tensor[B]`` bool mask
        selecting the null prompt per item (condition dropout)."""
        p = self.prompt_embeds.expand(batch_size, -1, -1)
        if isinstance(null, bool):
            return self.null_embeds.expand(batch_size, -1, -1) if null else p
        return torch.where(null.view(-1, 1, 1), self.null_embeds.expand(batch_size, -1, -1), p)

    def make_scheduler(self, kind: str = "ddpm", num_inference_steps: int | None = None):
        """A fresh diffusers scheduler from this base's config: ``"ddpm"`` (training), ``"ddim"`` or ``"dpm++"``.

        With ``num_inference_steps``, its timesteps are set for sampling, on the base's device.
        """
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        if kind == "ddpm":
            sched = DDPMScheduler.from_config(self.scheduler_config)
        elif kind == "ddim":
            sched = DDIMScheduler.from_config(self.scheduler_config)
        elif kind in ("dpm++", "dpmsolver++", "dpm"):
            sched = DPMSolverMultistepScheduler.from_config(self.scheduler_config, algorithm_type="dpmsolver++",
                                                            solver_order=2)
        else:
            raise ArgumentValueError(f"unknown scheduler {kind!r}; expected 'ddpm', 'ddim' or 'dpm++'")
        if num_inference_steps is not None:
            sched.set_timesteps(num_inference_steps, device=self.prompt_embeds.device)
        return sched

    # ------------------------------------------------------------------ sampling (unconditional)
    @torch.no_grad()
    def sample(self, num_images: int, *, num_inference_steps: int = 20, scheduler: str = DEFAULT_SCHEDULER,
               seed: int = 0, batch_size: int = 256, guidance_scale: float = 1.0,
               progress: bool = True) -> torch.Tensor:
        """Samples from the base with its own prompt (no feature condition): ``Tensor[num_images, 3, H, W]`` in [0, 1].

        Args:
            num_images: how many images to draw.
            num_inference_steps: denoising steps.
            scheduler: ``"ddim"`` or ``"dpm++"`` (see :meth:`make_scheduler`).
            seed: the same seed gives the same images for the same ``batch_size``.
            batch_size: images denoised at once; bounds the memory, whatever ``num_images`` is.
            guidance_scale: SD's prompt-vs-null classifier-free guidance (1.0: none, one UNet pass per step). For
                the tiny base it changes little: its prompt and null prompt were trained on the same images.
            progress: show a progress bar over the denoising steps (of all batches together).

        Example:
            >>> base.sample(4, num_inference_steps=20, scheduler="dpm++", seed=0).shape   # [4, 3, 32, 32]
        """
        _check_sampling(guidance_scale, seed, num_images=num_images,
                        num_inference_steps=num_inference_steps, batch_size=batch_size)
        device = self.prompt_embeds.device
        g = seeded_generator(seed)
        out = []
        bar = _step_bar(-(-num_images // batch_size) * num_inference_steps, "base samples", progress)
        for start in range(0, num_images, batch_size):
            b = min(batch_size, num_images - start)
            # 1. a fresh scheduler, and this batch's noise from the one seeded generator
            sched = self.make_scheduler(scheduler, num_inference_steps)
            z = torch.randn((b, *self.latent_shape), generator=g).to(device) * sched.init_noise_sigma
            # 2. the denoising loop with the base's prompt; 3. decode
            z = denoise(self.prompt_predictor(b, guidance_scale), z, sched, guidance_scale=guidance_scale,
                        generator=g, callback=bar.tick)
            out.append(check_result(self.decode(z).cpu(), "DiffusionBase.sample", _overflow_cause(guidance_scale)))
        return torch.cat(out)

    @torch.no_grad()
    def img2img(self, images: torch.Tensor, *, strength: float = 0.5, num_inference_steps: int = 20,
                scheduler: str = DEFAULT_SCHEDULER, seed: int = 0, batch_size: int = 256, guidance_scale: float = 1.0,
                progress: bool = True) -> torch.Tensor:
        """SDEdit, as diffusers' img2img pipelines do it: noise each image's latent to ``strength`` of the schedule
        and denoise it with the base alone. ``images``: ``Tensor[B, 3, H, W]`` in [0, 1] -> the same shape.

        ``strength`` 0 gives the VAE reconstruction, 1 nearly a fresh sample (as in diffusers, the noise goes to the
        schedule's first timestep, which keeps a trace of the image). In between, what survives tells which
        structure the base keeps and which it must invent. Only ``int(num_inference_steps * strength)`` UNet passes
        run. The other arguments are those of :meth:`sample`.

        Example:
            >>> base.img2img(images, strength=0.5, seed=0).shape     # images.shape
        """
        check_images(images, "images")
        if images.shape[1:] != (3, self.image_size, self.image_size):
            raise BadInputError(f"img2img: images have shape {tuple(images.shape)}; expected "
                                f"[B, 3, {self.image_size}, {self.image_size}] in [0, 1]")
        strength = checked_float(strength, "strength", minimum=0.0, maximum=1.0)
        _check_sampling(guidance_scale, seed, num_inference_steps=num_inference_steps,
                        batch_size=batch_size)
        if strength > 0 and int(num_inference_steps * strength) == 0:
            raise ArgumentValueError(
                f"img2img(strength={strength:g}, num_inference_steps={num_inference_steps}) would run "
                f"int({num_inference_steps} * {strength:g}) = 0 denoising steps and return the images only encoded; "
                f"raise num_inference_steps to at least {math.ceil(1 / strength)}, or pass strength=0 for that")
        device = self.prompt_embeds.device
        g = seeded_generator(seed)
        out = []
        bar = _step_bar(-(-len(images) // batch_size) * int(num_inference_steps * strength), "img2img", progress)
        for start in range(0, len(images), batch_size):
            # 1. the latents and this batch's noise from the one seeded generator
            z = self.encode(images[start:start + batch_size].to(device))
            noise = torch.randn(z.shape, generator=g).to(device)
            # 2. a fresh scheduler; the last int(num_inference_steps * strength) timesteps, noised to the first
            sched = self.make_scheduler(scheduler, num_inference_steps)
            n_run = int(num_inference_steps * strength)
            timesteps = sched.timesteps[len(sched.timesteps) - n_run:] if n_run else sched.timesteps[:0]
            if n_run:
                if hasattr(sched, "set_begin_index"):
                    sched.set_begin_index(len(sched.timesteps) - n_run)
                z = sched.add_noise(z, noise, timesteps[:1].repeat(len(z)))
            # 3. the denoising loop with the base's prompt; 4. decode
            z = denoise(self.prompt_predictor(len(z), guidance_scale), z, sched, timesteps=timesteps,
                        guidance_scale=guidance_scale, generator=g, callback=bar.tick)
            out.append(check_result(self.decode(z).cpu(), "DiffusionBase.img2img", _overflow_cause(guidance_scale)))
        return torch.cat(out)

    def prompt_predictor(self, batch_size: int, guidance_scale: float = 1.0) -> Predictor:
        """The UNet with the base's prompt, as :func:`denoise` calls it: ``(model_input, t) -> prediction``.

        With guidance (``guidance_scale != 1``) the model input is a batch twice over; its first half sees the
        prompt and its second half the null prompt.
        """
        emb = self.embeds(batch_size)
        if guidance_scale != 1.0:
            emb = torch.cat([emb, self.embeds(batch_size, null=True)])
        return lambda model_input, t: self.unet(model_input, t, encoder_hidden_states=emb).sample

    # ------------------------------------------------------------------ persistence
    def model_index(self) -> dict[str, Any]:
        """The ``model_index.json`` of this base's folder: each component with the diffusers class that loads it,
        as a Stable Diffusion folder lists them. The text encoder, tokenizer, safety checker, feature extractor and
        image encoder are absent (``[null, null]``; the fixed prompt is embedded once, in
        ``prompt_embeds.safetensors``), so ``StableDiffusionPipeline.from_pretrained(folder, text_encoder=None,
        tokenizer=None, safety_checker=None, feature_extractor=None, image_encoder=None)`` loads a latent base and
        samples from it with ``prompt_embeds=`` and ``negative_prompt_embeds=`` (the null prompt's)."""
        import diffusers

        absent = [None, None]
        return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                "unet": ["diffusers", type(self.unet).__name__],
                "vae": absent if self.vae is None else ["diffusers", type(self.vae).__name__],
                "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": absent, "tokenizer": absent,
                "safety_checker": absent, "feature_extractor": absent, "image_encoder": absent,
                "requires_safety_checker": False}

    def save_pretrained(self, path: str | Path, *, fp16: bool = True, card: dict[str, Any] | None = None) -> None:
        """Write a diffusers-style folder: ``unet/``, ``vae/`` (latent bases), ``scheduler/``, ``model_index.json``
        (:meth:`model_index`), ``prompt_embeds.safetensors`` and ``card.json``."""
        from .weights import save_state

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        dtype = torch.float16 if fp16 else torch.float32
        for part in ("unet", "vae"):
            mod = getattr(self, part)
            if mod is None:
                continue
            orig = next(mod.parameters()).dtype
            if orig == dtype:           # no cast: diffusers warns on stderr about any to(dtype), even a no-op one
                mod.save_pretrained(path / part)
                continue
            mod.to(dtype).save_pretrained(path / part)
            mod.to(orig)
        (path / "scheduler").mkdir(exist_ok=True)
        (path / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"_class_name": "DDPMScheduler", **self.scheduler_config}, indent=2))
        save_state({"prompt_embeds": self.prompt_embeds, "null_embeds": self.null_embeds},
                   path / "prompt_embeds.safetensors", fp16=False)
        (path / "model_index.json").write_text(json.dumps(self.model_index(), indent=2) + "\n")
        meta = {"image_size": self.image_size, **(card or {})}
        (path / "card.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, prompt: str = DEFAULT_PROMPT,
                        image_size: int | None = None) -> "DiffusionBase":
        """Load a base from a shipped name (``"tinyworld-base"``), a local folder or a hub id.

        A folder must hold ``unet/`` and ``scheduler/`` (and ``vae/`` for a latent base). The prompt
        embedding is read from ``prompt_embeds.safetensors`` when present; otherwise it is computed once
        with the folder's CLIP ``text_encoder/`` and ``tokenizer/`` from ``prompt`` (and ``""`` for the
        null prompt), which needs ``transformers``.

        Raises:
            WeightsUnavailableError: the hub cannot be reached or a file is missing. The message names the
                local-folder alternative.
            ArgumentValueError: a ``prompt`` other than the default for a base without a text encoder (its saved
                embedding would be used instead, and the prompt silently ignored).
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel

        name = str(name_or_path)
        if name in SHIPPED_BASES:
            path = data_dir() / name
            if not (path / "unet").is_dir():
                raise WeightsUnavailableError(
                    f"the shipped base {name!r} is missing from {path}. Run `make weights` to train it, or restore "
                    f"it with `git checkout data/`.")
        elif Path(name).expanduser().is_dir():
            path = Path(name).expanduser()
        else:
            path = _snapshot(name)
        if not (path / "unet").is_dir():
            raise WeightsUnavailableError(f"{path} has no unet/ folder; a base folder needs unet/, scheduler/ "
                                          f"(and vae/ for a latent base), as diffusers writes them.")
        saved_embeds = (path / "prompt_embeds.safetensors").is_file() and prompt == DEFAULT_PROMPT
        if prompt != DEFAULT_PROMPT and not (path / "text_encoder").is_dir():
            import warnings

            saved_embeds = True  # the only embedding this base has (a stand-in base in tests, or tinyworld-base)
            warnings.warn(f"prompt={prompt!r}: the base in {path} has no text_encoder/ to embed it (its prompt is "
                          "fixed in prompt_embeds.safetensors), so the prompt is ignored; leave prompt out "
                          "(train-inverter: drop --prompt), or use a base folder with text_encoder/ and tokenizer/",
                          UserWarning, stacklevel=2)
        for part in ("unet", "vae"):                # every weight file's dtype, before diffusers casts it silently
            for file in sorted((path / part).glob("*.safetensors")):
                check_weight_file(file)
        try:
            unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype) if (path / "vae").is_dir() else None
        except (OSError, ValueError) as e:
            raise WeightsUnavailableError(f"could not read the base in {path}: {e}. Restore it with "
                                          f"`git checkout data/` or retrain with `make weights`.") from e
        check_finite_state(unet.state_dict(), path / "unet")
        if vae is not None:
            check_finite_state(vae.state_dict(), path / "vae")
        if vae is None and unet.config.in_channels != 3:
            raise WeightsUnavailableError(f"{path / 'vae'} is missing: the UNet in {path / 'unet'} denoises "
                                          f"{unet.config.in_channels}-channel latents, so this is a latent base and "
                                          "needs its AutoencoderKL in vae/ (restore it with `git checkout data/`, "
                                          "copy the VAE it was trained with there, or retrain with `make weights`)")
        sched_file = path / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_file.read_text()) if sched_file.is_file() else tiny_scheduler_config()
        sched = {k: v for k, v in sched.items() if not k.startswith("_")}
        card = json.loads((path / "card.json").read_text()) if (path / "card.json").is_file() else {}
        if saved_embeds:
            from .weights import load_state

            emb = load_state(path / "prompt_embeds.safetensors")
            prompt_embeds, null_embeds = emb["prompt_embeds"], emb["null_embeds"]
        else:
            prompt_embeds, null_embeds = _encode_prompts(path, [prompt, ""])
        if image_size is None:
            image_size = card.get("image_size") or (
                vae.config.sample_size if vae is not None else unet.config.sample_size)
        base = cls(unet, sched, prompt_embeds, null_embeds, vae, image_size=int(image_size), name=name)
        return base.to(device)


def _snapshot(repo_id: str) -> Path:
    """Download (or find in the HF cache) the parts of an SD-style repo; a clear error when offline."""
    from huggingface_hub import snapshot_download

    patterns = ["unet/*", "vae/*", "scheduler/*", "text_encoder/*", "tokenizer/*", "model_index.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        raise WeightsUnavailableError(
            f"could not load the diffusion base {repo_id!r} from the Hugging Face hub ({type(e).__name__}). "
            f"Either pass a local folder (DiffusionBase.from_pretrained('/path/to/{repo_id.split('/')[-1]}'), "
            f"a diffusers layout with unet/, vae/, scheduler/, text_encoder/, tokenizer/), or pre-fill the HF "
            f"cache on a connected machine (`hf download {repo_id}`; huggingface_hub before 1.0: "
            f"`huggingface-cli download {repo_id}`) and set HF_HUB_OFFLINE=1.") from e


@torch.no_grad()
def _encode_prompts(path: Path, prompts: list[str]) -> list[torch.Tensor]:
    """CLIP text embeddings ``[1, 77, D]`` for each prompt, computed once at load time."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("computing an SD prompt embedding needs `transformers`: pip install transformers") from e
    if not (path / "text_encoder").is_dir():
        raise WeightsUnavailableError(f"{path} has neither prompt_embeds.safetensors nor a text_encoder/ folder; "
                                      f"one of them is needed for the fixed prompt embedding.")
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    enc = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    out = []
    for p in prompts:
        ids = tok([p], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        out.append(enc(ids.input_ids)[0].float())
    return out


