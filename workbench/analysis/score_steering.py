"""Steering with the inverter's own score: classifier-free guidance between an edited map and the original map.

An edit that the inverter ignores leaves its denoiser's prediction almost where the original map puts it. The
difference of the two predictions is still the direction in which the edit moves the image, as the inverter
itself reads it; scaling that difference up (``edit_scale`` above 1) follows the edit further than the edited map
alone does. Per denoising step, with ``u`` the unconditional prediction (zero map, null prompt), ``o`` the
prediction on the original map and ``e`` on the edited map (both with the prompt):

    prediction = u + g * (o + w * (e - o) - u)

with ``g`` the sampler's classifier-free guidance scale and ``w`` the edit's (``edit_scale``). ``w = 1`` is FeatInv
on the edited map, ``w = 0`` on the original; an unedited map (``e = o``) gives the unsteered inversion for any
``w``. The noise is drawn as ``FeatInv.invert`` draws it (one CPU generator seeded with ``seed``, all rows up front),
so a study's alphas share it. Feature guidance, when the sampler asks for it, pulls towards the *edited* map, as
``invert`` on that map would.

It runs FeatInv's public pieces (``predict_noise``, ``base.make_scheduler``, ``base.embeds``, ``base.decode``) and
:func:`workbench.diffusion.denoise`; FeatInv's own loop is not touched.

Example:
    >>> samples = score_guided_invert(inv, f, direction_edit(star)(f, 2.0), edit_scale=3.0, seed=0)  # [B, 1, 3, 32, 32]
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import AnalysisError, ArgumentValueError
from ..inverters.sampler import Sampler


def _check_maps(inverter, originals: Tensor, edited: Tensor) -> None:
    """Refuse maps that do not pair up or do not fit the inverter."""
    want = tuple(getattr(inverter, "feature_shape", originals.shape[1:]))
    if originals.shape != edited.shape or originals.ndim != 4 or tuple(originals.shape[1:]) != want:
        raise AnalysisError(f"score_guided_invert pairs each original map with its edit, both Tensor[B, C, h, w] of "
                            f"the inverter's shape {list(want)}; got {list(originals.shape)} and "
                            f"{list(edited.shape)}")
    if not (torch.isfinite(originals).all() and torch.isfinite(edited).all()):
        raise AnalysisError("score_guided_invert got non-finite maps; check the edit's alpha")


def _score_predictor(inverter, original: Tensor, edited: Tensor, guidance_scale: float,
                     edit_scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The denoiser of rows whose maps are ``original`` and ``edited`` (``[b, C, h, w]`` each, one per row): one
    batched call over the edited, original and (with guidance) unconditional branches, combined as the module says."""
    b = len(original)
    guided = guidance_scale != 1.0
    maps = [edited, original] + ([torch.zeros_like(original)] if guided else [])
    cond = torch.cat(maps)
    emb = inverter.base.embeds(b * len(maps))
    if guided:
        null = torch.zeros(b * len(maps), dtype=torch.bool)
        null[2 * b:] = True
        emb = inverter.base.embeds(b * len(maps), null=null.to(emb.device))

    def predict(z: Tensor, t: Tensor) -> Tensor:
        out = inverter.predict_noise(torch.cat([z] * len(maps)), t, cond, emb)
        e, o = out[:b], out[b:2 * b]
        steered = o + edit_scale * (e - o)
        return out[2 * b:] + guidance_scale * (steered - out[2 * b:]) if guided else steered

    return predict


def _feature_guide(inverter, classifier: nn.Module, target: Tensor, scheduler, sampler: Sampler):
    """Feature guidance towards ``target`` maps ``[b, C, h, w]`` (one minus the cosine of the classifier's map of the
    decoded clean estimate to the target), at the sampler's steps before the last, as FeatInv's default does."""
    import torch.nn.functional as F

    from ..diffusion import gradient_guide
    from ..hooks import run_with_cache
    from ..models import classifier_view

    flat_target = (target.mean((2, 3)) if inverter.pooling == "mean" else target.flatten(1)).float()

    def loss(x0: Tensor) -> Tensor:
        image = classifier_view(inverter.base.decode(x0.float()), classifier)
        _, cache = run_with_cache(classifier, image, inverter.layer, detach=False)
        m = cache[inverter.layer]
        m = m.mean((2, 3)) if inverter.pooling == "mean" else m.flatten(1)
        return 1 - F.cosine_similarity(m.float(), flat_target, dim=1)

    steps = scheduler.timesteps[:-1][-sampler.feature_guidance_steps:]
    return gradient_guide(loss, scheduler, sampler.feature_guidance_scale, timesteps=steps)


