"""FeatInv: a ControlNet that inverts a classifier's spatial feature map into images.

Following Neukirch, Vielhaben and Strodthoff, "FeatInv" (arXiv 2505.21032): a frozen, pretrained
diffusion base gets a ControlNet (diffusers' ``ControlNetModel.from_unet``) whose image-hint
embedding is replaced by :class:`FeatureConditioning`. The map ``Tensor[B, C_f, h, w]`` is
normalised per channel, upsampled bilinearly to the base's latent resolution, passed through a
shallow conv encoder with SiLU, and enters the ControlNet through a zero-initialised conv. Sampling
from the result draws images whose features at ``layer`` match the given map.

Classifier-free guidance has two meanings here (``guidance_mode``):

* ``"features"`` (default): the unconditional branch drops the features (and uses the null prompt),
  exactly the condition dropout seen in training; guidance then amplifies what the features say.
  This is our default because the features are the only condition that carries information about
  the image; the fixed prompt carries none.
* ``"prompt"`` (the official code's behaviour): both branches see the features, and guidance only
  contrasts the fixed prompt with the null prompt.

Example:
    >>> inv = load_inverter("tinyworld-cnn/stages.3")
    >>> samples = inv.invert_images(images, num_samples=4)        # Tensor[B, 4, 3, 32, 32] in [0, 1]
    >>> spread = invariance_map(samples)                          # Tensor[B, 1, 32, 32]
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import DEFAULT_SCHEDULER, Guide, Predictor, denoise, diffusion_loss, gradient_guide
from ..errors import InverterMismatchError, UnknownModelError, WeightsUnavailableError
from .feature_distance import warn_if_off_distribution
from .interface import (
    capture_and_invert, check_features, describe, init_kwargs, inverter_config, load_weights, normalize_features,
    read_config, register_feature_statistics, register_to_config, set_feature_statistics,
    training_card, write_pretrained)

#: Sampling defaults, chosen by ``benchmarks/sampler_tradeoff.py`` (see benchmarks/README.md); the scheduler,
#: :data:`~workbench.diffusion.DEFAULT_SCHEDULER` (``"ddim"``), is that of every sampler.
DEFAULT_NUM_INFERENCE_STEPS = 5
DEFAULT_GUIDANCE_SCALE = 3.0
DEFAULT_GUIDANCE_MODE = "features"
#: Feature guidance at sampling time: its scale (0: off) and how many of the last denoising steps it acts at, see
#: :meth:`FeatInv.invert`; chosen by step 4 of ``benchmarks/sampler_tradeoff.py`` (docs/benchmarks-log.md).
DEFAULT_FEATURE_GUIDANCE_SCALE = 0.025
DEFAULT_FEATURE_GUIDANCE_STEPS = 2


class FeatureConditioning(nn.Module):
    """Embeds a feature map as a ControlNet condition, replacing diffusers' image-hint embedding.

    Args:
        feature_channels: ``C_f`` of the incoming map.
        out_channels: the ControlNet's first-block channels (``block_out_channels[0]``).
        latent_size: ``(h_lat, w_lat)`` the map is upsampled to.
        hidden_channels: width of the shallow encoder.
        pooling: ``"none"`` (spatial, FeatInv) or ``"mean"`` (the paper's pooled ablation: the map is averaged
            over space and broadcast back, so only *what*, not *where*, reaches the ControlNet).

    Shapes:
        ``forward(features: [B, C_f, h, w]) -> [B, out_channels, h_lat, w_lat]``; all zeros at initialisation.
    """

    def __init__(self, feature_channels: int, out_channels: int, latent_size: Sequence[int], *,
                 hidden_channels: int = 64, pooling: str = "none"):
        super().__init__()
        if pooling not in ("none", "mean"):
            raise ValueError(f"pooling={pooling!r}; expected 'none' (spatial) or 'mean' (pooled ablation)")
        self.pooling = pooling
        self.latent_size = tuple(int(s) for s in latent_size)
        register_feature_statistics(self, feature_channels)
        self.encoder = nn.Sequential(
            nn.Conv2d(feature_channels, hidden_channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.SiLU(),
        )
        self.zero_out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.zero_out.weight)
        nn.init.zeros_(self.zero_out.bias)

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Fix the per-channel normalisation from a sample of maps ``[N, C_f, h, w]`` (done once before training)."""
        set_feature_statistics(self, features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = normalize_features(self, features)
        if self.pooling == "mean":
            x = x.mean((2, 3), keepdim=True)
        x = F.interpolate(x, size=self.latent_size, mode="bilinear", align_corners=False) \
            if self.pooling == "none" else x.expand(-1, -1, *self.latent_size)
        return self.zero_out(self.encoder(x))


class FeatInv(nn.Module):
    """A ControlNet inverter of one classifier layer on a frozen :class:`~workbench.DiffusionBase`.

    Args:
        base: the frozen diffusion base (its UNet and VAE are never trained).
        classifier_name: the classifier the features come from (``"tinyworld-cnn"``, ``"resnet50"``...).
        layer: the layer name, as in ``layer_table`` (``"stages.3"``, ``"blocks.5"``, ``"layer4"``).
        feature_shape: ``(C, h, w)`` of the map at that layer.
        pooling: ``"none"`` (spatial conditioning) or ``"mean"`` (pooled ablation).
        hidden_channels: width of the conditioning encoder.
        classifier_input_size: ``(3, H, W)`` the classifier read in training when that is not its default (the
            official recipe reads ConvNeXt-B at 288 px, timm's default being 224); the classifier loaded by name for
            :meth:`invert_images` and feature guidance is set to it, and a given one must match it.
        prompt: the fixed training prompt when it was not the base's default; :meth:`from_pretrained` loads the
            base with it.

    The constructor arguments are the config (:attr:`config`, with the base recorded by name): they are kept as
    attributes (``inv.classifier_name``, ``inv.layer``, ``inv.feature_shape``, ``inv.pooling``) and saved as JSON
    by :meth:`save_pretrained`. It implements :class:`~workbench.inverters.interface.Inverter`.
    """

    kind = "featinv"
    #: config keys that are not constructor arguments: recorded for loading to check
    derived_config = ("image_size", "latent_shape")

    @register_to_config
    def __init__(self, base, classifier_name: str, layer: str, feature_shape: Sequence[int], pooling: str = "none",
                 *, hidden_channels: int = 64, classifier_input_size: Sequence[int] | None = None,
                 prompt: str | None = None):
        super().__init__()
        from diffusers import ControlNetModel

        if len(feature_shape) != 3:
            raise ValueError(f"feature_shape must be (C, h, w), got {tuple(feature_shape)}")
        if classifier_input_size is not None and len(classifier_input_size) != 3:
            raise ValueError(f"classifier_input_size must be (3, H, W), got {tuple(classifier_input_size)}")
        self.classifier_input_size = None if classifier_input_size is None else \
            tuple(int(s) for s in classifier_input_size)
        self.prompt = prompt
        self.classifier_name = classifier_name
        self.layer = layer
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.pooling = pooling
        self.hidden_channels = hidden_channels
        self.image_size = base.image_size
        self.base = base
        self.base.requires_grad_(False)
        self.controlnet = ControlNetModel.from_unet(base.unet, load_weights_from_unet=True)
        self.controlnet.controlnet_cond_embedding = FeatureConditioning(
            self.feature_shape[0], self.controlnet.config.block_out_channels[0], base.latent_shape[1:],
            hidden_channels=hidden_channels, pooling=pooling)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (the base by name), plus the base's image size and latent shape, which
        loading checks."""
        return inverter_config(self, objects={"base": ("base", self.base.name)},
                               extra={"image_size": self.image_size, "latent_shape": self.base.latent_shape})

    @property
    def conditioning(self) -> FeatureConditioning:
        return self.controlnet.controlnet_cond_embedding

    def __repr__(self) -> str:
        c, h, w = self.base.latent_shape
        recorded = {k: v for k, v in (("classifier_input_size", self.classifier_input_size),
                                      ("prompt", None if self.prompt is None else repr(self.prompt))) if v is not None}
        return describe(self, pooling=repr(self.pooling), base=f"{self.base.name} (latents {c}x{h}x{w})",
                        **recorded, sampler=sampler_description())


    # ------------------------------------------------------------------ the network
    def predict_noise(self, z: torch.Tensor, t: torch.Tensor, features: torch.Tensor, embeds: torch.Tensor,
                      conditioning_scale: float = 1.0) -> torch.Tensor:
        """One denoiser evaluation: latents ``[B, C, h, w]``, timesteps, maps ``[B, C_f, h_f, w_f]``,
        prompt embeddings ``[B, L, D]`` -> the base's prediction ``[B, C, h, w]`` (noise, or ``v`` for a
        v-prediction base)."""
        down, mid = self.controlnet(z, t, encoder_hidden_states=embeds, controlnet_cond=features,
                                    conditioning_scale=conditioning_scale, return_dict=False)
        return self.base.unet(z, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample

    def training_loss(self, latents: torch.Tensor, features: torch.Tensor, *, noise_scheduler,
                      generator: torch.Generator | None = None, drop_prob: float = 0.15,
                      snr_gamma: float | None = None) -> torch.Tensor:
        """The denoising loss on a batch (:func:`~workbench.diffusion.diffusion_loss`: its target is the noise, or
        ``v`` for a v-prediction base; Min-SNR-gamma weighting with ``snr_gamma``), with condition dropout: with
        probability ``drop_prob`` an item's features are zeroed and the null prompt is used (so classifier-free
        guidance is defined). ``latents``: ``[B, C, h, w]``; ``features``: ``[B, C_f, h_f, w_f]``."""
        b = latents.shape[0]

        def predict(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            drop = torch.rand(b, generator=generator, device=latents.device) < drop_prob
            feats = features * (~drop).view(-1, 1, 1, 1).to(features.dtype)
            return self.predict_noise(noisy, t, feats, self.base.embeds(b, null=drop))

        return diffusion_loss(predict, latents, noise_scheduler, generator=generator, snr_gamma=snr_gamma)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def invert(self, features: torch.Tensor, *, num_samples: int = 1, seed: int = 0, progress: bool = True,
               batch_size: int = 64, num_inference_steps: int | None = None, guidance_scale: float | None = None,
               scheduler: str | None = None, guidance_mode: str = DEFAULT_GUIDANCE_MODE,
               feature_guidance_scale: float | None = None, feature_guidance_steps: int | None = None,
               classifier: nn.Module | None = None) -> torch.Tensor:
        """Sample images whose features at ``self.layer`` match ``features``.

        With feature guidance, each of the last ``feature_guidance_steps`` denoising steps also decodes the
        predicted clean latents, runs ``classifier`` to ``self.layer`` and moves those latents down the gradient of
        one minus the feature cosine to the target map (:func:`~workbench.diffusion.gradient_guide`): the
        ControlNet gives the prior, the gradient sharpens the match. Each guided step costs a backward pass through
        the VAE decoder and the classifier, about as much as one step of the guided ControlNet and UNet.

        Args:
            features: ``Tensor[B, C, h, w]`` maps from ``self.classifier_name`` at ``self.layer``.
            num_samples: ``S`` samples per map.
            seed: the same seed gives the same images, whatever ``batch_size``.
            progress: show a progress bar over denoising steps.
            batch_size: images denoised at once; bounds the memory, not the input size.
            num_inference_steps: denoising steps (default :data:`DEFAULT_NUM_INFERENCE_STEPS`).
            guidance_scale: classifier-free guidance scale; 1 disables guidance (default
                :data:`DEFAULT_GUIDANCE_SCALE`).
            scheduler: ``"ddim"`` or ``"dpm++"`` (DPM-Solver++ 2M) (default
                :data:`~workbench.diffusion.DEFAULT_SCHEDULER`).
            guidance_mode: ``"features"`` or ``"prompt"``, see the module docstring.
            feature_guidance_scale: the RMS step of the latents per denoising step along the feature-matching
                gradient; 0 turns it off and gives exactly the unguided images (default
                :data:`DEFAULT_FEATURE_GUIDANCE_SCALE`).
            feature_guidance_steps: guide only the last that many denoising steps, the late ones, where the
                predicted clean image is sharp enough for the classifier; ``num_inference_steps`` or more: every
                step (default :data:`DEFAULT_FEATURE_GUIDANCE_STEPS`).
            classifier: the classifier of the features, for feature guidance (default: the shipped or timm model
                named ``self.classifier_name``, loaded when guidance is on); unused when it is off.

        Returns:
            ``Tensor[B, S, 3, H, W]`` in [0, 1], on the CPU.

        Example:
            >>> inv.invert(features, num_samples=2, seed=0).shape      # [B, 2, 3, 32, 32]
        """
        from tqdm.auto import tqdm

        num_inference_steps, guidance_scale, scheduler, feature_guidance_scale, feature_guidance_steps = \
            _sampler_settings(num_samples, batch_size, num_inference_steps, guidance_scale, scheduler, guidance_mode,
                              feature_guidance_scale, feature_guidance_steps, seed=seed)
        check_features(self, features)
        warn_if_off_distribution(self, features)
        device = self.base.prompt_embeds.device
        if feature_guidance_scale > 0:
            classifier = self._guidance_classifier(device) if classifier is None else self._checked(classifier)
        B, S = features.shape[0], num_samples
        # 1. all noise up front on the CPU, so results do not depend on batch_size or device
        g = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((B * S, *self.base.latent_shape), generator=g)
        maps = features.detach().float()
        out = torch.empty(B * S, 3, self.image_size, self.image_size)
        chunks = range(0, B * S, batch_size)
        # feature guidance takes gradients inside the loop, which inference mode would forbid (and
        # inference_mode(False) would turn gradients on for the whole loop): it runs under no_grad alone
        no_inference = feature_guidance_scale > 0
        with tqdm(total=len(chunks) * num_inference_steps, desc="FeatInv", disable=not progress) as bar, \
                (nullcontext() if no_inference else torch.inference_mode()), \
                _embedded_condition(self.controlnet) as embed:
            for s in chunks:
                e = min(s + batch_size, B * S)
                # 2. the denoiser, conditioned on this chunk's maps (embedded once, not at every step)
                predict = self._predictor(embed, maps, range(s, e), S, guidance_scale != 1.0, guidance_mode)
                # 3. a fresh scheduler and this chunk's share of the noise
                sched = self.base.make_scheduler(scheduler, num_inference_steps)
                z = noise[s:e].to(device) * sched.init_noise_sigma
                # 4. the denoising loop, with classifier-free guidance and, if asked, feature guidance
                guide = None if feature_guidance_scale == 0 else self._feature_guide(
                    classifier, maps[torch.arange(s, e) // S].to(device), sched, feature_guidance_scale,
                    sched.timesteps[-feature_guidance_steps:])
                z = denoise(predict, z, sched, guidance_scale=guidance_scale, guide=guide,
                            callback=lambda *_: bar.update(1))
                # 5. decode into the output
                out[s:e] = self.base.decode(z).float().cpu()
        return out.view(B, S, 3, self.image_size, self.image_size)

    def _guidance_classifier(self, device: torch.device) -> nn.Module:
        """:meth:`_cached_classifier`, for feature guidance, with an error that says how to do without it."""
        try:
            return self._cached_classifier(device)
        except (UnknownModelError, WeightsUnavailableError) as e:
            raise type(e)(
                f"feature guidance (feature_guidance_scale > 0; the default is {DEFAULT_FEATURE_GUIDANCE_SCALE}) "
                f"runs the classifier {self.classifier_name!r} on the images being sampled, and it could not be "
                f"loaded: {e}. Pass the model that made the features as classifier=..., or turn feature "
                f"guidance off with feature_guidance_scale=0.") from e

    def _cached_classifier(self, device: torch.device) -> nn.Module:
        """The shipped or timm classifier named ``self.classifier_name`` on ``device``, reading
        ``self.classifier_input_size`` when the inverter recorded one: loaded once per device for
        :meth:`invert_images` and feature guidance, and kept outside the module tree (it is neither saved nor moved
        with the inverter)."""
        from ..models import load_classifier

        cached = self.__dict__.get("_classifier_cache")
        if cached is None or cached[0] != str(device):
            classifier = load_classifier(self.classifier_name, device=device)
            if self.classifier_input_size is not None:
                classifier.input_size = self.classifier_input_size
            cached = (str(device), classifier)
            self.__dict__["_classifier_cache"] = cached
        return cached[1]

    def _checked(self, classifier: nn.Module) -> nn.Module:
        """``classifier``, refused when it reads another input size than the one this inverter recorded."""
        size = getattr(classifier, "input_size", None)
        if self.classifier_input_size is not None and size is not None and \
                tuple(size) != self.classifier_input_size:
            raise InverterMismatchError(
                f"this inverter was trained on maps of {self.classifier_name!r} reading {self.classifier_input_size} "
                f"images, but the given classifier reads {tuple(size)}: its maps would have another size. Set "
                f"classifier.input_size = {self.classifier_input_size}, or leave classifier=None to load it by name.")
        return classifier

    def _predictor(self, embed: Callable[[torch.Tensor], torch.Tensor], maps: torch.Tensor, rows: range, S: int,
                   guided: bool, guidance_mode: str) -> Predictor:
        """The denoiser of output rows ``rows`` (row ``i`` is sample ``i % S`` of map ``i // S``), as
        :func:`~workbench.diffusion.denoise` calls it. With guidance, the second half of its batch is unconditional:
        zero features and the null prompt (``"features"``), or the same features and the null prompt
        (``"prompt"``)."""
        device = self.base.prompt_embeds.device
        first, last = rows.start // S, (rows.stop - 1) // S
        cond = embed(maps[first:last + 1].to(device)).repeat_interleave(S, 0)[
            rows.start - first * S:rows.stop - first * S]
        emb = self.base.embeds(len(rows))
        if guided:
            uncond = cond if guidance_mode == "prompt" else \
                embed(torch.zeros_like(maps[:1], device=device)).expand_as(cond)  # the same for every row
            cond, emb = torch.cat([cond, uncond]), torch.cat([emb, self.base.embeds(len(rows), null=True)])
        return lambda model_input, t: self.predict_noise(model_input, t, cond, emb)

    def _feature_guide(self, classifier: nn.Module, target: torch.Tensor, scheduler, scale: float,
                       timesteps: torch.Tensor) -> Guide:
        """The :data:`~workbench.diffusion.Guide` of feature guidance towards the maps ``target`` ``[b, C, h, w]``
        (one per row), acting at ``timesteps``: the loss of clean latents ``x0`` is one minus the cosine between the
        flattened map of ``classifier`` at ``self.layer`` on the decoded image (resized to its input) and the
        target's. A pooled inverter (``pooling="mean"``) compares spatial means only, so that the guidance adds no
        spatial information its condition lacks."""
        from ..hooks import run_with_cache
        from ..models import classifier_view

        def flat(maps: torch.Tensor) -> torch.Tensor:
            return (maps.mean((2, 3)) if self.pooling == "mean" else maps.flatten(1)).float()

        target = flat(target.detach().clone())

        def loss(x0: torch.Tensor) -> torch.Tensor:
            _, cache = run_with_cache(classifier, classifier_view(self.base.decode(x0), classifier), self.layer,
                                      detach=False)
            return 1 - F.cosine_similarity(flat(cache[self.layer]), target, dim=1)

        return gradient_guide(loss, scheduler, scale, timesteps=timesteps)

    def invert_images(self, images: torch.Tensor, classifier: nn.Module | None = None, **kwargs) -> torch.Tensor:
        """Capture ``self.layer`` of ``images`` ``[B, 3, H, W]`` in [0, 1] with ``classifier`` (default: the
        shipped or timm model named ``self.classifier_name``), resized to its input size, then :meth:`invert`
        them with ``kwargs`` -> ``[B, S, 3, H, W]``; feature guidance, if on, uses the same classifier."""
        from ..checks import check_images

        check_images(images, "images")  # before any classifier loads
        device = self.base.prompt_embeds.device
        classifier = self._cached_classifier(device) if classifier is None else self._checked(classifier)
        return capture_and_invert(self, images, classifier, device=device,
                                  classifier=classifier, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path, *, fp16: bool = True, card: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` + ``controlnet.safetensors`` (+ ``card.json``). The base is referenced by
        name or path, never copied."""
        write_pretrained(self, path, {"controlnet.safetensors": self.controlnet}, fp16=fp16, card=card)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, base=None, device: str | torch.device = "cpu") -> "FeatInv":
        """Rebuild from :meth:`save_pretrained`'s folder; the base is loaded by its recorded name unless given."""
        from ..diffusion import DiffusionBase

        path = Path(path)
        cfg = read_config(path, cls)
        if base is None:  # with the training prompt, when one was recorded
            prompt = {"prompt": cfg["prompt"]} if cfg.get("prompt") is not None else {}
            base = DiffusionBase.from_pretrained(cfg["base"], device=device, **prompt)
        if list(base.latent_shape) != list(cfg["latent_shape"]) or base.image_size != cfg["image_size"]:
            raise InverterMismatchError(
                f"the inverter in {path} was trained on a base with latents {tuple(cfg['latent_shape'])} at "
                f"{cfg['image_size']} px, but the given base has {base.latent_shape} at {base.image_size} px")
        inv = cls(**init_kwargs(cls, cfg, base=base))
        load_weights(inv.controlnet, path / "controlnet.safetensors")
        inv.card = training_card(path)
        return inv.to(device).eval()


