"""Train a FeatInv ControlNet (``workbench train-inverter``).

    workbench train-inverter --classifier tinyworld-cnn --layer stages.3 --base tinyworld-base \\
        --data tinyworld --steps 6000 --out runs/cnn-stages.3 [--resume]
    accelerate launch -m workbench.cli train-inverter --classifier resnet50 --layer layer4 \\
        --base lambdalabs/miniSD-diffusers --data /data/imagenet/train --steps 100000 --out runs/r50

The base (UNet, VAE) and the classifier are frozen. Each step computes the classifier's features of
the batch, batched and under ``no_grad`` in eval mode; the prompt embedding was computed once when
the base was loaded. For the tiny world the VAE latents of the fixed training set are encoded once,
batched; for an image folder they are encoded in the step.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch

from .common import (EMA_DECAY, RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, cached_tensor,
                     command_line, parse_config, ema_update, encode_all, image_folder_stream, init_card,
                     optimiser_step, resume_run, save_if_due, start_run, state_fingerprint, tinyworld_images)


@dataclass(kw_only=True)
class FeatInvConfig(RunConfig):
    """What ``workbench train-inverter`` and :func:`train_featinv` take: one field per flag (``--drop-prob`` is
    ``drop_prob``)."""

    # RunConfig's fields with this script's defaults
    steps: int = 6000
    batch_size: int = 128
    lr: float = 3e-4
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"

    classifier: str  # tinyworld-cnn, tinyworld-vit or any timm name
    layer: str  # the layer to invert, as the classifier's named_modules() names it (stages.3, blocks.5, layer4)
    classifier_checkpoint: str | None = None  # local weights for a timm classifier
    base: str = "tinyworld-base"  # the diffusion base: shipped name, local folder or hub id
    data: str = "tinyworld"  # 'tinyworld' or an ImageFolder directory
    train_images: int = 50_000  # tiny-world training images
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
    config = FeatInvConfig(**kwargs) if config is None else dataclasses.replace(config, **kwargs)
    return main(config, summary=config.progress)[0]   # a notebook's progress=False run prints nothing


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def training_batches(config: FeatInvConfig, clf, base, device) -> tuple[TensorStream | None, Iterator]:
    """``(stream, batches)``: endless ``(images, latents or None, *cached features)`` batches. The tiny world's are
    drawn from uint8 images whose latents (and, with ``feature_cache``, features) are computed once and cached;
    an image folder's come from a loader (``stream`` is then ``None``: it has no resumable state)."""
    if config.data != "tinyworld":
        folder = image_folder_stream(config.data, image_size=base.image_size, batch_size=config.batch_size,
                                     seed=config.seed, num_workers=config.num_workers)
        return None, ((x, None) for x, _ in folder)
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=device,
                                 progress=config.progress)
    cache_dir = None if config.cache_dir == "none" else Path(config.cache_dir or Path(config.out) / "cache")
    data_key = f"tinyworld/{config.train_images}/{config.seed}"
    latents = cached_tensor(cache_dir, "latents", state_fingerprint(base.vae or torch.nn.Identity(),
                                                                      extra=f"{data_key}/{base.scaling_factor}"),
                            lambda: encode_all(base, images)).to(device)
    tensors = [images, latents]
    if config.feature_cache:
        key = state_fingerprint(clf, extra=f"{data_key}/{config.layer}/{base.image_size}")
        feats = cached_tensor(cache_dir, f"features-{config.layer}", key,
                              lambda: extract_all(clf, images, config.layer, progress=config.progress), half=True)
        tensors.append(feats.to(device))
    stream = TensorStream(*tensors, batch_size=config.batch_size, seed=config.seed)
    return stream, iter(stream)


