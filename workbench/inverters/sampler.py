"""The sampler: how FeatInv draws images, as one frozen value with its defaults in one place.

A :class:`Sampler` holds every setting of FeatInv's denoising loop: the diffusers scheduler and its step count,
classifier-free guidance (scale and meaning) and feature guidance (scale and reach). Its field defaults are *the*
defaults of the workbench: ``FeatInv.invert``, ``wb.evaluate``, the analysis studies, the robustness study, the
presets and the explorer all take a ``sampler=`` and fall back to ``Sampler()``. ``invert``'s loose keyword arguments
(``num_inference_steps=8``) still work: they build a Sampler (:meth:`Sampler.build`).

A Sampler checks its values when it is made (counts are ints >= 1, scales finite and >= 0, known names), so a bad
setting fails before any model runs, and it describes itself for cards and tables (:meth:`Sampler.describe`).

Example:
    >>> fast = Sampler(num_inference_steps=8, feature_guidance_scale=0.0)
    >>> inv.invert(features, sampler=fast, seed=0)                   # the same as the loose keyword arguments
    >>> fast.describe()                                              # 'ddim 8 steps, guidance 3.0 (features)'
    >>> Sampler.build(fast, guidance_scale=2.0)                      # fast with one setting changed
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..diffusion import DEFAULT_SCHEDULER

#: The schedulers ``DiffusionBase.make_scheduler`` builds for sampling (``"dpm++"`` is DPM-Solver++ 2M).
SCHEDULERS = ("ddim", "dpm++", "dpmsolver++", "dpm", "ddpm")
#: What the unconditional branch of classifier-free guidance drops (see :mod:`workbench.inverters.featinv`).
GUIDANCE_MODES = ("features", "prompt")


@dataclass(frozen=True)
class Sampler:
    """FeatInv's sampling settings; the defaults were chosen by ``benchmarks/sampler_tradeoff.py`` (see
    benchmarks/README.md and docs/benchmarks-log.md).

    Attributes:
        num_inference_steps: denoising steps of the scheduler.
        guidance_scale: classifier-free guidance, ``uncond + scale * (cond - uncond)``; 1 turns it off.
        scheduler: ``"ddim"`` or ``"dpm++"`` (DPM-Solver++ 2M), built from the base's config.
        guidance_mode: ``"features"`` (the unconditional branch drops the features and the prompt) or ``"prompt"``
            (both branches see the features; the official code's behaviour).
        feature_guidance_scale: the RMS step of the predicted clean latents per denoising step along the gradient of
            one minus the classifier's feature cosine to the target map; 0 turns feature guidance off.
        feature_guidance_steps: feature guidance acts at that many of the late denoising steps (where the predicted
            clean image is sharp enough for the classifier), *never at the final one*: the last step always denoises
            without guidance; ``num_inference_steps - 1`` or more: every step but the last (so a one-step sampler is
            never guided, and says so in :meth:`describe`).

    Feature guidance follows the inverted classifier's gradients, so it changes what the lens shows in ways that
    model reads most easily: grade it with the independent judges (:mod:`workbench.judges`), never by that model.
    """

    num_inference_steps: int = 5
    guidance_scale: float = 3.0
    scheduler: str = DEFAULT_SCHEDULER
    guidance_mode: str = "features"
    feature_guidance_scale: float = 0.025
    feature_guidance_steps: int = 2

    def __post_init__(self) -> None:
        from ..checks import checked_float, checked_int
        from ..errors import ArgumentValueError

        # frozen: the checked (converted) values are written once, here
        object.__setattr__(self, "num_inference_steps",
                           checked_int(self.num_inference_steps, "num_inference_steps", minimum=1))
        object.__setattr__(self, "guidance_scale", checked_float(self.guidance_scale, "guidance_scale", minimum=0.0))
        object.__setattr__(self, "feature_guidance_scale",
                           checked_float(self.feature_guidance_scale, "feature_guidance_scale", minimum=0.0))
        object.__setattr__(self, "feature_guidance_steps",
                           checked_int(self.feature_guidance_steps, "feature_guidance_steps", minimum=1))
        if self.scheduler not in SCHEDULERS:
            raise ArgumentValueError(f"scheduler={self.scheduler!r}; expected one of {SCHEDULERS}")
        if self.guidance_mode not in GUIDANCE_MODES:
            raise ArgumentValueError(f"guidance_mode={self.guidance_mode!r}; expected 'features' or 'prompt'")

    @classmethod
    def build(cls, sampler: "Sampler | None" = None, **settings: Any) -> "Sampler":
        """``sampler`` (default ``Sampler()``) with the ``settings`` that are not None put in: how ``invert``'s
        loose keyword arguments become a Sampler.

        Raises:
            TypeError: a setting that is not a field (the message lists the fields), or a ``sampler`` that is not a
                Sampler (a dict of settings: write ``Sampler(**settings)``).

        Example:
            >>> Sampler.build(num_inference_steps=8, guidance_scale=None)     # Sampler(num_inference_steps=8, ...)
        """
        if sampler is None:
            sampler = cls()
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler={sampler!r} is a {type(sampler).__name__}, not a Sampler; pass "
                            f"wb.Sampler(**settings) (fields: {', '.join(cls.fields())})")
        unknown = sorted(set(settings) - set(cls.fields()))
        if unknown:
            raise TypeError(f"{unknown} are not sampler settings; a Sampler has {', '.join(cls.fields())}")
        changes = {k: v for k, v in settings.items() if v is not None}
        return dataclasses.replace(sampler, **changes) if changes else sampler

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The settings' names, in order: ``("num_inference_steps", "guidance_scale", ...)``."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (JSON-ready), e.g. for a table's attrs or a card."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """How a metric's samples were drawn, for cards: e.g. ``"dpm++ 20 steps, guidance 2.0 (features)"``, and
        with feature guidance ``"ddim 8 steps, guidance 3.0 (features), feature guidance 0.05 at the last 2
        steps"``."""
        if self.feature_guidance_scale and self.num_inference_steps < 2:
            return (f"{self.scheduler} 1 step, guidance {self.guidance_scale} ({self.guidance_mode}), no feature "
                    "guidance (it never acts at the final step)")
        every_step = self.feature_guidance_steps >= self.num_inference_steps - 1
        where = (" at every step but the last" if every_step
                 else f" at the {self.feature_guidance_steps} steps before the last")
        guided = f", feature guidance {self.feature_guidance_scale:g}{where}" if self.feature_guidance_scale else ""
        return (f"{self.scheduler} {self.num_inference_steps} steps, guidance {self.guidance_scale} "
                f"({self.guidance_mode}){guided}")


def study_sampler(inverter: Any, sampler: Sampler | None = None,
                  options: dict[str, Any] | None = None) -> tuple[Sampler | None, dict[str, Any]]:
    """The sampler a study (``wb.evaluate``, the analysis studies, the robustness study, the explorer) hands to
    ``inverter.invert(..., sampler=...)`` and records in what it returns, and the options left for ``invert``.

    For a kind that samples (``inverter.uses_sampler``, FeatInv): ``sampler`` (default ``Sampler()``) with the loose
    settings among ``options`` put in (:meth:`Sampler.build`). For the others (the decoder, the optimisation
    baseline): ``sampler`` as given, which they ignore, and ``options`` untouched.

    Example:
        >>> sampler, rest = study_sampler(inv, None, {"num_inference_steps": 8, "batch_size": 16})
        >>> sampler.num_inference_steps, rest                       # (8, {'batch_size': 16})
    """
    options = dict(options or {})
    if not getattr(inverter, "uses_sampler", False):
        return sampler, options
    settings = {k: options.pop(k) for k in Sampler.fields() if k in options}
    return Sampler.build(sampler, **settings), options