def _sampler_settings(num_samples, batch_size, num_inference_steps, guidance_scale, scheduler, guidance_mode,
                      feature_guidance_scale, feature_guidance_steps, seed=0) -> tuple:
    """``invert``'s sampler arguments with the module defaults filled in, each checked (counts are ints >= 1, scales
    finite and >= 0, the seed in ``[0, 2**64)``; :mod:`workbench.checks` names the bad one); returns
    ``(num_inference_steps, guidance_scale, scheduler, feature_guidance_scale, feature_guidance_steps)``."""
    from ..checks import check_seed, checked_float, checked_int
    from ..errors import ArgumentValueError

    checked_int(num_samples, "num_samples", minimum=1)
    checked_int(batch_size, "batch_size", minimum=1)
    check_seed(seed)
    num_inference_steps = DEFAULT_NUM_INFERENCE_STEPS if num_inference_steps is None \
        else checked_int(num_inference_steps, "num_inference_steps", minimum=1)
    guidance_scale = DEFAULT_GUIDANCE_SCALE if guidance_scale is None \
        else checked_float(guidance_scale, "guidance_scale", minimum=0.0)
    scheduler = DEFAULT_SCHEDULER if scheduler is None else scheduler
    feature_guidance_scale = DEFAULT_FEATURE_GUIDANCE_SCALE if feature_guidance_scale is None \
        else checked_float(feature_guidance_scale, "feature_guidance_scale", minimum=0.0)
    feature_guidance_steps = DEFAULT_FEATURE_GUIDANCE_STEPS if feature_guidance_steps is None \
        else checked_int(feature_guidance_steps, "feature_guidance_steps", minimum=1)
    if guidance_mode not in ("features", "prompt"):
        raise ArgumentValueError(f"guidance_mode={guidance_mode!r}; expected 'features' or 'prompt'")
    return num_inference_steps, guidance_scale, scheduler, feature_guidance_scale, feature_guidance_steps


