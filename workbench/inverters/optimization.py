"""The optimisation baseline: an image optimised from noise until its features match (Mahendran & Vedaldi 2015).

Following Mahendran and Vedaldi, "Understanding deep image representations by inverting them" (CVPR 2015):
find ``x`` minimising

    ||Φ(x) - Φ0||² / ||Φ0||²  +  tv_weight · TV_β(x)  +  norm_weight · mean(|2x - 1|^α)

where ``Φ`` is the classifier's map at ``layer``, ``TV_β`` the mean of ``(dx² + dy²)^(β/2)`` over pixels
(β = 2) and the α-norm (α = 6) keeps pixels inside their range. The image is parameterised as
``x = sigmoid(p)`` so it always lies in [0, 1], ``p`` starts from seeded Gaussian noise, and Adam runs for
``steps`` steps with a cosine learning-rate decay and a random jitter of up to ``jitter`` pixels per step
(Mahendran & Vedaldi 2016). Each sample of a map starts from its own noise.

Example:
    >>> opt = OptimizationInverter(cnn, "stages.3", steps=200)
    >>> images = opt.invert(features, num_samples=2, seed=0)      # Tensor[B, 2, 3, 32, 32] in [0, 1]
    >>> images, losses = opt.fit(features[:4], seed=0)            # one sample, with the loss of every step
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import InverterMismatchError


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """``TV_β`` per image: the mean over pixels of ``(dx² + dy²)^(β/2)``. ``[B, 3, H, W] -> [B]``."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).pow(beta / 2).flatten(1).mean(1)


