"""Distil a shipped FeatInv into a one-step inverter (``workbench distill``).

    workbench distill --teacher tinyworld-cnn/stages.3 --pairs 8192 --steps 3000 --out runs/distill-cnn --resume --ship data

The method is knowledge distillation of the teacher's deterministic sampler (Luhman & Luhman 2021): 1. the teacher
(its default sampler: DDIM, classifier-free guidance and feature guidance) turns ``--pairs`` pairs of (tiny-world
training map, starting noise) into clean latents, written in shards to ``OUT/pairs/`` (a resumed run keeps the
shards it has); 2. the student, a copy of the teacher's ControlNet on the same frozen base
(:class:`~workbench.inverters.distilled.DistilledFeatInv`), learns to reach the same latents from the same noise and
map in one evaluation, with ``MSE(latents) + pixel_weight * MSE(decoded images)``. The final student goes to
``OUT/inverter/`` with its card (and with ``--ship DATA`` to ``DATA/inverters/<classifier>/<layer>-distilled/``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ArgumentValueError
from .common import (RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, check_resume, command_line,
                     loop_generator, optimiser_step, parse_config, process_of, resume_run, save_if_due, start_run,
                     tinyworld_images)

WARMUP_STEPS = 100
PAIRS_FOLDER = "pairs"
#: the method, as the card names it
METHOD = ("knowledge distillation of the teacher's default sampler into one evaluation (Luhman & Luhman 2021): the "
          "student regresses the teacher's clean latents from the same starting noise and map")


@dataclass(kw_only=True)
class DistillConfig(RunConfig):
    """What ``workbench distill`` takes: one field per flag (``--pixel-weight`` is ``pixel_weight``)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-5

    teacher: str  # the shipped inverter name (tinyworld-cnn/stages.3) or an inverter folder
    pairs: int = 8192  # (map, noise) pairs the teacher samples once, before training
    pair_batch: int = 256  # pairs per shard of OUT/pairs/ (the teacher samples one shard at a time)
    timesteps: str = ""  # the student's timesteps, comma-separated, highest first ('801' or '801,401'); empty: the
    # teacher's first default DDIM timestep (one evaluation)
    pixel_weight: float = 1.0  # weight of the decoded-image MSE beside the latent MSE
    consistency_weight: float = 0.0  # weight of the feature-consistency loss (training/consistency.py: 1 - cosine
    # between the classifier's map of the decoded estimate and the given map); > 0 trains a steerable student
    edit_fraction: float = 0.0  # share of each batch whose maps are class-steered (no teacher target: these rows
    # get the feature-consistency loss only); needs --consistency-weight > 0
    edit_alpha: str = "1,4"  # the range of the steering alpha of edited rows, in units of the concept's scale
    init_from: str | None = None  # start the student from this distilled inverter (name or folder), not the teacher
    variant: str = "distilled"  # the shipped folder's suffix: DATA/inverters/<classifier>/<layer>-<variant>
    eval_images: int = 256  # held-out test images for the card's metrics (0: none)

    run_keys = ("teacher", "pairs", "timesteps", "consistency_weight", "edit_fraction")
    fractions = ("edit_fraction",)
    positive = RunConfig.positive + ("pairs", "pair_batch")
    non_negative = ("eval_images",)

    def check(self) -> None:
        super().check()
        for flag in ("pixel_weight", "consistency_weight"):
            value = getattr(self, flag)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ArgumentValueError(f"--{flag.replace('_', '-')} {value!r}: must be >= 0")
        if self.edit_fraction > 0 and self.consistency_weight == 0:
            raise ArgumentValueError(f"--edit-fraction {self.edit_fraction}: edited rows have no teacher target and "
                                     "learn from the feature-consistency loss only; add --consistency-weight > 0")
        try:
            low, high = (float(a) for a in self.edit_alpha.split(","))
        except ValueError:
            raise ArgumentValueError(f"--edit-alpha {self.edit_alpha!r}: give 'low,high', e.g. 1,4") from None
        if not low <= high:
            raise ArgumentValueError(f"--edit-alpha {self.edit_alpha!r}: low must not exceed high")
        try:
            self.student_timesteps()
        except ValueError as e:
            raise ArgumentValueError(f"--timesteps {self.timesteps!r}: {e}; e.g. --timesteps 801 or 801,401") from e

    def student_timesteps(self) -> tuple[int, ...] | None:
        """``--timesteps`` as ints (None: the teacher's first default timestep)."""
        return tuple(int(t) for t in self.timesteps.split(",")) if self.timesteps.strip() else None


def parse_args(argv=None) -> DistillConfig:
    return parse_config(DistillConfig, argv, prog="workbench distill", description=__doc__)