@contextmanager
def _embedded_condition(controlnet: nn.Module):
    """Within the block, the ControlNet takes its condition already embedded: it yields the
    :class:`FeatureConditioning` (call it once per batch) and puts an identity in its place, so that the
    denoising loop does not re-embed the same maps at every step. The module is restored in ``finally``."""
    embedding = controlnet.controlnet_cond_embedding
    controlnet.controlnet_cond_embedding = nn.Identity()
    try:
        yield embedding
    finally:
        controlnet.controlnet_cond_embedding = embedding


def invariance_map(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel spread across samples of the same map: what the features leave undetermined.

    Args:
        samples: ``Tensor[B, S, 3, H, W]`` with ``S >= 2``.

    Returns:
        ``Tensor[B, 1, H, W]``: the standard deviation over samples, averaged over colour channels.
    """
    if samples.ndim != 5 or samples.shape[1] < 2:
        raise ValueError(f"invariance_map needs samples shaped [B, S, 3, H, W] with S >= 2, got {tuple(samples.shape)}")
    return samples.float().std(1).mean(1, keepdim=True)


def sampler_description(num_inference_steps: int | None = None, guidance_scale: float | None = None,
                        scheduler: str | None = None, guidance_mode: str = DEFAULT_GUIDANCE_MODE,
                        feature_guidance_scale: float | None = None, feature_guidance_steps: int | None = None,
                        **_) -> str:
    """How a metric's samples were drawn, for cards, from :meth:`FeatInv.invert`'s sampler arguments (the others
    are ignored): e.g. ``"dpm++ 20 steps, guidance 2.0 (features)"``, and with feature guidance
    ``"ddim 8 steps, guidance 3.0 (features), feature guidance 0.05 at the last 2 steps"``."""
    steps = num_inference_steps or DEFAULT_NUM_INFERENCE_STEPS
    fg = DEFAULT_FEATURE_GUIDANCE_SCALE if feature_guidance_scale is None else float(feature_guidance_scale)
    fg_steps = DEFAULT_FEATURE_GUIDANCE_STEPS if feature_guidance_steps is None else int(feature_guidance_steps)
    where = "" if fg_steps >= steps else f" at the last {fg_steps} steps"
    return (f"{scheduler or DEFAULT_SCHEDULER} {steps} steps, "
            f"guidance {DEFAULT_GUIDANCE_SCALE if guidance_scale is None else guidance_scale} ({guidance_mode})"
            + (f", feature guidance {fg:g}{where}" if fg else ""))