class OptimizationInverter(nn.Module):
    """Inverts a classifier layer by optimising pixels (no training; each call is an optimisation).

    Args:
        classifier: the classifier, in eval mode (its parameters are never changed or given gradients).
        layer: the layer name, as in ``layer_table`` (``"stages.3"``).
        steps: Adam steps per image.
        tv_weight: weight of the total-variation prior.
        lr: Adam learning rate on the sigmoid logits (cosine decay to 10%).
        norm_weight: weight of the α-norm prior.
        jitter: random shift of up to this many pixels at each step (0 disables).
        alpha: exponent of the norm prior.
        beta: exponent of the total-variation prior.

    Attributes:
        classifier_name, layer, feature_shape ``(C, h, w)``, pooling (``"none"``), image_size: the shared
        inverter attributes.

    Example:
        >>> opt = OptimizationInverter(cnn, "stages.3", steps=100, tv_weight=0.5)
        >>> opt.invert(wb.metrics.extract_features(cnn, x, "stages.3")).shape   # [B, 1, 3, 32, 32]
    """

    kind = "optimization"
    pooling = "none"

    def __init__(self, classifier: nn.Module, layer: str, steps: int = 200, tv_weight: float = 10.0, *,
                 lr: float = 0.1, norm_weight: float = 0.1, jitter: int = 0, alpha: float = 6.0, beta: float = 2.0):
        super().__init__()
        from ..hooks import extract_features

        if steps < 1 or lr <= 0 or tv_weight < 0 or norm_weight < 0 or jitter < 0:
            raise ValueError(f"steps >= 1, lr > 0 and tv_weight, norm_weight, jitter >= 0 are needed; got steps={steps}, "
                             f"lr={lr}, tv_weight={tv_weight}, norm_weight={norm_weight}, jitter={jitter}")
        self.classifier = classifier
        self.classifier_name = getattr(classifier, "name", type(classifier).__name__)
        self.layer = layer
        self.steps, self.tv_weight, self.lr = int(steps), float(tv_weight), float(lr)
        self.norm_weight, self.jitter, self.alpha, self.beta = float(norm_weight), int(jitter), float(alpha), float(beta)
        size = tuple(getattr(classifier, "input_size", (3, 224, 224)))
        self.image_size = int(size[-1])
        dev = next(classifier.parameters()).device
        self.feature_shape = tuple(int(s) for s in extract_features(classifier, torch.zeros(1, *size, device=dev),
                                                                    layer).shape[1:])

    @property
    def config(self) -> dict:
        return {"class": "OptimizationInverter", "classifier_name": self.classifier_name, "layer": self.layer,
                "steps": self.steps, "tv_weight": self.tv_weight, "lr": self.lr, "norm_weight": self.norm_weight,
                "jitter": self.jitter, "alpha": self.alpha, "beta": self.beta}

    def extra_repr(self) -> str:
        return (f"classifier={self.classifier_name!r}, layer={self.layer!r}, feature_shape={self.feature_shape}, "
                f"steps={self.steps}, tv_weight={self.tv_weight}")

    def check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 4 or tuple(features.shape[1:]) != self.feature_shape:
            raise InverterMismatchError(
                f"{self.classifier_name!r} at {self.layer!r} gives maps of shape {self.feature_shape}, but got "
                f"features of shape {tuple(features.shape)}; capture them with "
                f"wb.run_with_cache(classifier, images, {self.layer!r}) from the same classifier")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or Inf; there is nothing finite to match")

    def loss(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The objective per image: ``images [B, 3, H, W]`` in [0, 1], ``target [B, C, h, w]`` -> ``Tensor[B]``."""
        from ..hooks import run_with_cache

        _, cache = run_with_cache(self.classifier, images, [self.layer], detach=False)
        diff = (cache[self.layer] - target).flatten(1).pow(2).sum(1) / target.flatten(1).pow(2).sum(1).clamp_min(1e-8)
        prior = (self.tv_weight * total_variation(images, self.beta)
                 + self.norm_weight * (2 * images - 1).abs().pow(self.alpha).flatten(1).mean(1))
        return diff + prior

    def _optimise(self, target: torch.Tensor, generator: torch.Generator, steps: int,
                  losses: list[float] | None, bar) -> torch.Tensor:
        """Optimise one batch of images ``[b, 3, H, W]`` against ``target [b, C, h, w]``."""
        dev = target.device
        b = target.shape[0]
        p = (torch.randn((b, 3, self.image_size, self.image_size), generator=generator) * 0.1).to(dev)  # near grey
        p.requires_grad_(True)
        opt = torch.optim.Adam([p], lr=self.lr)
        with torch.enable_grad():  # also under a caller's no_grad
            for i in range(steps):
                for group in opt.param_groups:
                    group["lr"] = self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max(1, steps))))
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

    def fit(self, features: torch.Tensor, *, seed: int = 0, steps: int | None = None,
            progress: bool = False) -> tuple[torch.Tensor, list[float]]:
        """One image per map, with the mean objective at every step (to check that it goes down).

        Args:
            features: ``Tensor[B, C, h, w]``.
            seed: seeds the initial noise and the jitter.
            steps: overrides ``self.steps``.
            progress: show a progress bar.

        Returns:
            ``(images, losses)``: ``Tensor[B, 3, H, W]`` in [0, 1] on the CPU, and ``steps`` floats.

        Example:
            >>> _, losses = opt.fit(f, steps=10); losses[-1] < losses[0]     # True
        """
        from tqdm.auto import tqdm

        self.check_features(features)
        steps = self.steps if steps is None else int(steps)
        losses: list[float] = []
        dev = next(self.classifier.parameters()).device
        with tqdm(total=steps, desc="optimisation", disable=not progress) as bar:
            images = self._optimise(features.detach().float().to(dev), torch.Generator().manual_seed(seed), steps,
                                    losses, bar)
        return images.cpu(), losses

    def invert(self, features: torch.Tensor, *, num_samples: int = 1, seed: int = 0, steps: int | None = None,
               progress: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Optimise ``S`` images per map, each from its own noise.

        Args:
            features: ``Tensor[B, C, h, w]`` maps from ``self.classifier`` at ``self.layer``.
            num_samples: ``S`` images per map.
            seed: the same seed gives the same images for the same ``batch_size``.
            steps: overrides ``self.steps``.
            progress: show a progress bar.
            batch_size: images optimised at once.

        Returns:
            ``Tensor[B, S, 3, H, W]`` in [0, 1], on the CPU.
        """
        from tqdm.auto import tqdm

        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1 (got {num_samples}, {batch_size})")
        self.check_features(features)
        steps = self.steps if steps is None else int(steps)
        B, S = features.shape[0], num_samples
        dev = next(self.classifier.parameters()).device
        feats = features.detach().float().repeat_interleave(S, 0)
        out = torch.empty(B * S, 3, self.image_size, self.image_size)
        g = torch.Generator().manual_seed(seed)
        chunks = range(0, B * S, batch_size)
        with tqdm(total=len(chunks) * steps, desc="optimisation", disable=not progress) as bar:
            for s in chunks:
                out[s:s + batch_size] = self._optimise(feats[s:s + batch_size].to(dev), g, steps, None, bar).cpu()
        return out.view(B, S, 3, self.image_size, self.image_size)

    def invert_images(self, images: torch.Tensor, classifier: nn.Module | None = None, **kwargs) -> torch.Tensor:
        """Capture ``self.layer`` of ``images [B, 3, H, W]`` (with ``self.classifier`` unless given), then
        :meth:`invert` -> ``[B, S, 3, H, W]``."""
        from ..hooks import extract_features

        return self.invert(extract_features(classifier or self.classifier, images, self.layer), **kwargs)
