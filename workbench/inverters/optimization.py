"""The optimisation baseline: an image optimised from noise until its features match (Mahendran & Vedaldi 2015).

Following Mahendran and Vedaldi, "Understanding deep image representations by inverting them" (CVPR 2015):
find ``x`` minimising

    ||Φ(x) - Φ0||² / ||Φ0||²  +  tv_weight · TV_β(x)  +  norm_weight · mean(|2x - 1|^α)

where ``Φ`` is the classifier's map at ``layer``, ``TV_β`` the mean of ``(dx² + dy²)^(β/2)`` over pixels
(β = 2) and the α-norm (α = 6) keeps pixels inside their range. The image is parameterised as
``x = sigmoid(p)`` so it always lies in [0, 1], ``p`` starts from seeded Gaussian noise, and Adam runs for
``num_optimizer_steps`` steps with a cosine learning-rate decay and a random jitter of up to ``jitter`` pixels per step
(Mahendran & Vedaldi 2016). Each sample of a map starts from its own noise.

Example:
    >>> opt = OptimizationInverter(cnn, "stages.3", num_optimizer_steps=200)
    >>> images = opt.invert(features, num_samples=2, seed=0)      # Tensor[B, 2, 3, 32, 32] in [0, 1]
    >>> images, losses = opt.fit(features[:4], seed=0)            # one sample, with the loss of every step
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import check_seed, checked_float, checked_int
from ..errors import ArgumentValueError
from .base import InverterBase, register_inverter
from .interface import check_features, describe, register_to_config


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """``TV_β`` per image: the mean over pixels of ``(dx² + dy²)^(β/2)``. ``[B, 3, H, W] -> [B]``."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).pow(beta / 2).flatten(1).mean(1)


