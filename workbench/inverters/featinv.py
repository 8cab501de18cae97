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

import threading
import weakref
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_allocation, check_images, check_result
from ..diffusion import Guide, Predictor, denoise, diffusion_loss, gradient_guide
from ..errors import ArgumentValueError, InverterMismatchError, UnknownModelError, WeightsUnavailableError
from .base import InverterBase, register_inverter
from .interface import (
    describe, load_weights, normalize_features, register_feature_statistics, register_to_config,
    set_feature_statistics)
from .sampler import Sampler

#: The default sampler's settings under their old names, for scripts that read them; the defaults themselves live
#: in one place, the fields of :class:`~workbench.inverters.sampler.Sampler`.
DEFAULT_NUM_INFERENCE_STEPS = Sampler.num_inference_steps
DEFAULT_GUIDANCE_SCALE = Sampler.guidance_scale
DEFAULT_GUIDANCE_MODE = Sampler.guidance_mode
DEFAULT_FEATURE_GUIDANCE_SCALE = Sampler.feature_guidance_scale
DEFAULT_FEATURE_GUIDANCE_STEPS = Sampler.feature_guidance_steps
#: Where a saved FeatInv keeps its ControlNet, as a folder ``diffusers.ControlNetModel.from_pretrained(folder,
#: subfolder=CONTROLNET_FOLDER)`` reads (its feature embedding apart: :data:`FEATURE_EMBEDDING_FILE`).
CONTROLNET_FOLDER = "controlnet"
#: The :class:`FeatureConditioning` of a saved FeatInv, which diffusers' config cannot express, beside the folder.
FEATURE_EMBEDDING_FILE = "feature_embedding.safetensors"
#: The whole ControlNet in one file, as inverters saved before the diffusers-readable layout hold it (still read).
LEGACY_WEIGHTS_FILE = "controlnet.safetensors"


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
            raise ArgumentValueError(f"pooling={pooling!r}; expected 'none' (spatial) or 'mean' (pooled ablation)")
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
        x = (F.interpolate(x, size=self.latent_size, mode="bilinear", align_corners=False)
             if self.pooling == "none" else x.expand(-1, -1, *self.latent_size))
        return self.zero_out(self.encoder(x))


