"""The numbers on the cards: what an inverter's and the diffusion base's cards report, measured the same way by
training (:mod:`workbench.training.featinv`, ``decoder``, ``base``) and by re-measuring (:mod:`workbench.training.cards`).

Example:
    >>> inverter_card_metrics(wb.load_inverter("tinyworld-cnn/stages.3"), cnn, num_images=16)["top1_agreement"]
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .inverters.interface import Inverter


@torch.no_grad()
def inverter_card_metrics(inverter: Inverter, classifier: nn.Module, *, num_images: int = 256, seed: int = 0,
                          **invert_kwargs) -> dict[str, Any]:
    """What an inverter's card reports: one reconstruction of each of ``num_images`` held-out tiny-world test
    images (``tinyworld_images(num_images, split="test", seed=seed)``), measured by the feature cosine at the
    inverted layer, top-1 agreement and PSNR; a FeatInv card also names the sampler.

    Args:
        inverter: any inverter with ``invert_images(images, classifier, num_samples=, seed=, progress=)``.
        classifier: the classifier it inverts.
        num_images: test images.
        seed: seeds the test split and the inverter.
        **invert_kwargs: sampler arguments of ``invert`` (FeatInv's scheduler, steps, guidance).

    Returns:
        ``{"test_images", "feature_cosine", "top1_agreement", "psnr"}`` (+ ``"sampler"`` for FeatInv), rounded, and for
        tiny-world images the independent graders' ``judge_agreement``, ``shape_accuracy`` and ``position_error``
        (with ``graded_by``): the first two are graded by the inverted classifier itself.

    Example:
        >>> inverter_card_metrics(wb.load_inverter("tinyworld-cnn/stages.3"), cnn, num_images=16)["top1_agreement"]
    """
    from . import metrics as M
    from .inverters.featinv import FeatInv, sampler_description
    from .tinyworld import tinyworld_images

    images, _ = tinyworld_images(num_images, split="test", seed=seed)
    x = images.float() / 255
    rec = inverter.invert_images(x, classifier, num_samples=1, seed=seed, progress=False, **invert_kwargs)[:, 0]
    out = {"test_images": num_images,
           "feature_cosine": round(M.feature_cosine(classifier, inverter.layer, x, rec).mean().item(), 4),
           "top1_agreement": round(M.topk_agreement(classifier, x, rec, k=(1,))["top1"].float().mean().item(), 4),
           "psnr": round(M.psnr(x, rec).mean().item(), 2)}
    if isinstance(inverter, FeatInv):
        timesteps = getattr(inverter, "timesteps", None)      # a distilled FeatInv samples without a scheduler loop
        out["sampler"] = (sampler_description(**invert_kwargs) if timesteps is None else
                          f"distilled: {len(timesteps)} evaluation(s) at timestep(s) {list(timesteps)}, no guidance pass")
    out.update(_judged_card_metrics(x, rec, num_images, seed))
    return out


def _judged_card_metrics(x: torch.Tensor, rec: torch.Tensor, num_images: int, seed: int) -> dict[str, Any]:
    """The judges' part of a card: ``judge_agreement`` (mean over the shipped judges of top-1 agreement with the
    original) and the factor reader's ``shape_accuracy`` and position error ``position_error`` (x and y, in spreads);
    nothing for images other than the tiny world's 32 px. ``graded_by`` says which numbers come from whom."""
    from .judges import factor_columns, judge_columns, shipped_graders
    from .tinyworld import TinyWorld

    from .errors import WeightsUnavailableError

    if tuple(x.shape[-2:]) != (32, 32):
        return {}
    try:
        judges, reader = shipped_graders(x.device)
    except WeightsUnavailableError:  # a data folder made by `make weights` alone holds no judges yet
        return {"graded_by": "feature_cosine, top1_agreement: the inverted classifier itself (no judges in this "
                             "data folder)"}
    agree = judge_columns(judges, x, rec)
    factors = factor_columns(reader, rec, TinyWorld("test", size=num_images, seed=seed).factors)
    mean_agree = torch.stack([v for k, v in agree.items() if k.startswith("judge_agree[")]).nanmean()
    return {"judge_agreement": round(float(mean_agree), 4),
            "shape_accuracy": round(float(factors["factor[shape]"].nanmean()), 4),
            "position_error": round(float((factors["factor[x]"] + factors["factor[y]"]).nanmean() / 2), 4),
            "graded_by": "feature_cosine, top1_agreement: the inverted classifier itself; judge_agreement: "
                         "the shipped judges; shape_accuracy, position_error (spreads): the factor reader"}


@torch.no_grad()
def base_card_metrics(base: nn.Module, cnn: nn.Module, vit: nn.Module, *, num_images: int = 512,
                      num_inference_steps: int = 20, scheduler: str = "dpm++", seed: int = 0,
                      progress: bool = False) -> dict[str, Any]:
    """What the diffusion base's card reports: the quality of ``num_images`` unconditional samples.

    Args:
        base: a :class:`~workbench.DiffusionBase` of the tiny world.
        cnn: the classifier whose confidence judges the samples (``tinyworld-cnn``).
        vit: the classifier whose pooled features the Fréchet distances use (``tinyworld-vit``).
        num_images: samples, and real test images to compare them with.
        num_inference_steps, scheduler: the sampler.
        seed: seeds the samples and the real images.
        progress: show the sampler's progress bar.

    Returns:
        ``confident_fraction``: share of samples to which ``cnn`` gives some class a probability above 0.9;
        ``fd_samples_vs_real``: Fréchet distance between the samples and ``num_images`` real test images;
        ``fd_real_vs_real``: the same between those and as many validation images (the noise floor);
        ``class_histogram``: ``cnn``'s top class of each sample, counted; ``samples`` and ``sampler``.

    Example:
        >>> base_card_metrics(wb.DiffusionBase.from_pretrained("tinyworld-base"), cnn, vit, num_images=64)
    """
    from .metrics import frechet_distance, pooled_extractor
    from .tinyworld import tinyworld_images

    device = base.prompt_embeds.device
    samples = base.sample(num_images, num_inference_steps=num_inference_steps, scheduler=scheduler, seed=seed,
                          progress=progress)
    probs = torch.cat([cnn(samples[s:s + 256].to(device)).softmax(-1).cpu() for s in range(0, num_images, 256)])
    real_a, _ = tinyworld_images(num_images, split="test", seed=seed)
    real_b, _ = tinyworld_images(2 * num_images, split="val", seed=seed)
    ext = pooled_extractor(vit)
    fd_s = frechet_distance(real_a.float() / 255, samples, ext)
    fd_r = frechet_distance(real_a.float() / 255, real_b[num_images:].float() / 255, ext)
    return {"samples": num_images, "sampler": f"{scheduler} {num_inference_steps} steps",
            "confident_fraction": round((probs.max(-1).values > 0.9).float().mean().item(), 4),
            "fd_samples_vs_real": round(fd_s, 3), "fd_real_vs_real": round(fd_r, 3),
            "class_histogram": torch.bincount(probs.argmax(-1), minlength=probs.shape[1]).tolist()}