def teacher_pairs(config: DistillConfig, teacher, clf, *, progress: bool) -> tuple[torch.Tensor, ...]:
    """``(maps [N, C, h, w], noise [N, *latent], latents [N, *latent], labels [N])``: the teacher's clean latents from each
    training map and its noise, sampled shard by shard into ``OUT/pairs/shard_XXXXX.safetensors`` (existing shards
    are read, not resampled: a resumed run continues). Maps of ``TinyWorld("train")`` images of seed
    ``config.seed``; the noise of shard ``k`` from a generator seeded ``config.seed * 100_003 + k``."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from ..hooks import extract_features

    folder = Path(config.out) / PAIRS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = tinyworld_images(config.pairs, split="train", seed=config.seed, device="cpu", progress=False)
    device = teacher.device
    shards = []
    for k in tqdm(range(0, config.pairs, config.pair_batch), desc=f"teacher pairs ({config.teacher})",
                  disable=not progress):
        path = folder / f"shard_{k // config.pair_batch:05d}.safetensors"
        if not path.is_file():
            x = images[k:k + config.pair_batch].to(device).float() / 255
            maps = extract_features(clf, x, teacher.layer).float().cpu()
            g = torch.Generator("cpu").manual_seed(config.seed * 100_003 + k // config.pair_batch)
            noise = torch.randn((len(maps), *teacher.base.latent_shape), generator=g)
            latents = teacher.sample_latents(maps.to(device), noise, classifier=clf)
            save_file({"maps": maps.half().contiguous(), "noise": noise.contiguous(),
                       "latents": latents.contiguous()}, str(path))
        shards.append(load_file(str(path)))
    return (*(torch.cat([s[key] for s in shards]) for key in ("maps", "noise", "latents")), labels.long())


def distill_loss(student, maps: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor, *, pixel_weight: float,
                 consistency_weight: float = 0.0, classifier=None,
                 edited: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``(total, parts)``: the student's losses on maps ``[b, C, h, w]``, noise and teacher latents ``[b, *latent]``:
    MSE of its clean latents, plus ``pixel_weight`` times the MSE of the decoded images, on the rows not ``edited``
    (bool ``[b]``: steered maps, which have no teacher target), plus ``consistency_weight`` times the mean
    :func:`~workbench.training.consistency.feature_consistency` of every row with ``classifier``."""
    from .consistency import feature_consistency

    x0 = student.clean_latents(noise, student.student_predictor(maps))
    real = torch.ones(len(maps), dtype=torch.bool, device=maps.device) if edited is None else ~edited.to(maps.device)
    zero = x0.sum() * 0
    latent = F.mse_loss(x0[real].float(), latents[real].float()) if real.any() else zero
    parts, total = {"latent": latent.item()}, latent
    if pixel_weight > 0 or consistency_weight > 0:
        images = student.base.decode(x0)
    if pixel_weight > 0 and real.any():
        with torch.no_grad():
            target_images = student.base.decode(latents[real])
        pixel = F.mse_loss(images[real].float(), target_images.float())
        parts["pixel"], total = pixel.item(), total + pixel_weight * pixel
    if consistency_weight > 0:
        consistency = feature_consistency(classifier, student.layer, images, maps).mean()
        parts["consistency"], total = consistency.item(), total + consistency_weight * consistency
    return total, parts


def class_directions(maps: torch.Tensor, labels: torch.Tensor, layer: str) -> dict:
    """Class index -> the class-mean concept of ``layer`` over the training pairs' maps (for :func:`edited_maps`)."""
    from ..analysis.concepts import class_concepts
    from ..tinyworld import CLASSES

    concepts = class_concepts(maps.float(), labels, layer=layer)
    return {CLASSES.index(name): c for name, c in concepts.items()}


