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

import argparse
import copy
import json
from pathlib import Path

import torch

from .common import (Steps, Timer, TensorStream, add_common_args, cached_tensor, command_line, cosine_lr,
                     image_folder_stream, init_card, load_checkpoint, make_accelerator, save_checkpoint,
                     state_fingerprint, tinyworld_images)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench train-inverter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", required=True, help="tinyworld-cnn, tinyworld-vit or any timm name")
    p.add_argument("--classifier-checkpoint", default=None, help="local weights for a timm classifier")
    p.add_argument("--layer", required=True)
    p.add_argument("--base", default="tinyworld-base", help="shipped name, local folder or hub id")
    p.add_argument("--data", default="tinyworld", help="'tinyworld' or an ImageFolder directory")
    p.add_argument("--train-size", type=int, default=50_000, help="tiny-world training images")
    p.add_argument("--pooling", default="none", choices=["none", "mean"])
    p.add_argument("--hidden-channels", type=int, default=64)
    p.add_argument("--drop-prob", type=float, default=0.15, help="condition dropout (features zeroed, null prompt)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--eval-n", type=int, default=256, help="held-out test images for the card's metrics")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--feature-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="tiny world: compute the classifier's features of the fixed training set once, batched, "
                        "instead of in every step (default: on)")
    p.add_argument("--cache-dir", default=None,
                   help="where cached latents and features are kept across runs and --resume (default: OUT/cache; "
                        "'none': memory only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the ControlNet and the UNet (minutes of compile time; pays off on long runs)")
    p.add_argument("--init-from", default=None,
                   help="start from this saved inverter's ControlNet (e.g. after retraining the classifier); the "
                        "feature normalisation is measured afresh")
    return add_common_args(p, steps=6000, batch_size=128, lr=3e-4, mixed_precision="auto").parse_args(argv)


def train_featinv(*, classifier: str, layer: str, base: str = "tinyworld-base", data: str = "tinyworld",
                  steps: int = 6000, batch_size: int = 128, lr: float = 3e-4, out: str | Path, resume: bool = False,
                  pooling: str = "none", seed: int = 0, device: str = "auto", **kwargs):
    """Python entry point of ``workbench train-inverter``; returns the trained :class:`FeatInv` (EMA weights).

    Example:
        >>> inv = wb.train_featinv(classifier="tinyworld-cnn", layer="stages.3", steps=50, out=tmp_path)
    """
    argv = ["--classifier", classifier, "--layer", layer, "--base", str(base), "--data", str(data),
            "--steps", str(steps), "--batch-size", str(batch_size), "--lr", str(lr), "--out", str(out),
            "--pooling", pooling, "--seed", str(seed), "--device", device]
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv += [flag] if v else ([] if k != "progress" else ["--no-progress"])
        else:
            argv += [flag, str(v)]
    if resume:
        argv.append("--resume")
    return main(parse_args(argv))[0]


