"""Train the decoder baseline (``workbench train-decoder``), Dosovitskiy & Brox 2016.

    workbench train-decoder --classifier tinyworld-cnn --layer stages.3 --steps 3000 --out runs/dec-cnn [--resume]
    workbench train-decoder --classifier tinyworld-vit --layer blocks.5 --steps 3000 --out runs/dec-vit \\
        --max-minutes 8 --ship data

The classifier is frozen. Each step renders nothing new: the tiny-world training images are rendered
once, their features at ``--layer`` are computed per batch under ``no_grad``, and the decoder is fit
with ``L1(pixels) + feature_weight * MSE(normalised features of the output, normalised target features)``.
``--ship DATA`` writes fp16 weights, config and card to ``DATA/inverters/<classifier>/<layer>-decoder/``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import (Steps, Timer, TensorStream, add_common_args, command_line, cosine_lr, load_checkpoint,
                     make_accelerator, save_checkpoint, tinyworld_images)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench train-decoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", required=True, help="tinyworld-cnn, tinyworld-vit or any timm name")
    p.add_argument("--layer", required=True)
    p.add_argument("--train-size", type=int, default=20_000, help="tiny-world training images")
    p.add_argument("--hidden-channels", type=int, default=128)
    p.add_argument("--min-channels", type=int, default=16)
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of the feature loss")
    p.add_argument("--feature-batch", type=int, default=16,
                   help="images of each batch that also get the feature loss (the classifier's backward pass is "
                        "the costly part on a CPU)")
    p.add_argument("--eval-n", type=int, default=256, help="held-out test images for the card's metrics")
    return add_common_args(p, steps=3000, batch_size=64, lr=2e-3).parse_args(argv)


def decoder_loss(dec, clf, layer: str, x: torch.Tensor, feats: torch.Tensor, *, feature_weight: float,
                 feature_batch: int | None = None):
    """``(total, pixel, feature)`` losses of decoder ``dec`` on images ``x [B, 3, H, W]`` with maps
    ``feats [B, C, h, w]``; the feature loss uses the first ``feature_batch`` items (all when ``None``)."""
    from ..hooks import run_with_cache

    rec = dec(feats)
    pixel = F.l1_loss(rec, x)
    k = len(x) if feature_batch is None else max(1, min(feature_batch, len(x)))
    _, cache = run_with_cache(clf, rec[:k], [layer], detach=False)
    std = dec.feature_std.view(1, -1, 1, 1)
    feature = F.mse_loss(cache[layer] / std, feats[:k] / std)
    return pixel + feature_weight * feature, pixel, feature


def main(args):
    from ..inverters.decoder import DecoderInverter
    from ..hooks import extract_features
    from ..models import load_classifier

    timer = Timer()
    acc = make_accelerator(args)
    torch.manual_seed(args.seed)
    clf = load_classifier(args.classifier, device=acc.device).eval()
    clf.requires_grad_(False)

    # ---- 1. data: the training images, rendered once (uint8)
    images, _ = tinyworld_images(args.train_size, split="train", seed=args.seed, device=acc.device,
                                 progress=args.progress)
    stream = TensorStream(images, batch_size=args.batch_size, seed=args.seed)
    batches = iter(stream)

    # ---- 2. the decoder, with feature normalisation fixed from a fixed probe of the training set
    probe = images[:1024].float() / 255
    feats = extract_features(clf, probe, args.layer)
    dec = DecoderInverter(args.classifier, args.layer, tuple(feats.shape[1:]), image_size=probe.shape[-1],
                          hidden_channels=args.hidden_channels, min_channels=args.min_channels).to(acc.device)
    dec.set_feature_stats(feats)
    dec.train()
    opt = torch.optim.AdamW(dec.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = cosine_lr(opt, warmup=min(100, args.steps // 10), total=args.steps)
    start, earlier_s = 0, 0.0
    if args.resume and (st := load_checkpoint(args.out, modules={"decoder": dec}, optimizer=opt, lr_scheduler=sched)):
        start, earlier_s = st["step"], st["extra"].get("wall_time_s", 0.0)
        stream.load_state_dict(st["extra"]["stream"])
        sched.horizon["total"] = min(args.steps, st["extra"].get("total", args.steps))  # a budget cut is kept
    dec_p, opt = acc.prepare(dec, opt)

    # ---- 3. the loop
    loop = Steps(start, sched.horizon["total"], desc=f"decoder {args.classifier}/{args.layer}",
                 max_minutes=args.max_minutes, lr_scheduler=sched, progress=args.progress)
    for step in loop:
        (x,) = next(batches)
        x = x.to(acc.device).float() / 255
        with torch.no_grad():
            f = extract_features(clf, x, args.layer, batch_size=len(x))
        with acc.accumulate(dec_p), acc.autocast():
            loss, pixel, feature = decoder_loss(acc.unwrap_model(dec_p), clf, args.layer, x, f,
                                                feature_weight=args.feature_weight, feature_batch=args.feature_batch)
            acc.backward(loss)
            acc.clip_grad_norm_(dec_p.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        loop.log(loss=loss.item(), pixel=pixel.item(), feature=feature.item())
        if loop.should_save(step, args.save_every) and acc.is_main_process:
            save_checkpoint(args.out, step=step + 1, modules={"decoder": acc.unwrap_model(dec_p)}, optimizer=opt,
                            lr_scheduler=sched, extra={"stream": stream.state_dict(), "total": loop.total,
                                   "wall_time_s": earlier_s + timer.seconds})
    dec = acc.unwrap_model(dec_p).eval()

    # ---- 4. card and weights
    card = {"config": dec.config,
            "training": {"command": command_line(), "seed": args.seed, "steps": loop.total,
                         "batch_size": args.batch_size, "lr": args.lr, "feature_weight": args.feature_weight,
                         "feature_batch": args.feature_batch,
                         "train_size": args.train_size, "final_loss": round(loss.item(), 5) if loop.total > start else None,
                         "wall_time_s": round(earlier_s + timer.seconds, 1),  # over all resumed runs
                         "device": str(acc.device)}}
    if args.eval_n > 0:
        card["metrics"] = evaluate_card(dec, clf, n=args.eval_n, seed=args.seed)
    if acc.is_main_process:
        dec.save_pretrained(Path(args.out) / "inverter", fp16=False, card=card)
        if args.ship:
            dec.save_pretrained(Path(args.ship) / "inverters" / args.classifier / f"{args.layer}-decoder", fp16=True,
                                card=card)
    print(f"decoder {args.classifier}/{args.layer}: {json.dumps(card.get('metrics', {}))} {timer.seconds} s")
    return dec, card


@torch.no_grad()
def evaluate_card(dec, clf, *, n: int = 256, seed: int = 0) -> dict:
    """Feature cosine, top-1 agreement and PSNR of the decoder on ``n`` held-out test images."""
    from ..metrics import feature_cosine, psnr, topk_agreement

    images, _ = tinyworld_images(n, split="test", seed=seed)
    x = images.float() / 255
    rec = dec.invert_images(x, clf)[:, 0]
    return {"test_images": n,
            "feature_cosine": round(feature_cosine(clf, dec.layer, x, rec).mean().item(), 4),
            "top1_agreement": round(topk_agreement(clf, x, rec, k=(1,))["top1"].mean().item(), 4),
            "psnr": round(psnr(x, rec).mean().item(), 2)}


if __name__ == "__main__":
    main(parse_args())