def build_inverter(config: FeatInvConfig, clf, base, batches: Iterator, device):
    """The FeatInv to train, its feature normalisation fixed from the first batch's maps (which also give the
    feature shape); the ControlNet of ``config.init_from`` when given."""
    from ..hooks import extract_features
    from ..inverters.featinv import FeatInv
    from ..models import classifier_view

    probe = _as_float(next(batches)[0].to(device))
    feats = extract_features(clf, classifier_view(probe, clf), config.layer)
    inv = FeatInv(base, config.classifier, config.layer, tuple(feats.shape[1:]), config.pooling,
                  hidden_channels=config.hidden_channels).to(device)
    if config.init_from:
        from ..weights import load_state

        state = load_state(Path(config.init_from) / "controlnet.safetensors")
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
    computed with the frozen models (batched, no gradients)."""
    from ..hooks import extract_features
    from ..models import classifier_view

    x, z0, *cached = batch
    if cached:
        f = cached[0].float()
    else:
        x = _as_float(x.to(device))
        f = extract_features(clf, classifier_view(x, clf), layer, batch_size=len(x))
    return (base.encode(x) if z0 is None else z0), f


def train(config: FeatInvConfig, acc, inv, clf, stream: TensorStream | None, batches: Iterator):
    """The training loop of ``inv``'s ControlNet (resumed with ``config.resume``); afterwards ``inv`` holds the EMA
    weights. Returns ``(losses, loop)``: this run's loss per step and the finished loop."""
    cnet = inv.controlnet.requires_grad_(True).train()
    ema = copy.deepcopy(cnet).requires_grad_(False).eval()
    opt, sched = adamw_with_schedule(cnet.parameters(), config, weight_decay=0.01)
    state = resume_run(config, modules={"controlnet": cnet, "ema": ema}, optimizer=opt, lr_scheduler=sched,
                       stream=stream)
    start = state["step"] if state else 0
    cnet_p, opt = acc.prepare(cnet, opt)
    inv.controlnet = cnet_p
    base, unet = inv.base, inv.base.unet
    if config.compile:  # the same modules and weights; only the forward and backward are compiled
        inv.controlnet = torch.compile(cnet_p)
        base.unet = torch.compile(unet)
    noise_sched = base.make_scheduler("ddpm")
    g = torch.Generator(acc.device).manual_seed(config.seed + start)
    loop = Steps(start, config.steps, desc=f"FeatInv {config.classifier}/{config.layer}",
                 max_minutes=config.max_minutes, lr_scheduler=sched, progress=config.progress)
    losses = []
    for step in loop:
        z0, f = batch_inputs(next(batches), clf, base, config.layer, acc.device)
        with acc.accumulate(cnet_p), acc.autocast():
            loss = inv.training_loss(z0, f, noise_scheduler=noise_sched, generator=g, drop_prob=config.drop_prob,
                                     snr_gamma=config.snr_gamma)
            optimiser_step(acc, loss, cnet_p, opt, sched, max_grad_norm=1.0)
        ema_update(ema, acc.unwrap_model(cnet_p), config.ema, step=step)
        losses.append(loss.item())
        loop.log(loss=loss.item())
        save_if_due(loop, step, acc, config, modules={"controlnet": acc.unwrap_model(cnet_p), "ema": ema},
                    optimizer=opt, lr_scheduler=sched,
                    extra={"stream": stream.state_dict()} if stream is not None else {})
    inv.controlnet = ema
    base.unet = unet
    inv.eval()
    return losses, loop


def main(config: FeatInvConfig, *, summary: bool = True):
    """Train, write ``config.out/inverter`` (and ``config.ship``'s copy) with its card; returns ``(inv, card)``.
    With ``summary``, end with one line: the card's metrics and the wall time (the command line's log)."""
    from ..diffusion import DiffusionBase
    from ..evaluation import inverter_card_metrics
    from ..models import load_classifier

    if config.snr_gamma is not None and not config.snr_gamma > 0:
        raise SystemExit(f"--snr-gamma {config.snr_gamma}: must be > 0 (5 is the paper's choice), or left out for "
                         "plain MSE")
    timer = Timer()
    config, acc = start_run(config)
    if acc.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    clf = load_classifier(config.classifier, checkpoint_path=config.classifier_checkpoint, device=acc.device).eval()
    clf.requires_grad_(False)
    base = DiffusionBase.from_pretrained(config.base, device=acc.device)
    stream, batches = training_batches(config, clf, base, acc.device)
    inv = build_inverter(config, clf, base, batches, acc.device)
    losses, loop = train(config, acc, inv, clf, stream, batches)
    card = {"config": inv.config,
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "lr": config.lr, "drop_prob": config.drop_prob,
                         "snr_gamma": config.snr_gamma, "ema": config.ema, "data": config.data,
                         "mixed_precision": config.mixed_precision, "compile": config.compile,
                         "init_from": config.init_from, "wall_time_s": timer.seconds, "device": str(acc.device),
                         "loss_curve": _curve(losses)}}
    if config.init_from and (prev := init_card(Path(config.init_from) / "card.json")):  # the starting weights' card
        card["training"]["init_card"] = prev
    inv.card = card
    if config.data == "tinyworld" and config.eval_images > 0:
        card["metrics"] = inverter_card_metrics(inv, clf, num_images=config.eval_images, seed=config.seed)
    if acc.is_main_process:
        name = f"{config.layer}" + ("-pooled" if config.pooling == "mean" else "")
        inv.save_pretrained(Path(config.out) / "inverter", fp16=False, card=card)
        if config.ship:
            inv.save_pretrained(Path(config.ship) / "inverters" / config.classifier / name, fp16=True, card=card)
    if summary:
        metrics = f"{json.dumps(card['metrics'])}, " if card.get("metrics") else ""
        print(f"FeatInv {config.classifier}/{config.layer} pooling={config.pooling}: {metrics}{timer.seconds} s")
    return inv, card


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