@register_inverter("featinv")
class FeatInv(InverterBase):
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
    by :meth:`save_pretrained`, which writes the ControlNet as a diffusers folder (:data:`CONTROLNET_FOLDER`). It
    is an :class:`~workbench.inverters.base.InverterBase`; ``invert`` takes a
    :class:`~workbench.inverters.sampler.Sampler`.
    """

    #: config keys that are not constructor arguments: recorded for loading to check
    derived_config = ("image_size", "latent_shape")
    uses_sampler = True

    @register_to_config
    def __init__(self, base, classifier_name: str, layer: str, feature_shape: Sequence[int], pooling: str = "none",
                 *, hidden_channels: int = 64, classifier_input_size: Sequence[int] | None = None,
                 prompt: str | None = None):
        super().__init__()
        from diffusers import ControlNetModel

        if len(feature_shape) != 3:
            raise ArgumentValueError(f"feature_shape={tuple(feature_shape)}: must be (C, h, w), e.g. the shape of one map "
                                     "from extract_features(classifier, images, layer)[0]")
        if classifier_input_size is not None and len(classifier_input_size) != 3:
            raise ArgumentValueError(f"classifier_input_size={tuple(classifier_input_size)}: must be (3, H, W), e.g. "
                                     "(3, 288, 288); leave it None for the classifier's default")
        self.classifier_input_size = (None if classifier_input_size is None
                                      else tuple(int(s) for s in classifier_input_size))
        self.prompt = prompt
        self.classifier_name = classifier_name
        self.layer = layer
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.pooling = pooling
        self.hidden_channels = hidden_channels
        self.image_size = base.image_size
        self.latent_shape = tuple(base.latent_shape)
        self.base = base
        self.base.requires_grad_(False)
        self.controlnet = ControlNetModel.from_unet(base.unet, load_weights_from_unet=True)
        self.controlnet.controlnet_cond_embedding = FeatureConditioning(
            self.feature_shape[0], self.controlnet.config.block_out_channels[0], base.latent_shape[1:],
            hidden_channels=hidden_channels, pooling=pooling)

    @property
    def conditioning(self) -> FeatureConditioning:
        return self.controlnet.controlnet_cond_embedding

    def __repr__(self) -> str:
        c, h, w = self.base.latent_shape
        recorded = {k: v for k, v in (("classifier_input_size", self.classifier_input_size),
                                      ("prompt", None if self.prompt is None else repr(self.prompt))) if v is not None}
        return describe(self, pooling=repr(self.pooling), base=f"{self.base.name} (latents {c}x{h}x{w})",
                        **recorded, sampler=Sampler().describe())


    # ------------------------------------------------------------------ the network
    def predict_noise(self, z: torch.Tensor, t: torch.Tensor, features: torch.Tensor, embeds: torch.Tensor,
                      conditioning_scale: float = 1.0) -> torch.Tensor:
        """One denoiser evaluation: latents ``[B, C, h, w]``, timesteps, maps ``[B, C_f, h_f, w_f]``,
        prompt embeddings ``[B, L, D]`` -> the base's prediction ``[B, C, h, w]`` (noise, or ``v`` for a
        v-prediction base)."""
        dtype = next(self.controlnet.parameters()).dtype  # half precision: float32 latents in its own dtype
        x, embeds = z.to(dtype), embeds.to(dtype)
        down, mid = self.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=features.to(dtype),
                                    conditioning_scale=conditioning_scale, return_dict=False)
        return self.base.unet(x, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample.to(z.dtype)

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
    def _sample(self, features: torch.Tensor, *, num_samples: int, generator: torch.Generator, progress: bool,
                batch_size: int, sampler: Sampler, classifier: nn.Module | None) -> torch.Tensor:
        """FeatInv's sampling, called by :meth:`~workbench.inverters.base.InverterBase.invert` once its checks have
        run: maps ``[B, C, h, w]`` -> images ``[B, S, 3, H, W]`` in [0, 1], float32, on the CPU.

        Steps: 1. all noise up front on the CPU from ``generator``, so that images do not depend on ``batch_size``
        or the device; then per chunk of ``batch_size`` rows: 2. the denoiser conditioned on the chunk's maps;
        3. a fresh scheduler (``sampler.scheduler``); 4. the denoising loop with classifier-free guidance and, if
        ``sampler.feature_guidance_scale > 0``, feature guidance; 5. decoding.

        With feature guidance, each of the ``sampler.feature_guidance_steps`` denoising steps *before the final one*
        (the final step always denoises the guided estimate without guidance, so that no gradient-made change is the
        last thing done to an image, which only the guiding classifier might read) also decodes the
        predicted clean latents, runs ``classifier`` (default: the shipped or timm model named
        ``self.classifier_name``) to ``self.layer`` and moves those latents down the gradient of one minus the
        feature cosine to the target map (:func:`~workbench.diffusion.gradient_guide`), in float32 whatever the
        inverter's dtype: the ControlNet gives the prior, the gradient sharpens the match. Each guided step costs a
        backward pass through the VAE decoder and the classifier, about as much as one step of the guided
        ControlNet and UNet. A scale of 0 gives exactly the unguided images and needs no classifier.
        """
        from tqdm.auto import tqdm

        num_inference_steps, guidance_scale = sampler.num_inference_steps, sampler.guidance_scale
        feature_guidance_scale = sampler.feature_guidance_scale
        device = self.base.prompt_embeds.device
        if feature_guidance_scale > 0:
            classifier = self._guidance_classifier(device) if classifier is None else self._checked_classifier(classifier)
        B, S = features.shape[0], num_samples
        check_allocation((B * S, 3 + self.base.latent_shape[0], self.image_size, self.image_size), torch.float32,
                         "cpu", f"invert({B} maps, num_samples={S})")
        # 1. all noise up front on the CPU, so results do not depend on batch_size or device
        g = generator
        noise = torch.randn((B * S, *self.base.latent_shape), generator=g)
        maps = features.detach().float()
        out = torch.empty(B * S, 3, self.image_size, self.image_size)
        chunks = range(0, B * S, batch_size)
        # feature guidance takes gradients inside the loop, which inference mode would forbid (and
        # inference_mode(False) would turn gradients on for the whole loop): it runs under no_grad alone
        no_inference = feature_guidance_scale > 0
        with (tqdm(total=len(chunks) * num_inference_steps, desc="FeatInv", disable=not progress) as bar,
              nullcontext() if no_inference else torch.inference_mode(),
              _embedded_condition(self.controlnet) as embed):  # one thread at a time: see _embedded_condition
            for s in chunks:
                e = min(s + batch_size, B * S)
                z = self._chunk_latents(embed, maps, noise, range(s, e), S, sampler, classifier, g, bar)
                # 5. decode into the output
                out[s:e] = check_result(self.base.decode(z).float().cpu(), "FeatInv.invert", _overflow_cause(
                    guidance_scale, feature_guidance_scale))
        return out.view(B, S, 3, self.image_size, self.image_size)

    def _chunk_latents(self, embed: Callable[[torch.Tensor], torch.Tensor], maps: torch.Tensor, noise: torch.Tensor,
                       rows: range, S: int, sampler: Sampler, classifier: nn.Module | None,
                       generator: torch.Generator, bar=None) -> torch.Tensor:
        """Steps 2 to 4 of :meth:`_sample` for the output rows ``rows`` (row ``i``: sample ``i % S`` of map
        ``i // S``; ``noise[i]`` its starting noise): the clean latents ``[len(rows), C, h, w]`` it decodes."""
        device = self.base.prompt_embeds.device
        s, e = rows.start, rows.stop
        # 2. the denoiser, conditioned on this chunk's maps (embedded once, not at every step)
        predict = self._predictor(embed, maps, rows, S, sampler.guidance_scale != 1.0, sampler.guidance_mode)
        # 3. a fresh scheduler and this chunk's share of the noise
        sched = self.base.make_scheduler(sampler.scheduler, sampler.num_inference_steps)
        z = noise[s:e].to(device) * sched.init_noise_sigma
        # 4. the denoising loop, with classifier-free guidance and, if asked, feature guidance
        guide = None if sampler.feature_guidance_scale == 0 else self._feature_guide(
            classifier, maps[torch.arange(s, e) // S].to(device), sched, sampler.feature_guidance_scale,
            sched.timesteps[:-1][-sampler.feature_guidance_steps:])  # never the final step
        return denoise(predict, z, sched, guidance_scale=sampler.guidance_scale, guide=guide,
                       callback=(lambda *_: bar.update(1)) if bar is not None else None, generator=generator)

    @torch.no_grad()
    def sample_latents(self, features: torch.Tensor, noise: torch.Tensor, *, sampler: Sampler | None = None,
                       classifier: nn.Module | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The clean latents that :meth:`invert` would decode, from given starting noise (a distillation's
        targets, :mod:`workbench.training.distill`): maps ``[B, C, h, w]`` and noise ``[B, *latent_shape]``, one
        sample per map -> latents ``[B, *latent_shape]``, float32 on the CPU. The maps are not checked here: pass
        checked ones. ``classifier`` serves feature guidance (default: loaded by name); ``generator``, a
        stochastic scheduler's draws (DDIM draws none)."""
        sampler = Sampler.build(sampler)
        if noise.shape != (features.shape[0], *self.base.latent_shape):
            raise ArgumentValueError(f"noise {tuple(noise.shape)} must be [B, *latent_shape] = "
                             f"[{features.shape[0]}, {', '.join(map(str, self.base.latent_shape))}]")
        device = self.base.prompt_embeds.device
        if sampler.feature_guidance_scale > 0:
            classifier = self._guidance_classifier(device) if classifier is None else self._checked_classifier(classifier)
        generator = torch.Generator("cpu").manual_seed(0) if generator is None else generator
        maps = features.detach().float()
        with (nullcontext() if sampler.feature_guidance_scale > 0 else torch.inference_mode(),
              _embedded_condition(self.controlnet) as embed):
            z = self._chunk_latents(embed, maps, noise.float(), range(0, len(maps)), 1, sampler, classifier, generator)
        return z.float().cpu()

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

    def _default_classifier(self) -> nn.Module:
        """:meth:`invert_images` captures with :meth:`_cached_classifier` when no classifier is given."""
        return self._cached_classifier(self.base.prompt_embeds.device)

    def _checked_classifier(self, classifier: nn.Module) -> nn.Module:
        """``classifier``, refused when it reads another input size than the one this inverter recorded."""
        size = getattr(classifier, "input_size", None)
        recorded = self.classifier_input_size
        if recorded is not None and size is not None and tuple(size) != recorded:
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
        dtype = next(self.controlnet.parameters()).dtype
        cond = embed(maps[first:last + 1].to(device, dtype)).repeat_interleave(S, 0)[
            rows.start - first * S:rows.stop - first * S]
        emb = self.base.embeds(len(rows))
        if guided:  # the unconditional branch is the same for every row
            zeros = torch.zeros_like(maps[:1], device=device, dtype=dtype)
            uncond = cond if guidance_mode == "prompt" else embed(zeros).expand_as(cond)
            cond, emb = torch.cat([cond, uncond]), torch.cat([emb, self.base.embeds(len(rows), null=True)])
        return lambda model_input, t: self.predict_noise(model_input, t, cond, emb)

    def _feature_guide(self, classifier: nn.Module, target: torch.Tensor, scheduler, scale: float,
                       timesteps: torch.Tensor) -> Guide:
        """The :data:`~workbench.diffusion.Guide` of feature guidance towards the maps ``target`` ``[b, C, h, w]``
        (one per row), acting at ``timesteps``: the loss of clean latents ``x0`` is one minus the cosine between the
        flattened map of ``classifier`` at ``self.layer`` on the decoded image (resized to its input) and the
        target's. A pooled inverter (``pooling="mean"``) compares spatial means only, so that the guidance adds no
        spatial information its condition lacks. The loss and its backward pass run in float32 (a half-precision
        base decodes through a float32 copy of its VAE, :meth:`_float32_decode`)."""
        from ..hooks import run_with_cache
        from ..models import classifier_view

        def flat(maps: torch.Tensor) -> torch.Tensor:
            return (maps.mean((2, 3)) if self.pooling == "mean" else maps.flatten(1)).float()

        target = flat(target.detach().clone())
        decode = self._float32_decode()

        def loss(x0: torch.Tensor) -> torch.Tensor:
            _, cache = run_with_cache(classifier, classifier_view(decode(x0.float()), classifier), self.layer,
                                      detach=False)
            return 1 - F.cosine_similarity(flat(cache[self.layer]), target, dim=1)

        return gradient_guide(loss, scheduler, scale, timesteps=timesteps)

    def _float32_decode(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``base.decode`` in float32: the base's own when its VAE is float32 (or it has none), else through a
        float32 copy of the VAE, made once and kept outside the module tree (neither saved nor moved)."""
        vae = self.base.vae
        if vae is None or next(vae.parameters()).dtype == torch.float32:
            return self.base.decode
        cached = self.__dict__.get("_float32_vae")
        if cached is None or cached[0] is not vae or next(cached[1].parameters()).device != self.device:
            import copy

            cached = (vae, copy.deepcopy(vae).float())
            self.__dict__["_float32_vae"] = cached
        vae32, factor = cached[1], self.base.scaling_factor
        return lambda latents: ((vae32.decode(latents.float() / factor).sample + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ persistence
    def _save_weights(self, path: Path, *, fp16: bool) -> None:
        """Write the ControlNet as a diffusers folder, ``path/controlnet/`` (``config.json`` and
        ``diffusion_pytorch_model.safetensors``, without the feature embedding), and the
        :class:`FeatureConditioning` beside it (:data:`FEATURE_EMBEDDING_FILE`). The base is referenced by name or
        path in ``config.json``, never copied."""
        from ..weights import save_state

        body = {k: v for k, v in self.controlnet.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        folder = path / CONTROLNET_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        save_state(body, folder / "diffusion_pytorch_model.safetensors", fp16=fp16)
        self.controlnet.save_config(folder)
        save_state(self.conditioning, path / FEATURE_EMBEDDING_FILE, fp16=fp16)

    def _load_weights(self, path: Path) -> None:
        """Read :meth:`_save_weights`' files, or the one ``controlnet.safetensors`` of an inverter saved before
        (the shipped ones): either way every tensor must match (:func:`controlnet_state`)."""
        if (path / LEGACY_WEIGHTS_FILE).is_file():
            load_weights(self.controlnet, path / LEGACY_WEIGHTS_FILE)
        else:
            load_weights(self.controlnet, path / CONTROLNET_FOLDER / "diffusion_pytorch_model.safetensors",
                         state=controlnet_state(path))

    @classmethod
    def _load_objects(cls, config: dict[str, Any], path: Path, *, device: str | torch.device, base=None,
                      **_: Any) -> dict[str, Any]:
        """The base: ``base``, or the one the config names (with the training prompt, when one was recorded),
        refused when its latents or image size are not those the inverter was trained on."""
        from ..diffusion import DiffusionBase

        if base is None:
            prompt = {"prompt": config["prompt"]} if config.get("prompt") is not None else {}
            base = DiffusionBase.from_pretrained(config["base"], device=device, **prompt)
        if list(base.latent_shape) != list(config["latent_shape"]) or base.image_size != config["image_size"]:
            raise InverterMismatchError(
                f"the inverter in {path} was trained on a base with latents {tuple(config['latent_shape'])} at "
                f"{config['image_size']} px, but the given base has {base.latent_shape} at {base.image_size} px; "
                f"pass the base named in its config.json ({config['base']!r}) or leave base=None")
        return {"base": base}


def controlnet_state(path: Path) -> dict[str, torch.Tensor]:
    """The whole ControlNet state (body and feature embedding, as ``inv.controlnet.state_dict()`` names it) of the
    FeatInv folder ``path``: from ``controlnet/`` and :data:`FEATURE_EMBEDDING_FILE`, or from the one
    :data:`LEGACY_WEIGHTS_FILE` of a folder saved before that layout (the shipped inverters)."""
    from ..weights import load_state

    path = Path(path)
    if (path / LEGACY_WEIGHTS_FILE).is_file():
        return load_state(path / LEGACY_WEIGHTS_FILE)
    body = load_state(path / CONTROLNET_FOLDER / "diffusion_pytorch_model.safetensors")
    embedding = load_state(path / FEATURE_EMBEDDING_FILE)
    return body | {f"controlnet_cond_embedding.{k}": v for k, v in embedding.items()}


def _overflow_cause(guidance_scale: float, feature_guidance_scale: float) -> str:
    """Which scale made :meth:`FeatInv.invert`'s images NaN, for :func:`~workbench.checks.check_result`."""
    scales = f"guidance_scale={guidance_scale:g}" + (
        f" or feature_guidance_scale={feature_guidance_scale:g}" if feature_guidance_scale > 0 else "")
    return f"{scales}, so large that the guided prediction overflows; leave it out (None) for the default"


@contextmanager
def _embedded_condition(controlnet: nn.Module):
    """Within the block, the ControlNet takes its condition already embedded: it yields the
    :class:`FeatureConditioning` (call it once per batch) and puts an identity in its place, so that the
    denoising loop does not re-embed the same maps at every step. The module is restored in ``finally``.

    The swap is held under one lock per ControlNet (:data:`_SWAP_LOCKS`): a second thread inverting with the same
    inverter waits for the first instead of finding the identity in place of the embedding."""
    with _SWAP_LOCKS.setdefault(controlnet, threading.Lock()):
        embedding = controlnet.controlnet_cond_embedding
        controlnet.controlnet_cond_embedding = nn.Identity()
        try:
            yield embedding
        finally:
            controlnet.controlnet_cond_embedding = embedding


#: ControlNet -> the lock that :func:`_embedded_condition` holds while its embedding is swapped out.
_SWAP_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()


def invariance_map(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel spread across samples of the same map: what the features leave undetermined.

    Args:
        samples: ``Tensor[B, S, 3, H, W]`` with ``S >= 2``.

    Returns:
        ``Tensor[B, 1, H, W]``: the standard deviation over samples, averaged over colour channels.
    """
    if samples.ndim != 5 or samples.shape[1] < 2:
        raise ArgumentValueError(f"invariance_map needs samples shaped [B, S, 3, H, W] with S >= 2, got "
                                 f"{tuple(samples.shape)}; draw them with invert(features, num_samples=2 or more)")
    check_images(samples.flatten(0, 1), "samples")      # floats in [0, 1]: 0..255 would give a spread 255 times too big
    return samples.float().std(1).mean(1, keepdim=True)


def sampler_description(**settings: Any) -> str:
    """:meth:`Sampler.describe <workbench.inverters.sampler.Sampler.describe>` of the sampler that ``settings``
    (``invert``'s loose sampler arguments, None for a default; other keys are ignored) build: e.g.
    ``"dpm++ 20 steps, guidance 2.0 (features)"``."""
    return Sampler.build(**{k: v for k, v in settings.items() if k in Sampler.fields()}).describe()
