"""Robustness: what does an inverter show when its input is corrupted, adversarial or out of distribution?

Each study is a list of :class:`Condition` objects (a name and the images the classifier sees) that
:func:`robustness_study` runs through :func:`workbench.evaluation.evaluate_reconstructions`: the inverter sees the
features of the *condition's* images, and every metric compares the reconstruction with those images.

* :func:`corruptions`: Gaussian noise, Gaussian blur, motion blur, contrast, brightness, JPEG and pixelation
  at 3 severities, all from kornia (ImageNet-C style, sized for 32 px images).
* :func:`adversarial`: untargeted and targeted L∞ PGD (foolbox's ``LinfPGD``). The study records whether the
  reconstruction shows the *adversarial* class (``shows_adversarial``: the classifier's prediction on the
  reconstruction equals its prediction on the adversarial input) or the clean one (``shows_clean``). Those are the
  attacked classifier's own readings; ``judge_shows_adversarial`` and ``judge_shows_clean`` are the independent
  judges' (:mod:`workbench.judges`), which took no part in the attack or the inversion. Every condition's table
  also carries the judges' and factor reader's columns of :func:`~workbench.evaluation.evaluate_reconstructions`.
* :func:`out_of_distribution`: natural photographs from ``skimage.data`` resized to 32 px, and tiny-world
  images with held-out (shape, background) pairs (``TinyWorld(..., ood=True)``).

Example:
    >>> x = wb.TinyWorld("test", size=64).images()[:8]
    >>> conds = corruptions(x) + adversarial(cnn, x) + out_of_distribution(8)
    >>> result = robustness_study(inv, cnn, conds, num_inference_steps=8)
    >>> result.summary                    # one row per condition
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .checks import check_images, check_seed, seeded_generator
from .errors import ArgumentValueError
from .inverters.interface import Inverter
from .inverters.sampler import Sampler

#: name -> the three severities' parameter (mild, medium, strong) for 32 px images.
CORRUPTIONS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.08, 0.16),        # noise standard deviation
    "gaussian_blur": (0.6, 1.0, 1.5),            # sigma in pixels (kernel 7)
    "motion_blur": (3, 5, 7),                    # horizontal kernel length in pixels
    "contrast": (0.6, 0.4, 0.2),                 # factor around the image mean
    "brightness": (0.15, 0.3, 0.45),             # added to every pixel
    "jpeg": (40, 20, 8),                         # JPEG quality
    "pixelate": (0.75, 0.5, 0.35),               # downsampling factor
}

#: The ``skimage.data`` photographs used as out-of-distribution inputs (all ship with scikit-image).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "immunohistochemistry",
          "hubble_deep_field", "brick", "grass", "gravel")


@dataclass
class Condition:
    """One input condition of a robustness study.

    Attributes:
        family: ``"clean"``, ``"corruption"``, ``"adversarial"`` or ``"ood"``.
        name: e.g. ``"gaussian_noise"``, ``"pgd-targeted"``, ``"photos"``.
        severity: 1-3 for corruptions, else 0.
        images: ``Tensor[N, 3, H, W]`` in [0, 1], what the classifier sees.
        info: extra per-image columns for the study table (e.g. ``{"target": Tensor[N]}``).
    """

    family: str
    name: str
    severity: int
    images: torch.Tensor
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.severity}" if self.severity else self.name

    def __repr__(self) -> str:
        return f"Condition({self.key!r}, family={self.family!r}, images=Tensor{list(self.images.shape)})"


# ------------------------------------------------------------------------------------------- corruptions
def corrupt(images: torch.Tensor, kind: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """Apply one corruption (kornia) at severity 1, 2 or 3: ``[N, 3, H, W] -> [N, 3, H, W]`` in [0, 1].

    Args:
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        kind: a key of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 3 (strong).
        seed: seeds the noise (the global RNG is left as it was).

    Example:
        >>> corrupt(x, "jpeg", 3).shape == x.shape        # True
    """
    import kornia

    if kind not in CORRUPTIONS:
        raise ArgumentValueError(f"unknown corruption {kind!r}; choose from {sorted(CORRUPTIONS)}")
    if severity not in (1, 2, 3):
        raise ArgumentValueError(f"severity is 1, 2 or 3, got {severity!r}")
    p = CORRUPTIONS[kind][severity - 1]
    x = check_images(images, "images").float()
    if kind == "gaussian_noise":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(check_seed(seed))
            out = kornia.augmentation.RandomGaussianNoise(mean=0.0, std=p, p=1.0)(x)
    elif kind == "gaussian_blur":
        out = kornia.filters.gaussian_blur2d(x, (7, 7), (p, p))
    elif kind == "motion_blur":
        out = kornia.filters.motion_blur(x, int(p), angle=0.0, direction=0.0)  # horizontal
    elif kind == "contrast":
        out = kornia.enhance.adjust_contrast_with_mean_subtraction(x, p)
    elif kind == "brightness":
        out = kornia.enhance.adjust_brightness(x, p)
    elif kind == "jpeg":
        out = kornia.enhance.jpeg_codec_differentiable(x, torch.tensor([float(p)], device=x.device))
    else:  # pixelate
        small = kornia.geometry.transform.rescale(x, p, interpolation="area", antialias=False)
        out = kornia.geometry.transform.resize(small, tuple(x.shape[-2:]), interpolation="nearest")
    return out.clamp(0, 1)


def corruptions(images: torch.Tensor, kinds: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3), *,
                seed: int = 0) -> list[Condition]:
    """A :class:`Condition` per corruption and severity.

    Example:
        >>> [c.key for c in corruptions(x, ["jpeg"])]          # ['jpeg-1', 'jpeg-2', 'jpeg-3']
    """
    kinds = list(CORRUPTIONS) if kinds is None else list(kinds)
    return [Condition("corruption", k, s, corrupt(images, k, s, seed=seed)) for k in kinds for s in severities]


# ------------------------------------------------------------------------------------------- adversarial
def pgd(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 8 / 255,
        steps: int = 20, targets: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """L∞ projected gradient descent (foolbox ``LinfPGD``, random start, step ``eps / 4``).

    Args:
        classifier: in eval mode; takes ``[N, 3, H, W]`` in [0, 1].
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        labels: ``Tensor[N]`` classes to move away from (untargeted).
        eps: the L∞ budget.
        steps: PGD steps.
        targets: ``Tensor[N]`` classes to reach (targeted; ``labels`` is then unused).
        seed: seeds the random start (the global RNG is left as it was).

    Returns:
        ``(adversarial [N, 3, H, W], success [N] bool)``.

    Example:
        >>> adv, ok = pgd(cnn, x, cnn(x).argmax(1), eps=8 / 255)
    """
    import foolbox as fb

    check_images(images, "images")
    dev = next(classifier.parameters()).device
    fmodel = fb.PyTorchModel(classifier, bounds=(0, 1), device=dev)
    attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=eps / 4, random_start=True)
    criterion = (fb.criteria.Misclassification(labels.to(dev)) if targets is None
                 else fb.criteria.TargetedMisclassification(targets.to(dev)))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(check_seed(seed))
        _, adv, success = attack(fmodel, images.float().to(dev), criterion, epsilons=eps)
    return adv.detach().cpu(), success.cpu()


@torch.no_grad()
def _predict(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from .metrics import predictions

    return predictions(classifier, x)


def adversarial(classifier: nn.Module, images: torch.Tensor, *, eps: float = 8 / 255, steps: int = 20,
                seed: int = 0) -> list[Condition]:
    """Untargeted and targeted PGD conditions (each image's target: a seeded random class other than its
    clean prediction). Each condition's ``info`` holds ``clean_pred``, ``attack_success`` and (targeted) ``target``.

    Example:
        >>> [c.key for c in adversarial(cnn, x)]           # ['pgd-untargeted', 'pgd-targeted']
    """
    clean = _predict(classifier, images)
    k = classifier.num_classes
    g = seeded_generator(seed)
    targets = (clean + torch.randint(1, k, clean.shape, generator=g)) % k
    adv_u, ok_u = pgd(classifier, images, clean, eps=eps, steps=steps, seed=seed)
    adv_t, ok_t = pgd(classifier, images, clean, eps=eps, steps=steps, targets=targets, seed=seed)
    return [Condition("adversarial", "pgd-untargeted", 0, adv_u, {"clean_pred": clean, "attack_success": ok_u}),
            Condition("adversarial", "pgd-targeted", 0, adv_t,
                      {"clean_pred": clean, "attack_success": ok_t, "target": targets})]


# ------------------------------------------------------------------------------------------- out of distribution
def photos(size: int = 32, names: Sequence[str] = PHOTOS) -> torch.Tensor:
    """Natural photographs from ``skimage.data``, centre-cropped square and resized (antialiased) to ``size``.

    Returns:
        ``Tensor[len(names), 3, size, size]`` in [0, 1] (grey images repeated over RGB).

    Example:
        >>> photos().shape                                  # torch.Size([13, 3, 32, 32])
    """
    import skimage.data

    out = []
    for name in names:
        a = torch.as_tensor(getattr(skimage.data, name)()).float()
        a = a / 255 if a.max() > 1 else a
        a = a[..., None].expand(-1, -1, 3) if a.ndim == 2 else a[..., :3]
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].permute(2, 0, 1)[None]
        out.append(torch.nn.functional.interpolate(a, size=(size, size), mode="bilinear", antialias=True,
                                                   align_corners=False).clamp(0, 1))
    return torch.cat(out)


def out_of_distribution(n: int, *, seed: int = 0, size: int = 32) -> list[Condition]:
    """The OOD conditions: up to ``n`` photographs (:func:`photos`) and ``n`` held-out tiny-world combinations.

    Example:
        >>> [c.key for c in out_of_distribution(4)]         # ['photos', 'tinyworld-heldout']
    """
    from .tinyworld import TinyWorld

    pics = photos(size)[:n]
    held = TinyWorld("test", size=n, seed=seed, ood=True)
    return [Condition("ood", "photos", 0, pics),
            Condition("ood", "tinyworld-heldout", 0, held.images(), {"label": held.labels()})]


# ------------------------------------------------------------------------------------------- the study
@dataclass
class RobustnessResult:
    """What :func:`robustness_study` returns.

    Attributes:
        summary: one row per condition (``family``, ``name``, ``severity`` and the evaluation summary columns,
            plus ``shows_adversarial`` / ``shows_clean`` / ``attack_success`` rates for adversarial conditions).
        tables: condition key -> its per-image :class:`~workbench.evaluation.EvalTable`.
        inputs: condition key -> ``Tensor[N, 3, H, W]`` the classifier saw.
        reconstructions: condition key -> ``Tensor[N, S, 3, H, W]``.
        sampler: the :class:`~workbench.inverters.sampler.Sampler` the inverter drew with (None for a kind that does
            not sample).
    """

    summary: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    inputs: dict[str, torch.Tensor]
    reconstructions: dict[str, torch.Tensor]
    sampler: Sampler | None = None


def _adversarial_columns(table: pd.DataFrame, rec: torch.Tensor) -> None:
    """Which class an adversarial condition's reconstruction shows. Read by the attacked classifier itself:
    ``shows_adversarial`` (its prediction on the reconstruction is its prediction on the adversarial input) and
    ``shows_clean``; read by the independent judges' consensus (:func:`~workbench.judges.judge_readings`, tiny-world
    images only), which never saw the attack: ``judge_shows_adversarial`` (they read the reconstruction as the class
    the attacked classifier was fooled into) and ``judge_shows_clean``."""
    from .judges import judge_readings

    fin = table["finite"].astype(bool)
    table["shows_adversarial"] = (table["pred_reconstruction"] == table["pred_original"]).astype(float).where(fin)
    table["shows_clean"] = (table["pred_reconstruction"] == table["clean_pred"]).astype(float).where(fin)
    flat = rec.reshape(-1, *rec.shape[2:]).float()
    graded = judge_readings(torch.nan_to_num(flat), reader=None)
    if "judge_predicted" in graded:
        judged = pd.Series(graded["judge_predicted"].numpy(), index=table.index)
        table["judge_shows_adversarial"] = (judged == table["pred_original"]).astype(float).where(fin)
        table["judge_shows_clean"] = (judged == table["clean_pred"]).astype(float).where(fin)


def robustness_study(inverter: Inverter, classifier: nn.Module, conditions: Sequence[Condition], *,
                     clean: torch.Tensor | None = None, num_samples: int = 1, seed: int = 0,
                     reference: nn.Module | str | None = None, progress: bool = True, sampler: Sampler | None = None,
                     **invert_kwargs: Any) -> RobustnessResult:
    """Invert every condition's images and measure the reconstructions against those images.

    Args:
        inverter: any inverter with the shared call.
        classifier: the inverted classifier.
        conditions: from :func:`corruptions`, :func:`adversarial`, :func:`out_of_distribution`.
        clean: ``Tensor[N, 3, H, W]`` the clean images, added as a first ``"clean"`` condition.
        num_samples: reconstructions per image.
        seed: seeds the inverter.
        reference: the independent classifier (see :func:`workbench.evaluation.evaluate`).
        progress: a progress bar over conditions.
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``), recorded in
            the result.
        **invert_kwargs: passed to ``inverter.invert`` (the optimisation baseline's ``num_optimizer_steps=``;
            FeatInv's loose sampler settings, ``num_inference_steps=``, build the sampler).

    Returns:
        :class:`RobustnessResult`.

    Example:
        >>> res = robustness_study(inv, cnn, corruptions(x, ["jpeg"]), clean=x, num_inference_steps=8)
        >>> res.summary[["name", "severity", "feature_cosine", "top1"]]
    """
    from tqdm.auto import tqdm

    from .evaluation import evaluate_reconstructions, inverter_label, reference_classifier
    from .hooks import extract_features
    from .inverters.sampler import study_sampler

    conditions = list(conditions)
    if clean is not None:
        conditions.insert(0, Condition("clean", "clean", 0, clean))
    if not conditions:
        raise ArgumentValueError("no conditions to study; build them with corruptions(), adversarial() or "
                                 "out_of_distribution()")
    reference = reference_classifier(classifier, reference)
    sampler, invert_kwargs = study_sampler(inverter, sampler, invert_kwargs)
    rows, tables, inputs, recons = [], {}, {}, {}
    for cond in tqdm(conditions, desc="conditions", disable=not progress):
        feats = extract_features(classifier, cond.images, inverter.layer)
        rec = inverter.invert(feats, num_samples=num_samples, seed=seed, progress=False, sampler=sampler,
                              **invert_kwargs)
        table = evaluate_reconstructions(classifier, inverter.layer, cond.images, rec, reference=reference,
                                         labels=cond.info.get("label"))
        S = rec.shape[1]
        for key, value in cond.info.items():
            if key != "label":
                table[key] = value.repeat_interleave(S).numpy()
        if "clean_pred" in table:
            _adversarial_columns(table, rec)
        table.attrs["inverter"] = inverter_label(inverter)
        row = {"family": cond.family, "name": cond.name, "severity": cond.severity, **table.summary().to_dict()}
        for extra in ("shows_adversarial", "shows_clean", "judge_shows_adversarial", "judge_shows_clean",
                      "attack_success"):
            if extra in table:
                row[extra] = float(table[extra].astype(float).mean())
        rows.append(row)
        tables[cond.key], inputs[cond.key], recons[cond.key] = table, cond.images, rec
    summary = pd.DataFrame(rows, index=[c.key for c in conditions])
    return RobustnessResult(summary, tables, inputs, recons, sampler)