def train(config: DistillConfig, acc, student, pairs: tuple[torch.Tensor, ...], timer: Timer, clf=None):
    """The loop (resumable, keeping a time-budget cut): returns ``(student in eval mode, loop, final losses,
    earlier seconds)``. Only the ControlNet trains; the base stays frozen. ``pairs``: maps, noise, latents, labels."""
    from .consistency import edited_maps

    rank, world = process_of(acc)
    stream = TensorStream(*pairs, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    batches = iter(stream)
    params = [p for p in student.controlnet.parameters() if p.requires_grad]
    opt, sched = adamw_with_schedule(params, config, weight_decay=0.0, warmup=WARMUP_STEPS)
    start, earlier_s = 0, 0.0
    state = resume_run(config, modules={"controlnet": student.controlnet}, optimizer=opt, lr_scheduler=sched,
                       stream=stream, acc=acc)
    if state:
        start, earlier_s = state["step"], state["extra"].get("wall_time_s", 0.0)
        sched.horizon["total"] = min(config.steps, state["extra"].get("total", config.steps))
    g = loop_generator(config, acc, state)
    concepts = class_directions(pairs[0], pairs[3], student.layer) if config.edit_fraction > 0 else {}
    alphas = tuple(float(a) for a in config.edit_alpha.split(","))
    controlnet, opt = acc.prepare(student.controlnet, opt)
    student.controlnet = controlnet
    loop = Steps(start, sched.horizon["total"], desc=f"distill {config.teacher}", max_minutes=config.max_minutes,
                 lr_scheduler=sched, progress=config.progress, acc=acc)
    losses = None
    student.train()
    for step in loop:
        maps, noise, latents, labels = (t.to(acc.device) for t in next(batches))
        maps, edited = edited_maps(maps.float(), labels.cpu(), concepts, fraction=config.edit_fraction,
                                   alpha_range=alphas, generator=g)
        with acc.accumulate(controlnet), acc.autocast():
            loss, parts = distill_loss(student, maps, noise, latents, pixel_weight=config.pixel_weight,
                                       consistency_weight=config.consistency_weight, classifier=clf, edited=edited)
            optimiser_step(acc, loss, controlnet, opt, sched, max_grad_norm=1.0)
        losses = {"loss": loss.item(), **parts}
        loop.log(**losses)
        save_if_due(loop, step, acc, config, modules={"controlnet": acc.unwrap_model(controlnet)}, optimizer=opt,
                    lr_scheduler=sched, extra={"stream": stream.state_dict(), "total": loop.total,
                                               "wall_time_s": earlier_s + timer.seconds}, generator=g)
    student.controlnet = acc.unwrap_model(controlnet)
    final = {k: round(v, 5) for k, v in losses.items()} if losses else None
    return student.eval(), loop, final, earlier_s


def main(config: DistillConfig):
    """Sample the teacher's pairs, train the student, write ``OUT/inverter`` (and ``--ship``'s copy) with its card;
    returns ``(student, card)``."""
    from ..card_metrics import inverter_card_metrics
    from ..inverters import load_inverter
    from ..inverters.distilled import DistilledFeatInv
    from ..inverters.sampler import Sampler
    from ..models import load_classifier

    check_resume(config, what=f"the distilled {config.teacher}")
    timer = Timer()
    config, acc = start_run(config)
    teacher = load_inverter(config.teacher, device=acc.device)
    clf = load_classifier(teacher.classifier_name, device=acc.device).eval()
    clf.requires_grad_(False)
    pairs = teacher_pairs(config, teacher, clf, progress=config.progress and acc.is_main_process)
    pairs_s = timer.seconds
    if config.init_from:
        student = load_inverter(config.init_from, device=acc.device, base=teacher.base)
        if not isinstance(student, DistilledFeatInv) or student.layer != teacher.layer:
            raise ArgumentValueError(f"--init-from {config.init_from!r} is not a distilled inverter of "
                                     f"{teacher.classifier_name}/{teacher.layer}; give one, or leave it out")
    else:
        student = DistilledFeatInv.from_teacher(teacher, timesteps=config.student_timesteps(),
                                                teacher_name=config.teacher)
    student.base.requires_grad_(False)
    student.controlnet.requires_grad_(True)
    student, loop, final, earlier_s = train(config, acc, student, pairs, timer, clf=clf)
    card = {"config": student.config,
            "training": {"command": command_line(), "method": METHOD, "teacher": config.teacher,
                         "teacher_sampler": Sampler().describe(), "seed": config.seed, "pairs": config.pairs,
                         "steps": loop.total, "batch_size": config.batch_size, "lr": config.lr,
                         "pixel_weight": config.pixel_weight, "consistency_weight": config.consistency_weight,
                         "edit_fraction": config.edit_fraction, "edit_alpha": config.edit_alpha,
                         "init_from": config.init_from, "final_loss": final,
                         "teacher_sampling_s": pairs_s,
                         "wall_time_s": round(earlier_s + timer.seconds, 1), "device": str(acc.device),
                         "processes": acc.num_processes}}
    if acc.is_main_process:
        if config.eval_images > 0:
            card["metrics"] = inverter_card_metrics(student, clf, num_images=config.eval_images, seed=config.seed)
        student.save_pretrained(Path(config.out) / "inverter", fp16=False, card=card)
        if config.ship:
            student.save_pretrained(Path(config.ship) / "inverters" / teacher.classifier_name
                                    / f"{teacher.layer}-{config.variant}", fp16=True, card=card)
        print(f"distilled {config.teacher}: {json.dumps(card.get('metrics', {}))} {timer.seconds} s")
    acc.wait_for_everyone()
    return student, card


if __name__ == "__main__":
    main(parse_args())
