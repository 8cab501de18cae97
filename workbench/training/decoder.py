"""Train the decoder baseline (``workbench train-decoder``), Dosovitskiy & Brox 2016.

    workbench train-decoder --classifier tinyworld-cnn --layer stages.3 --steps 3000 --out runs/dec-cnn [--resume]
    workbench train-decoder --classifier tinyworld-vit --layer blocks.5 --steps 3000 --out runs/dec-vit --max-minutes 8 --ship data

The classifier is frozen. Each step renders nothing new: the tiny-world training images are rendered
once, their features at ``--layer`` are computed per batch under ``no_grad``, and the decoder is fit
with ``L1(pixels) + feature_weight * MSE(normalised features of the output, normalised target features)``.
``--ship DATA`` writes fp16 weights, config and card to ``DATA/inverters/<classifier>/<layer>-decoder/``.
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

WARMUP_STEPS = 100  # the decoder's LR warms up over min(WARMUP_STEPS, steps // 10) steps
PROBE_IMAGES = 1024  # training images whose maps fix the decoder's feature normalisation


@dataclass(kw_only=True)
class DecoderConfig(RunConfig):
    """What ``workbench train-decoder`` takes: one field per flag (``--feature-weight`` is ``feature_weight``)."""

    # RunConfig's fields with this script's defaults
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3

    classifier: str  # tinyworld-cnn, tinyworld-vit or any timm name
    layer: str  # the layer to invert, as the classifier's named_modules() names it
    train_images: int = 20_000  # tiny-world training images, rendered once into memory
    hidden_channels: int = 128  # width of the decoder's first block
    min_channels: int = 16  # width of its last block
    feature_weight: float = 1.0  # weight of the feature loss
    feature_loss_images: int = 16  # images of each batch that also get the feature loss (the classifier's
    # backward pass is the costly part on a CPU)
    eval_images: int = 256  # held-out test images for the card's metrics (0: none)

    run_keys = ("classifier", "layer", "hidden_channels", "min_channels")
    positive = RunConfig.positive + ("train_images", "hidden_channels", "min_channels", "feature_loss_images")
    non_negative = ("eval_images",)

    def check(self) -> None:
        super().check()
        if not (isinstance(self.feature_weight, (int, float)) and self.feature_weight >= 0):
            raise ArgumentValueError(f"--feature-weight {self.feature_weight!r}: must be >= 0")


def parse_args(argv=None) -> DecoderConfig:
    return parse_config(DecoderConfig, argv, prog="workbench train-decoder", description=__doc__)


def decoder_loss(dec, clf, layer: str, x: torch.Tensor, feats: torch.Tensor, *, feature_weight: float,
                 feature_loss_images: int | None = None, forward=None):
    """``(total, pixel, feature)`` losses of decoder ``dec`` on images ``x [B, 3, H, W]`` with maps
    ``feats [B, C, h, w]``; the feature loss uses the first ``feature_loss_images`` items (all when ``None``).
    ``forward`` runs the decoder instead of ``dec`` itself (its DDP wrapper, which averages the gradients of
    several processes)."""
    from ..hooks import run_with_cache

    rec = (forward or dec)(feats)
    pixel = F.l1_loss(rec, x)
    k = len(x) if feature_loss_images is None else max(1, min(feature_loss_images, len(x)))
    _, cache = run_with_cache(clf, rec[:k], [layer], detach=False)
    std = dec.feature_std.view(1, -1, 1, 1)
    feature = F.mse_loss(cache[layer] / std, feats[:k] / std)
    return pixel + feature_weight * feature, pixel, feature


def build_decoder(config: DecoderConfig, clf, images: torch.Tensor, device):
    """The decoder to train, its feature normalisation fixed from the maps of the first training images."""
    from ..hooks import extract_features
    from ..inverters.decoder import DecoderInverter

    probe = images[:PROBE_IMAGES].float() / 255
    feats = extract_features(clf, probe, config.layer)
    dec = DecoderInverter(config.classifier, config.layer, tuple(feats.shape[1:]), image_size=probe.shape[-1],
                          hidden_channels=config.hidden_channels, min_channels=config.min_channels).to(device)
    dec.set_feature_stats(feats)
    return dec.train()


def train(config: DecoderConfig, acc, dec, clf, images: torch.Tensor, timer: Timer):
    """The training loop (resumed with ``config.resume``, keeping a time-budget cut of the total). Returns
    ``(decoder, loop, final_loss, earlier_s)``: the trained decoder in eval mode, the finished loop, the last
    step's loss (``None`` when no step ran) and the seconds of earlier, resumed runs. Each process trains on its
    own share of every global batch."""
    from ..hooks import extract_features

    rank, world = process_of(acc)
    stream = TensorStream(images, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    batches = iter(stream)
    opt, sched = adamw_with_schedule(dec.parameters(), config, weight_decay=1e-4, warmup=WARMUP_STEPS)
    start, earlier_s = 0, 0.0
    state = resume_run(config, modules={"decoder": dec}, optimizer=opt, lr_scheduler=sched, stream=stream, acc=acc)
    if state:
        start, earlier_s = state["step"], state["extra"].get("wall_time_s", 0.0)
        sched.horizon["total"] = min(config.steps, state["extra"].get("total", config.steps))  # a budget cut is kept
    g = loop_generator(config, acc, state)
    dec_p, opt = acc.prepare(dec, opt)
    loop = Steps(start, sched.horizon["total"], desc=f"decoder {config.classifier}/{config.layer}",
                 max_minutes=config.max_minutes, lr_scheduler=sched, progress=config.progress, acc=acc)
    loss = None
    for step in loop:
        (x,) = next(batches)
        x = x.to(acc.device).float() / 255
        with torch.no_grad():
            f = extract_features(clf, x, config.layer, batch_size=len(x))
        with acc.accumulate(dec_p), acc.autocast():
            loss, pixel, feature = decoder_loss(acc.unwrap_model(dec_p), clf, config.layer, x, f,
                                                feature_weight=config.feature_weight,
                                                feature_loss_images=config.feature_loss_images, forward=dec_p)
            optimiser_step(acc, loss, dec_p, opt, sched, max_grad_norm=1.0)
        loop.log(loss=loss.item(), pixel=pixel.item(), feature=feature.item())
        save_if_due(loop, step, acc, config, modules={"decoder": acc.unwrap_model(dec_p)}, optimizer=opt,
                    lr_scheduler=sched, extra={"stream": stream.state_dict(), "total": loop.total,
                                               "wall_time_s": earlier_s + timer.seconds}, generator=g)
    final_loss = round(loss.item(), 5) if loss is not None else None
    return acc.unwrap_model(dec_p).eval(), loop, final_loss, earlier_s


def main(config: DecoderConfig):
    """Train, write ``config.out/inverter`` (and ``config.ship``'s copy) with its card; returns ``(dec, card)``
    (the main process measures and writes; the others return the card without metrics)."""
    from ..card_metrics import inverter_card_metrics
    from ..models import load_classifier

    check_resume(config, what=f"the decoder of {config.classifier}/{config.layer}")
    timer = Timer()
    config, acc = start_run(config)
    clf = load_classifier(config.classifier, device=acc.device).eval()
    clf.requires_grad_(False)
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=acc.device,
                                 progress=config.progress and acc.is_main_process)
    dec = build_decoder(config, clf, images, acc.device)
    dec, loop, final_loss, earlier_s = train(config, acc, dec, clf, images, timer)
    card = {"config": dec.config,
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "processes": acc.num_processes, "lr": config.lr,
                         "feature_weight": config.feature_weight,
                         "feature_loss_images": config.feature_loss_images, "train_images": config.train_images,
                         "final_loss": final_loss,
                         "wall_time_s": round(earlier_s + timer.seconds, 1),  # over all resumed runs
                         "device": str(acc.device)}}
    if acc.is_main_process:
        if config.eval_images > 0:
            card["metrics"] = inverter_card_metrics(dec, clf, num_images=config.eval_images, seed=config.seed)
        dec.save_pretrained(Path(config.out) / "inverter", fp16=False, card=card)
        if config.ship:
            dec.save_pretrained(Path(config.ship) / "inverters" / config.classifier / f"{config.layer}-decoder",
                                fp16=True, card=card)
        print(f"decoder {config.classifier}/{config.layer}: {json.dumps(card.get('metrics', {}))} {timer.seconds} s")
    acc.wait_for_everyone()  # the weights are there for every process to read
    return dec, card


if __name__ == "__main__":
    main(parse_args())
