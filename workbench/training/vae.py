"""Train the tiny base's ``AutoencoderKL`` (``workbench train-vae``).

    workbench train-vae --out runs/vae --steps 4000 [--resume]

Loss: mean squared reconstruction error plus a small KL term (as SD's VAE, without its adversarial
and perceptual terms, which a 32 px world of flat shapes does not need). At the end the latent
scale is set as SD does: ``scaling_factor = 1 / std(latents)``, and the held-out PSNR is measured.
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
    p = argparse.ArgumentParser(prog="workbench train-vae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--widths", default="32,64", help="VAE block widths; len-1 = number of 2x downsamplings")
    return add_common_args(p, steps=4000, batch_size=64, lr=1e-3).parse_args(argv)


@torch.no_grad()
def psnr(vae, images: torch.Tensor, batch: int = 256) -> float:
    """Mean PSNR (dB) of VAE reconstructions of ``images`` ``[N, 3, H, W]`` in [0, 1] (posterior mode)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    vals = []
    dev = next(vae.parameters()).device
    for s in range(0, len(images), batch):
        x = images[s:s + batch].to(dev)
        rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
        vals.append(peak_signal_noise_ratio(rec, x, data_range=1.0, reduction="none", dim=(1, 2, 3)))
    return torch.cat(vals).mean().item()


def main(args) -> dict:
    from diffusers import AutoencoderKL
    from ..diffusion import tiny_vae_config

    timer = Timer()
    acc = make_accelerator(args)
    torch.manual_seed(args.seed)
    config = tiny_vae_config(widths=tuple(int(w) for w in args.widths.split(",")))
    vae = AutoencoderKL(**config)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = cosine_lr(opt, warmup=min(200, args.steps // 10), total=args.steps)
    images, _ = tinyworld_images(args.train_size, split="train", seed=args.seed, device=acc.device,
                                 progress=args.progress)
    stream = TensorStream(images, batch_size=args.batch_size, seed=args.seed)
    start = 0
    if args.resume and (st := load_checkpoint(args.out, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched)):
        start = st["step"]
        print(f"resumed from step {start} of {args.out}", flush=True)
        stream.load_state_dict(st["extra"]["stream"])
    vae, opt = acc.prepare(vae, opt)
    it = iter(stream)
    loop = Steps(start, args.steps, desc="vae", max_minutes=args.max_minutes, lr_scheduler=sched,
                 progress=args.progress)
    vae.train()
    for step in loop:
        (x,) = next(it)
        x = x.float() / 255 * 2 - 1
        with acc.accumulate(vae):
            post = acc.unwrap_model(vae).encode(x).latent_dist
            rec = acc.unwrap_model(vae).decode(post.sample()).sample
            mse = F.mse_loss(rec, x)
            loss = mse + args.kl_weight * post.kl().mean()
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        loop.log(mse=mse.item())
        if loop.should_save(step, args.save_every):
            if acc.is_main_process:
                save_checkpoint(args.out, step=step + 1, modules={"vae": acc.unwrap_model(vae)}, optimizer=opt,
                                lr_scheduler=sched, extra={"stream": stream.state_dict()})
    vae = acc.unwrap_model(vae).eval()
    # latent scale, as SD: unit variance latents for the diffusion model
    with torch.no_grad():
        z = torch.cat([vae.encode(images[s:s + 512].float() / 255 * 2 - 1).latent_dist.mode()
                       for s in range(0, min(len(images), 4096), 512)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    held, _ = tinyworld_images(512, split="val", seed=args.seed, device=acc.device)
    val_psnr = psnr(vae, held.float() / 255)
    card = {"config": config, "scaling_factor": vae.config.scaling_factor,
            "training": {"command": command_line(), "seed": args.seed, "steps": loop.total,
                         "batch_size": args.batch_size, "wall_time_s": timer.seconds, "device": str(acc.device)},
            "metrics": {"val_psnr_db": round(val_psnr, 2), "val_images": 512}}
    if acc.is_main_process:
        vae.save_pretrained(Path(args.out) / "vae")
        (Path(args.out) / "vae" / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"vae: val PSNR {val_psnr:.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}, {timer.seconds} s")
    return card


if __name__ == "__main__":
    main(parse_args())