def main(args):
    from ..diffusion import DiffusionBase
    from ..inverters.featinv import FeatInv
    from ..models import classifier_view
    from ..hooks import extract_features
    from ..models import load_classifier
    from .base import ema_update, encode_all

    timer = Timer()
    acc = make_accelerator(args)
    torch.manual_seed(args.seed)
    if acc.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    clf = load_classifier(args.classifier, checkpoint_path=args.classifier_checkpoint, device=acc.device).eval()
    clf.requires_grad_(False)
    base = DiffusionBase.from_pretrained(args.base, device=acc.device)
    size = base.image_size

    # ---- 1. data: uint8 images (tiny world: latents and features computed once) or an image folder
    if args.data == "tinyworld":
        images, _ = tinyworld_images(args.train_size, split="train", seed=args.seed, device=acc.device,
                                     progress=args.progress)
        cache_dir = None if args.cache_dir == "none" else Path(args.cache_dir or Path(args.out) / "cache")
        data_key = f"tinyworld/{args.train_size}/{args.seed}"
        latents = cached_tensor(cache_dir, "latents", state_fingerprint(base.vae or torch.nn.Identity(),
                                                                          extra=f"{data_key}/{base.scaling_factor}"),
                                lambda: encode_all(base, images)).to(acc.device)
        tensors = [images, latents]
        if args.feature_cache:
            key = state_fingerprint(clf, extra=f"{data_key}/{args.layer}/{size}")
            feats_all = cached_tensor(cache_dir, f"features-{args.layer}", key,
                                      lambda: extract_all(clf, images, args.layer, progress=args.progress), half=True)
            tensors.append(feats_all.to(acc.device))
        stream = TensorStream(*tensors, batch_size=args.batch_size, seed=args.seed)
        batches = iter(stream)
    else:
        stream = None
        folder = image_folder_stream(args.data, image_size=size, batch_size=args.batch_size, seed=args.seed,
                                     num_workers=args.num_workers)
        batches = ((x, None) for x, _ in folder)

    def to_float(x):
        return x.float() / 255 if x.dtype == torch.uint8 else x.float()

    # ---- 2. the inverter, with feature normalisation fixed from a first batch
    probe = to_float(next(batches)[0].to(acc.device))
    feats = extract_features(clf, classifier_view(probe, clf), args.layer)
    inv = FeatInv(base, args.classifier, args.layer, tuple(feats.shape[1:]), args.pooling,
                  hidden_channels=args.hidden_channels).to(acc.device)
    if args.init_from:
        from ..weights import load_state

        state = load_state(Path(args.init_from) / "controlnet.safetensors")
        try:
            inv.controlnet.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SystemExit(f"--init-from {args.init_from} does not fit a {args.classifier}/{args.layer} inverter "
                             f"with --hidden-channels {args.hidden_channels}: {str(e).splitlines()[0]}") from e
    inv.conditioning.set_feature_stats(feats)
    cnet = inv.controlnet
    cnet.requires_grad_(True).train()
    ema = copy.deepcopy(cnet).requires_grad_(False).eval()
    opt = torch.optim.AdamW(cnet.parameters(), lr=args.lr, weight_decay=0.01)
    sched = cosine_lr(opt, warmup=min(200, args.steps // 10), total=args.steps)
    start = 0
    if args.resume and (st := load_checkpoint(args.out, modules={"controlnet": cnet, "ema": ema}, optimizer=opt,
                                              lr_scheduler=sched)):
        start = st["step"]
        print(f"resumed from step {start} of {args.out}", flush=True)
        if stream is not None:
            stream.load_state_dict(st["extra"]["stream"])
    cnet_p, opt = acc.prepare(cnet, opt)
    inv.controlnet = cnet_p
    unet = base.unet
    if args.compile:  # the same modules and weights; only the forward and backward are compiled
        inv.controlnet = torch.compile(cnet_p)
        base.unet = torch.compile(unet)
    noise_sched = base.make_scheduler("ddpm")
    g = torch.Generator(acc.device).manual_seed(args.seed + start)
    loop = Steps(start, args.steps, desc=f"FeatInv {args.classifier}/{args.layer}", max_minutes=args.max_minutes, lr_scheduler=sched,
                 progress=args.progress)
    losses = []
    for step in loop:
        x, z0, *cached = next(batches)
        with torch.no_grad():  # 3. features and latents, batched, frozen models (or cached)
            if cached:
                f = cached[0].float()
            else:
                x = to_float(x.to(acc.device))
                f = extract_features(clf, classifier_view(x, clf), args.layer, batch_size=len(x))
            z0 = base.encode(x) if z0 is None else z0
        with acc.accumulate(cnet_p), acc.autocast():
            loss = inv.training_loss(z0, f, noise_scheduler=noise_sched, generator=g, drop_prob=args.drop_prob)
            acc.backward(loss)
            acc.clip_grad_norm_(cnet_p.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        ema_update(ema, acc.unwrap_model(cnet_p), args.ema if step > 200 else 0.0)
        losses.append(loss.item())
        loop.log(loss=loss.item())
        if loop.should_save(step, args.save_every):
            if acc.is_main_process:
                save_checkpoint(args.out, step=step + 1, modules={"controlnet": acc.unwrap_model(cnet_p), "ema": ema},
                                optimizer=opt, lr_scheduler=sched,
                                extra={"stream": stream.state_dict()} if stream is not None else {})
    inv.controlnet = ema
    base.unet = unet
    inv.eval()
    card = {"config": inv.config,
            "training": {"command": command_line(), "seed": args.seed, "steps": loop.total,
                         "batch_size": args.batch_size, "lr": args.lr, "drop_prob": args.drop_prob, "ema": args.ema,
                         "data": args.data, "mixed_precision": args.mixed_precision, "compile": args.compile,
                         "init_from": args.init_from,
                         "wall_time_s": timer.seconds, "device": str(acc.device),
                         "loss_curve": _curve(losses)}}
    if args.init_from and (prev := init_card(Path(args.init_from) / "card.json")):  # the starting weights' card
        card["training"]["init_card"] = prev
    inv.card = card
    if args.data == "tinyworld" and args.eval_n > 0:
        card["metrics"] = evaluate_card(inv, clf, n=args.eval_n, seed=args.seed)
    if acc.is_main_process:
        name = f"{args.layer}" + ("-pooled" if args.pooling == "mean" else "")
        inv.save_pretrained(Path(args.out) / "inverter", fp16=False, card=card)
        if args.ship:
            inv.save_pretrained(Path(args.ship) / "inverters" / args.classifier / name, fp16=True, card=card)
    print(f"FeatInv {args.classifier}/{args.layer} pooling={args.pooling}: {json.dumps(card.get('metrics', {}))} "
          f"{timer.seconds} s")
    return inv, card


@torch.no_grad()
def extract_all(clf, images_u8: torch.Tensor, layer: str, *, batch: int = 512, progress: bool = False) -> torch.Tensor:
    """The classifier's maps at ``layer`` for every image, batched, exactly as a training step computes them:
    ``uint8 [N, 3, H, W]`` -> ``float [N, C, h, w]``."""
    from tqdm.auto import tqdm

    from ..models import classifier_view
    from ..hooks import extract_features

    out = []
    for s in tqdm(range(0, len(images_u8), batch), desc=f"features {layer}", disable=not progress):
        x = images_u8[s:s + batch].float() / 255
        out.append(extract_features(clf, classifier_view(x, clf), layer, batch_size=len(x)).cpu())
    return torch.cat(out)


def _curve(losses: list[float], points: int = 50) -> list[list[float]]:
    """``[[step, mean loss of the window]]``: the loss of this run (resumed runs: since the resume), thinned."""
    if not losses:
        return []
    w = max(1, len(losses) // points)
    return [[i + w, round(sum(losses[i:i + w]) / len(losses[i:i + w]), 5)] for i in range(0, len(losses), w)]


@torch.no_grad()
def evaluate_card(inv, clf, *, n: int = 256, seed: int = 0, **invert_kwargs) -> dict:
    """Feature cosine and top-1 agreement of one sample per image on ``n`` held-out test images."""
    from ..metrics import feature_cosine, topk_agreement

    images, _ = tinyworld_images(n, split="test", seed=seed)
    x = images.float() / 255
    rec = inv.invert_images(x, clf, num_samples=1, seed=seed, progress=False, **invert_kwargs)[:, 0]
    cos = feature_cosine(clf, inv.layer, x, rec)
    agree = topk_agreement(clf, x, rec, k=(1,))["top1"]
    from .. import inverters

    return {"test_images": n, "feature_cosine": round(cos.mean().item(), 4),
            "top1_agreement": round(agree.float().mean().item(), 4),
            "sampler": inverters.featinv.sampler_description(**invert_kwargs)}


if __name__ == "__main__":
    main(parse_args())
