"""Train a FeatInv ControlNet (``workbench train-inverter``).

    workbench train-inverter --classifier tinyworld-cnn --layer stages.3 --base tinyworld-base --data tinyworld --steps 6000 --out runs/cnn-stages.3 [--resume]
    accelerate launch -m workbench.cli train-inverter --classifier resnet50 --layer layer4 --base lambdalabs/miniSD-diffusers --data /data/imagenet/train --steps 100000 --out runs/r50

The base (UNet, VAE) and the classifier are frozen. Each step computes the classifier's features of
the batch, batched and under ``no_grad`` in eval mode; the prompt embedding was computed once when
the base was loaded. For the tiny world the VAE latents of the fixed training set are encoded once,
batched; for an image folder they are encoded in the step, after the official FeatInv augmentation
(random resized crop, random horizontal and vertical flips; ``--no-augment`` turns it off).

Under ``accelerate launch`` with N processes each step trains on N x ``--batch-size`` images, every
process on its own share and with its own noise; the weights are written once, by the main process.
``wb.presets.get("official")`` gives the official recipe's arguments.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch

from ..errors import ArgumentValueError
from .common import (EMA_DECAY, ImageFolderStream, RunConfig, Steps, Timer, TensorStream, adamw_with_schedule,
                     cached_tensor, check_int_field, check_resume, check_snr_gamma, command_line, ema_update,
                     encode_all, init_card, loop_generator, optimiser_step, parse_config, process_of,
                     removed_on_failure, resume_run, save_if_due, start_run, state_fingerprint, tinyworld_images)


@dataclass(kw_only=True)
class FeatInvConfig(RunConfig):
    """What ``workbench train-inverter`` and :func:`train_featinv` take: one field per flag (``--drop-prob`` is
    ``drop_prob``)."""

    # RunConfig's fields with this script's defaults
    steps: int = 6000
    batch_size: int = 128
    lr: float = 3e-4

    classifier: str  # tinyworld-cnn, tinyworld-vit or any timm name
    layer: str  # the layer to invert, as the classifier's named_modules() names it (stages.3, blocks.5, layer4)
    classifier_checkpoint: str | None = None  # local weights for a timm classifier
    base: str = "tinyworld-base"  # the diffusion base: shipped name, local folder or hub id
    data: str = "tinyworld"  # 'tinyworld' or an ImageFolder directory
    train_images: int | None = None  # tiny-world training images, rendered and encoded before step 1 (none: what
    # the run trains on, steps x batch size x processes, at most 50,000; with --epochs: 50,000)
    pooling: Literal["none", "mean"] = "none"  # spatial conditioning, or the pooled ablation
    hidden_channels: int = 64  # width of the conditioning encoder
    drop_prob: float = 0.15  # condition dropout (features zeroed, null prompt)
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting, as train-base's (5 is the paper's choice);
    # none: plain MSE
    ema: float = EMA_DECAY  # EMA decay of the saved weights
    eval_images: int = 256  # held-out test images for the card's metrics (tiny world only; 0: none)
    num_workers: int = 4  # data-loading processes for an image folder
    feature_cache: bool = True  # tiny world: compute the classifier's features of the fixed training set once,
    # batched, instead of in every step
    cache_dir: str | None = None  # where cached latents and features are kept across runs and --resume (none:
    # OUT/cache; 'none': memory only)
    compile: bool = False  # torch.compile the ControlNet and the UNet (minutes of compile time; pays off on long
    # runs)
    init_from: str | None = None  # start from this saved inverter's ControlNet (e.g. after retraining the
    # classifier); the feature normalisation is measured afresh
    augment: bool = True  # image folders: RandomResizedCrop and random horizontal and vertical flips, as the
    # official FeatInv training, drawn from --seed (the tiny world is never augmented: its images are centred
    # renderings of known factors)
    classifier_size: int | None = None  # pixels the classifier reads (the official recipe: 288); image folders are
    # then read at the larger of this and the base's size, which gets them resized (none: the classifier's own)
    prompt: str | None = None  # the fixed prompt, for a base whose folder has no saved prompt embedding (none: the
    # library's default prompt)
    epochs: float | None = None  # passes over the data; when given, it sets --steps to epochs x images / global
    # batch (rounded up)
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: warm-up then decay to a tenth; constant: --lr
    # throughout (the official recipe)
    max_grad_norm: float | None = 1.0  # clip the gradient norm to this (none: no clipping, as the official recipe)

    run_keys = ("classifier", "layer", "pooling", "hidden_channels", "base", "classifier_size")
    positive = RunConfig.positive + ("hidden_channels",)
    non_negative = ("eval_images", "num_workers")
    fractions = ("drop_prob", "ema")

    def check(self) -> None:
        super().check()
        check_snr_gamma(self)
        if self.train_images is None and self.data == "tinyworld" and self.batch_size > DEFAULT_TRAIN_IMAGES:
            raise ArgumentValueError(f"--batch-size {self.batch_size}: more than the {DEFAULT_TRAIN_IMAGES} images of "
                                     "--train-images at most; lower it or raise --train-images")
        for name in ("classifier_size", "train_images"):
            if getattr(self, name) is not None:
                check_int_field(self, name, low=1)
        for name in ("epochs", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ArgumentValueError(f"--{name.replace('_', '-')} {value!r}: must be > 0, or left out")


#: the tiny-world training set of a long run (``--train-images`` left out); a shorter run renders fewer
DEFAULT_TRAIN_IMAGES = 50_000


def sized_train_images(config: FeatInvConfig, processes: int = 1) -> int:
    """The tiny-world images a run renders and encodes before its first step: ``--train-images`` when given,
    else the images its steps draw (``steps x batch_size x processes``) up to :data:`DEFAULT_TRAIN_IMAGES`, so that
    ``--steps 20`` prepares 2,560 images rather than 50,000 (with ``--epochs`` the steps follow the data: 50,000).

    Example:
        >>> sized_train_images(FeatInvConfig(classifier="c", layer="l", out="o", steps=20))   # 20 x 128
        2560
    """
    if config.train_images is not None:
        return config.train_images
    if config.epochs is not None:
        return DEFAULT_TRAIN_IMAGES
    return min(DEFAULT_TRAIN_IMAGES, config.steps * config.batch_size * processes)


def parse_args(argv=None) -> FeatInvConfig:
    return parse_config(FeatInvConfig, argv, prog="workbench train-inverter", description=__doc__)


def train_featinv(config: FeatInvConfig | None = None, /, **kwargs):
    """Python entry point of ``workbench train-inverter``; returns the trained :class:`FeatInv` (EMA weights).

    Args:
        config: a :class:`FeatInvConfig`; without it, the fields come from ``kwargs``.
        **kwargs: :class:`FeatInvConfig` fields (with ``config``: they replace its values).

    Example:
        >>> inv = wb.train_featinv(classifier="tinyworld-cnn", layer="stages.3", steps=50, out=tmp_path)
        >>> inv = wb.train_featinv(FeatInvConfig(classifier="tinyworld-cnn", layer="stages.3", out="runs/x"))
    """
    from ..globalstate import kept_rngs

    config = FeatInvConfig(**kwargs) if config is None else dataclasses.replace(config, **kwargs)
    with kept_rngs():       # the run seeds torch with config.seed; the caller's generators come back as they were
        return main(config, summary=config.progress)[0]   # a notebook's progress=False run prints nothing


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def training_batches(config: FeatInvConfig, clf, base, acc, created: list[Path]):
    """``(stream, batches)``: the resumable stream, sharded over the processes, and its endless ``(images, latents
    or None, *cached features)`` batches. The tiny world's are drawn from uint8 images whose latents (and, with
    ``feature_cache``, features) are computed once and cached (by the main process; the files it writes are listed
    in ``created``); an image folder's are read (and augmented) by loader processes, at
    :func:`folder_image_size`."""
    rank, world = process_of(acc)
    if config.data != "tinyworld":
        stream = ImageFolderStream(config.data, image_size=folder_image_size(config, base),
                                   batch_size=config.batch_size, seed=config.seed, rank=rank, world=world,
                                   augment=config.augment, num_workers=config.num_workers)
        return stream, ((x, None) for x, _ in stream)
    device, progress = acc.device, config.progress and acc.is_main_process
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=device,
                                 progress=progress)
    cache_dir = None if config.cache_dir == "none" else Path(config.cache_dir or Path(config.out) / "cache")
    data_key = f"tinyworld/{config.train_images}/{config.seed}"
    latents = cached_tensor(cache_dir, "latents", state_fingerprint(base.vae or torch.nn.Identity(),
                                                                      extra=f"{data_key}/{base.scaling_factor}"),
                            lambda: encode_all(base, images, progress=progress), acc=acc, created=created).to(device)
    tensors = [images, latents]
    if config.feature_cache:
        size = f"/{config.classifier_size}" if config.classifier_size else ""
        key = state_fingerprint(clf, extra=f"{data_key}/{config.layer}/{base.image_size}{size}")
        feats = cached_tensor(cache_dir, f"features-{config.layer}", key,
                              lambda: extract_all(clf, images, config.layer, progress=progress), half=True, acc=acc,
                              created=created)
        tensors.append(feats.to(device))
    stream = TensorStream(*tensors, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    return stream, iter(stream)


def folder_image_size(config: FeatInvConfig, base) -> int:
    """The side an image folder's images are read at: the base's, or ``config.classifier_size`` when larger (the
    official recipe crops 288 px for the classifier and resizes that crop to the base's 256 px)."""
    return max(base.image_size, config.classifier_size or 0)


def build_inverter(config: FeatInvConfig, clf, base, probe: torch.Tensor, device):
    """The FeatInv to train, its feature normalisation fixed from the maps of the ``probe`` images (the same in
    every process), which also give the feature shape; the ControlNet of ``config.init_from`` when given."""
    from ..hooks import extract_features
    from ..inverters.featinv import FeatInv
    from ..models import classifier_view

    probe = _as_float(probe.to(device))
    feats = extract_features(clf, classifier_view(probe, clf), config.layer)
    inv = FeatInv(base, config.classifier, config.layer, tuple(feats.shape[1:]), config.pooling,
                  hidden_channels=config.hidden_channels, prompt=config.prompt,
                  classifier_input_size=tuple(clf.input_size) if config.classifier_size else None).to(device)
    if config.init_from:
        from ..inverters.featinv import controlnet_state

        state = controlnet_state(Path(config.init_from))
        try:
            inv.controlnet.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SystemExit(f"--init-from {config.init_from} does not fit a {config.classifier}/{config.layer} "
                             f"inverter with --hidden-channels {config.hidden_channels}: "
                             f"{str(e).splitlines()[0]}") from e
    inv.conditioning.set_feature_stats(feats)
    return inv


@torch.no_grad()
def batch_inputs(batch: tuple, clf, base, layer: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents, features)`` of one batch of :func:`training_batches`: cached where the batch has them, else
    computed with the frozen models (batched, no gradients; images read larger than the base's size, see
    :func:`folder_image_size`, are resized for it)."""
    from ..hooks import extract_features
    from ..models import classifier_view

    x, z0, *cached = batch
    if cached:
        f = cached[0].float()
    else:
        x = _as_float(x.to(device))
        f = extract_features(clf, classifier_view(x, clf), layer, batch_size=len(x))
    if z0 is None and x.shape[-1] != base.image_size:
        x = torch.nn.functional.interpolate(_as_float(x), size=(base.image_size, base.image_size), mode="bilinear",
                                            antialias=True, align_corners=False)
    return (base.encode(x) if z0 is None else z0), f


def train(config: FeatInvConfig, acc, inv, clf, stream, batches: Iterator):
    """The training loop of ``inv``'s ControlNet (resumed with ``config.resume``); afterwards ``inv`` holds the EMA
    weights. Returns ``(losses, loop)``: this run's loss per step and the finished loop. Each process trains on
    its own share of every global batch, with its own noise and condition dropout."""
    cnet = inv.controlnet.requires_grad_(True).train()
    ema = copy.deepcopy(cnet).requires_grad_(False).eval()
    opt, sched = adamw_with_schedule(cnet.parameters(), config, weight_decay=0.01, schedule=config.lr_schedule)
    state = resume_run(config, modules={"controlnet": cnet, "ema": ema}, optimizer=opt, lr_scheduler=sched,
                       stream=stream, acc=acc)
    start = state["step"] if state else 0
    g = loop_generator(config, acc, state)
    cnet_p, opt = acc.prepare(cnet, opt)
    inv.controlnet = cnet_p
    base, unet = inv.base, inv.base.unet
    if config.compile:  # the same modules and weights; only the forward and backward are compiled
        inv.controlnet = torch.compile(cnet_p)
        base.unet = torch.compile(unet)
    noise_sched = base.make_scheduler("ddpm")
    loop = Steps(start, config.steps, desc=f"FeatInv {config.classifier}/{config.layer}",
                 max_minutes=config.max_minutes, lr_scheduler=sched, progress=config.progress, acc=acc)
    losses = []
    for step in loop:
        z0, f = batch_inputs(next(batches), clf, base, config.layer, acc.device)
        with acc.accumulate(cnet_p), acc.autocast():
            loss = inv.training_loss(z0, f, noise_scheduler=noise_sched, generator=g, drop_prob=config.drop_prob,
                                     snr_gamma=config.snr_gamma)
            optimiser_step(acc, loss, cnet_p, opt, sched, max_grad_norm=config.max_grad_norm)
        ema_update(ema, acc.unwrap_model(cnet_p), config.ema, step=step)
        losses.append(loss.item())
        loop.log(loss=loss.item())
        save_if_due(loop, step, acc, config, modules={"controlnet": acc.unwrap_model(cnet_p), "ema": ema},
                    optimizer=opt, lr_scheduler=sched, extra={"stream": stream.state_dict()}, generator=g)
    inv.controlnet = ema
    base.unet = unet
    inv.eval()
    return losses, loop


def load_frozen(config: FeatInvConfig, acc):
    """``(classifier, base)``, frozen, on ``acc.device``: the classifier reading ``config.classifier_size`` pixels
    when given, the base with ``config.prompt`` when given."""
    from ..diffusion import DiffusionBase
    from ..models import load_classifier

    clf = load_classifier(config.classifier, checkpoint_path=config.classifier_checkpoint, device=acc.device).eval()
    clf.requires_grad_(False)
    if config.classifier_size:
        clf.input_size = (clf.input_size[0], config.classifier_size, config.classifier_size)
    kw = {"prompt": config.prompt} if config.prompt is not None else {}
    base = DiffusionBase.from_pretrained(config.base, device=acc.device, **kw)
    return clf, base


def main(config: FeatInvConfig, *, summary: bool = True):
    """Train, write ``config.out/inverter`` (and ``config.ship``'s copy) with its card; returns ``(inv, card)``.
    With ``summary``, end with one line: the card's metrics and the wall time (the command line's log). Under
    several processes the main one measures and writes (the others return the card without metrics); a run that
    fails removes the cache files it wrote."""
    check_resume(config, what=f"the inverter of {config.classifier}/{config.layer}")
    timer = Timer()
    config, acc = start_run(config)
    if config.data == "tinyworld":
        config = dataclasses.replace(config, train_images=sized_train_images(config, acc.num_processes))
    if acc.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with removed_on_failure([]) as created:
        clf, base = load_frozen(config, acc)
        stream, batches = training_batches(config, clf, base, acc, created)
        if config.epochs is not None:
            global_batch = config.batch_size * acc.num_processes
            config = dataclasses.replace(config, steps=max(1, math.ceil(config.epochs * len(stream) / global_batch)))
        inv = build_inverter(config, clf, base, stream.probe()[0], acc.device)
        losses, loop = train(config, acc, inv, clf, stream, batches)
        card = inverter_card(config, acc, inv, loop, losses, timer)
        if acc.is_main_process:
            write_inverter(config, acc, inv, clf, card)
        acc.wait_for_everyone()  # the weights are there for every process to read
    if summary and acc.is_main_process:
        metrics = f"{json.dumps(card['metrics'])}, " if card.get("metrics") else ""
        print(f"FeatInv {config.classifier}/{config.layer} pooling={config.pooling}: {metrics}{timer.seconds} s")
        print(f"the inverter is in {Path(config.out) / 'inverter'}; load it with\n"
              f"    inv = wb.load_inverter({str(config.out)!r})")
    return inv, card


def inverter_card(config: FeatInvConfig, acc, inv, loop: Steps, losses: list[float], timer: Timer) -> dict:
    """The trained inverter's card: its config and the training record (without metrics)."""
    card = {"config": inv.config,
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "processes": acc.num_processes, "lr": config.lr,
                         "train_images": config.train_images if config.data == "tinyworld" else None,
                         "lr_schedule": config.lr_schedule, "drop_prob": config.drop_prob,
                         "snr_gamma": config.snr_gamma, "ema": config.ema, "data": config.data,
                         "augment": config.augment and config.data != "tinyworld",
                         "classifier_size": config.classifier_size, "prompt": config.prompt,
                         "max_grad_norm": config.max_grad_norm, "mixed_precision": config.mixed_precision,
                         "compile": config.compile, "init_from": config.init_from, "wall_time_s": timer.seconds,
                         "device": str(acc.device), "loss_curve": _curve(losses)}}
    if config.init_from and (prev := init_card(Path(config.init_from) / "card.json")):  # the starting weights' card
        card["training"]["init_card"] = prev
    inv.card = card
    return card