@register_inverter("optimization")
class OptimizationInverter(InverterBase):
    """Inverts a classifier layer by optimising pixels (no training; each call is an optimisation).

    Args:
        classifier: the classifier, in eval mode (its parameters are never changed or given gradients).
        layer: the layer name, as in ``layer_table`` (``"stages.3"``).
        num_optimizer_steps: Adam steps per image (optimiser iterations, not denoising steps).
        tv_weight: weight of the total-variation prior.
        lr: Adam learning rate on the sigmoid logits (cosine decay to 10%).
        norm_weight: weight of the α-norm prior.
        jitter: random shift of up to this many pixels at each step (0 disables).
        alpha: exponent of the norm prior.
        beta: exponent of the total-variation prior.

    Attributes:
        classifier_name, layer, feature_shape ``(C, h, w)``, pooling (``"none"``), image_size: the shared
        inverter attributes (:class:`~workbench.inverters.interface.Inverter`).

    The constructor arguments are the config (:attr:`config`, with the classifier recorded by name), saved as
    JSON by :meth:`save_pretrained`; there are no weights. It is an :class:`~workbench.inverters.base.InverterBase`;
    ``invert`` ignores a ``sampler`` (its steps are ``num_optimizer_steps``).

    Example:
        >>> opt = OptimizationInverter(cnn, "stages.3", num_optimizer_steps=100, tv_weight=0.5)
        >>> opt.invert(wb.extract_features(cnn, x, "stages.3")).shape   # [B, 1, 3, 32, 32]
    """

    #: config keys that are not constructor arguments: recorded for loading to check
    derived_config = ("classifier_name", "feature_shape", "image_size")
    invert_options = ("num_optimizer_steps",)

    @register_to_config
    def __init__(self, classifier: nn.Module, layer: str, num_optimizer_steps: int = 200, tv_weight: float = 10.0,
                 *, lr: float = 0.1, norm_weight: float = 0.1, jitter: int = 0, alpha: float = 6.0, beta: float = 2.0):
        super().__init__()
        from ..hooks import extract_features

        checked_int(num_optimizer_steps, "num_optimizer_steps")
        checked_int(jitter, "jitter")
        for name, value in (("lr", lr), ("tv_weight", tv_weight), ("norm_weight", norm_weight), ("alpha", alpha),
                            ("beta", beta)):
            checked_float(value, name)
        if num_optimizer_steps < 1 or lr <= 0 or tv_weight < 0 or norm_weight < 0 or jitter < 0:
            raise ArgumentValueError(
                f"got num_optimizer_steps={num_optimizer_steps}, lr={lr}, tv_weight={tv_weight}, "
                f"norm_weight={norm_weight}, jitter={jitter}; pass num_optimizer_steps >= 1, lr > 0 and "
                f"tv_weight, norm_weight, jitter >= 0")
        self.classifier = classifier
        self.classifier_name = getattr(classifier, "name", type(classifier).__name__)
        self.layer = layer
        self.num_optimizer_steps, self.tv_weight, self.lr = int(num_optimizer_steps), float(tv_weight), float(lr)
        self.norm_weight, self.jitter, self.alpha, self.beta = float(norm_weight), int(jitter), float(alpha), float(beta)
        size = tuple(getattr(classifier, "input_size", (3, 224, 224)))
        self.image_size = int(size[-1])
        dev = next(classifier.parameters()).device
        self.feature_shape = tuple(int(s) for s in extract_features(classifier, torch.zeros(1, *size, device=dev),
                                                                    layer).shape[1:])

    def __repr__(self) -> str:
        return describe(self, optimiser=f"Adam, {self.num_optimizer_steps} steps at lr {self.lr}",
                        priors=f"tv_weight {self.tv_weight}, norm_weight {self.norm_weight}")


    def loss(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The objective per image: ``images [B, 3, H, W]`` in [0, 1], ``target [B, C, h, w]`` -> ``Tensor[B]``."""
        from ..hooks import run_with_cache

        _, cache = run_with_cache(self.classifier, images, [self.layer], detach=False)
        diff = (cache[self.layer] - target).flatten(1).pow(2).sum(1) / target.flatten(1).pow(2).sum(1).clamp_min(1e-8)
        prior = (self.tv_weight * total_variation(images, self.beta)
                 + self.norm_weight * (2 * images - 1).abs().pow(self.alpha).flatten(1).mean(1))
        return diff + prior

    def _optimise(self, target: torch.Tensor, generator: torch.Generator, n_steps: int,
                  losses: list[float] | None, bar) -> torch.Tensor:
        """Optimise one batch of images ``[b, 3, H, W]`` against ``target [b, C, h, w]``."""
        dev = target.device
        b = target.shape[0]
        p = (torch.randn((b, 3, self.image_size, self.image_size), generator=generator) * 0.1).to(dev)  # near grey
        p.requires_grad_(True)
        opt = torch.optim.Adam([p], lr=self.lr)
        with torch.enable_grad():  # also under a caller's no_grad
            for i in range(n_steps):
                for group in opt.param_groups:
                    group["lr"] = self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max(1, n_steps))))
                x = torch.sigmoid(p)
                if self.jitter > 0:
                    dy, dx = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=generator).tolist()
                    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                loss = self.loss(x, target)
                (p.grad,) = torch.autograd.grad(loss.sum(), [p])  # no gradient reaches the classifier
                opt.step()
                if losses is not None:
                    losses.append(loss.mean().item())
                if bar is not None:
                    bar.update(1)
        return torch.sigmoid(p.detach())

    def fit(self, features: torch.Tensor, *, seed: int = 0, num_optimizer_steps: int | None = None,
            progress: bool = False) -> tuple[torch.Tensor, list[float]]:
        """One image per map, with the mean objective at every step (to check that it goes down).

        Args:
            features: ``Tensor[B, C, h, w]``.
            seed: seeds the initial noise and the jitter.
            num_optimizer_steps: overrides ``self.num_optimizer_steps``.
            progress: show a progress bar.

        Returns:
            ``(images, losses)``: ``Tensor[B, 3, H, W]`` in [0, 1] on the CPU, and one float per step.

        Example:
            >>> _, losses = opt.fit(f, num_optimizer_steps=10); losses[-1] < losses[0]     # True
        """
        from tqdm.auto import tqdm

        check_features(self, features)
        check_seed(seed)
        n = (self.num_optimizer_steps if num_optimizer_steps is None
             else checked_int(num_optimizer_steps, "num_optimizer_steps", minimum=1))
        losses: list[float] = []
        dev = next(self.classifier.parameters()).device
        with tqdm(total=n, desc="optimisation", disable=not progress) as bar:
            images = self._optimise(features.detach().float().to(dev), torch.Generator().manual_seed(seed), n,
                                    losses, bar)
        return images.cpu(), losses

    def _sample(self, features: torch.Tensor, *, num_samples: int, generator: torch.Generator, progress: bool,
                batch_size: int, sampler, classifier: nn.Module | None,
                num_optimizer_steps: int | None = None) -> torch.Tensor:
        """Optimise ``S`` images per checked map ``[B, C, h, w]``, each from its own noise drawn from
        ``generator`` (the same seed gives the same images for the same ``batch_size``), in chunks of
        ``batch_size`` -> ``[B, S, 3, H, W]`` in [0, 1] on the CPU. ``num_optimizer_steps`` overrides
        ``self.num_optimizer_steps``; ``sampler`` and ``classifier`` are unused (it optimises against
        ``self.classifier``)."""
        from tqdm.auto import tqdm

        n = self.num_optimizer_steps
        if num_optimizer_steps is not None:
            n = checked_int(num_optimizer_steps, "num_optimizer_steps", minimum=1)
        B, S = features.shape[0], num_samples
        dev = next(self.classifier.parameters()).device
        feats = features.detach().float().repeat_interleave(S, 0)
        out = torch.empty(B * S, 3, self.image_size, self.image_size)
        chunks = range(0, B * S, batch_size)
        with tqdm(total=len(chunks) * n, desc="optimisation", disable=not progress) as bar:
            for s in chunks:
                out[s:s + batch_size] = self._optimise(feats[s:s + batch_size].to(dev), generator, n, None, bar).cpu()
        return out.view(B, S, 3, self.image_size, self.image_size)

    def _default_classifier(self) -> nn.Module:
        """:meth:`invert_images` captures with ``self.classifier`` when no classifier is given."""
        return self.classifier

    # ------------------------------------------------------------------ persistence
    @classmethod
    def _load_objects(cls, config: dict[str, Any], path: Path, *, device: str | torch.device,
                      classifier: nn.Module | None = None, **_: Any) -> dict[str, Any]:
        """The classifier: ``classifier``, or the shipped or timm model of the recorded name on ``device``;
        refused when its name is not the recorded one."""
        from ..errors import InverterMismatchError
        from ..models import load_classifier

        if classifier is None:
            classifier = load_classifier(config["classifier_name"], device=device)
        name = getattr(classifier, "name", type(classifier).__name__)
        if name != config["classifier_name"]:
            raise InverterMismatchError(f"{Path(path) / 'config.json'} was written for {config['classifier_name']!r}, "
                                        f"but the given classifier is {name!r}; pass that one, or leave "
                                        "classifier=None to load it by name")
        return {"classifier": classifier}