@torch.no_grad()
def score_guided_invert(inverter, originals: Tensor, edited: Tensor, *, edit_scale: float = 2.0,
                        num_samples: int = 1, seed: int = 0, sampler: Sampler | None = None,
                        classifier: nn.Module | None = None, batch_size: int = 64, progress: bool = True) -> Tensor:
    """Invert ``edited`` maps with classifier-free guidance between them and their ``originals`` (module docstring).

    Args:
        inverter: a FeatInv (``predict_noise``, ``base``, ``layer``, ``pooling``).
        originals: ``Tensor[B, C, h, w]``, the unedited maps.
        edited: ``Tensor[B, C, h, w]``, their edits, row for row.
        edit_scale: ``w``, how far along the edited-minus-original prediction to go (1: the edited map alone).
        num_samples: ``S`` images per map; row ``i * S + s`` starts from the noise ``invert`` would give it.
        seed: the noise's seed, as ``invert``'s.
        sampler: the :class:`~workbench.Sampler` (default ``Sampler()``); ``guidance_mode="features"`` only.
        classifier: the model of the maps, for feature guidance (needed when the sampler's
            ``feature_guidance_scale > 0``).
        batch_size: rows denoised together (results do not depend on it).
        progress: a bar over denoising steps.

    Returns:
        ``Tensor[B, S, 3, H, W]`` in [0, 1], float32, on the CPU.

    Raises:
        AnalysisError: maps that do not pair up or fit the inverter.
        ArgumentValueError: a non-finite ``edit_scale``, the ``"prompt"`` guidance mode, or feature guidance
            without a classifier.

    Example:
        >>> score_guided_invert(inv, f, edited, edit_scale=3.0, sampler=wb.Sampler(feature_guidance_scale=0))
    """
    from tqdm.auto import tqdm

    from ..checks import check_result
    from ..diffusion import denoise

    sampler = Sampler.build(sampler)
    _check_maps(inverter, originals, edited)
    if not (isinstance(edit_scale, (int, float)) and abs(float(edit_scale)) < float("inf")):
        raise ArgumentValueError(f"edit_scale={edit_scale!r}; pass a finite number such as 2.0 (1 = the edited map)")
    if sampler.guidance_mode != "features":
        raise ArgumentValueError(f"guidance_mode={sampler.guidance_mode!r}: score steering's unconditional branch "
                                 "drops the map; use Sampler(guidance_mode='features')")
    if sampler.feature_guidance_scale > 0 and classifier is None:
        raise ArgumentValueError("the sampler's feature_guidance_scale > 0 needs the maps' classifier=; pass it, or "
                                 "use Sampler(feature_guidance_scale=0)")
    B, S = originals.shape[0], int(num_samples)
    device = inverter.base.prompt_embeds.device
    g = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((B * S, *inverter.base.latent_shape), generator=g)  # as FeatInv.invert draws it
    rows_orig = originals.detach().float().repeat_interleave(S, 0)
    rows_edit = edited.detach().float().repeat_interleave(S, 0)
    out = torch.empty(B * S, 3, inverter.image_size, inverter.image_size)
    chunks = range(0, B * S, batch_size)
    with tqdm(total=len(chunks) * sampler.num_inference_steps, desc="score steering", disable=not progress) as bar:
        for s in chunks:
            e = min(s + batch_size, B * S)
            o, d = rows_orig[s:e].to(device), rows_edit[s:e].to(device)
            predict = _score_predictor(inverter, o, d, sampler.guidance_scale, float(edit_scale))
            sched = inverter.base.make_scheduler(sampler.scheduler, sampler.num_inference_steps)
            guide = (None if sampler.feature_guidance_scale == 0
                     else _feature_guide(inverter, classifier, d, sched, sampler))
            z = denoise(predict, noise[s:e].to(device) * sched.init_noise_sigma, sched, guide=guide,
                        callback=lambda *_: bar.update(1), generator=g)
            out[s:e] = check_result(inverter.base.decode(z).float().cpu(), "score_guided_invert",
                                    f"edit_scale={edit_scale:g}, so large that the prediction overflows; use 1 to 4")
    return out.view(B, S, 3, inverter.image_size, inverter.image_size)