def write_inverter(config: FeatInvConfig, acc, inv, clf, card: dict) -> None:
    """Measure ``inv`` for its card (tiny world only) and write it (and ``config.ship``'s copy): the main process."""
    from ..card_metrics import inverter_card_metrics

    if config.data == "tinyworld" and config.eval_images > 0:
        card["metrics"] = inverter_card_metrics(inv, clf, num_images=config.eval_images, seed=config.seed)
    name = f"{config.layer}" + ("-pooled" if config.pooling == "mean" else "")
    inv.save_pretrained(Path(config.out) / "inverter", fp16=False, card=card)
    if config.ship:
        inv.save_pretrained(Path(config.ship) / "inverters" / config.classifier / name, fp16=True, card=card)


@torch.no_grad()
def extract_all(clf, images_u8: torch.Tensor, layer: str, *, batch_size: int = 512,
                progress: bool = False) -> torch.Tensor:
    """The classifier's maps at ``layer`` for every image, batched, exactly as a training step computes them:
    ``uint8 [N, 3, H, W]`` -> ``float [N, C, h, w]``."""
    from tqdm.auto import tqdm

    from ..hooks import extract_features
    from ..models import classifier_view

    out = []
    for s in tqdm(range(0, len(images_u8), batch_size), desc=f"features {layer}", disable=not progress):
        x = images_u8[s:s + batch_size].float() / 255
        out.append(extract_features(clf, classifier_view(x, clf), layer, batch_size=len(x)).cpu())
    return torch.cat(out)


def _curve(losses: list[float], points: int = 50) -> list[list[float]]:
    """``[[step, mean loss of the window]]``: the loss of this run (resumed runs: since the resume), thinned."""
    if not losses:
        return []
    w = max(1, len(losses) // points)
    return [[i + w, round(sum(losses[i:i + w]) / len(losses[i:i + w]), 5)] for i in range(0, len(losses), w)]


if __name__ == "__main__":
    main(parse_args())
