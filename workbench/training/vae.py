"""Train the tiny base's ``AutoencoderKL`` (``workbench train-vae``).

    workbench train-vae --out runs/vae --steps 4000 [--resume]

Loss: mean squared reconstruction error plus a small KL term (as SD's VAE, without its adversarial
and perceptual terms, which a 32 px world of flat shapes does not need). At the end the latent
scale is set as SD does: ``scaling_factor = 1 / std(latents)``, and the held-out PSNR is measured.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import (RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, command_line, parse_config,
                     optimiser_step, resume_run, save_if_due, start_run, tinyworld_images)

VAL_IMAGES = 512  # held-out validation images for the card's PSNR
SCALE_IMAGES = 4096  # training images whose latents set the scaling factor


@dataclass(kw_only=True)
class VAEConfig(RunConfig):
    """What ``workbench train-vae`` takes: one field per flag (``--kl-weight`` is ``kl_weight``)."""

    # RunConfig's fields with this script's defaults
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3

    train_images: int = 50_000  # tiny-world training images, rendered once into memory
    kl_weight: float = 1e-6  # weight of the KL term against the reconstruction MSE
    widths: tuple[int, ...] = (32, 64)  # VAE block widths; one fewer than their number is the count of 2x
    # downsamplings


def parse_args(argv=None) -> VAEConfig:
    return parse_config(VAEConfig, argv, prog="workbench train-vae", description=__doc__)


@torch.no_grad()
def psnr(vae, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean PSNR (dB) of VAE reconstructions of ``images`` ``[N, 3, H, W]`` in [0, 1] (posterior mode)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    vals = []
    dev = next(vae.parameters()).device
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].to(dev)
        rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
        vals.append(peak_signal_noise_ratio(rec, x, data_range=1.0, reduction="none", dim=(1, 2, 3)))
    return torch.cat(vals).mean().item()


def train(config: VAEConfig, acc, vae, images: torch.Tensor) -> tuple[torch.nn.Module, Steps]:
    """The training loop on uint8 ``images`` ``[N, 3, H, W]`` (resumed with ``config.resume``); returns the trained
    VAE (unwrapped, in eval mode) and the finished loop."""
    opt, sched = adamw_with_schedule(vae.parameters(), config, weight_decay=0.0)
    stream = TensorStream(images, batch_size=config.batch_size, seed=config.seed)
    state = resume_run(config, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched, stream=stream)
    vae, opt = acc.prepare(vae, opt)
    it = iter(stream)
    loop = Steps(state["step"] if state else 0, config.steps, desc="vae", max_minutes=config.max_minutes,
                 lr_scheduler=sched, progress=config.progress)
    vae.train()
    for step in loop:
        (x,) = next(it)
        x = x.float() / 255 * 2 - 1
        with acc.accumulate(vae):
            post = acc.unwrap_model(vae).encode(x).latent_dist
            rec = acc.unwrap_model(vae).decode(post.sample()).sample
            mse = F.mse_loss(rec, x)
            optimiser_step(acc, mse + config.kl_weight * post.kl().mean(), vae, opt, sched)
        loop.log(mse=mse.item())
        save_if_due(loop, step, acc, config, modules={"vae": acc.unwrap_model(vae)}, optimizer=opt,
                    lr_scheduler=sched, extra={"stream": stream.state_dict()})
    return acc.unwrap_model(vae).eval(), loop


def main(config: VAEConfig) -> dict:
    """Train, set the latent scale, measure the held-out PSNR, write ``config.out/vae`` with its card."""
    from diffusers import AutoencoderKL
    from ..diffusion import tiny_vae_config

    timer = Timer()
    config, acc = start_run(config)
    vae_config = tiny_vae_config(widths=config.widths)
    vae = AutoencoderKL(**vae_config)
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=acc.device,
                                 progress=config.progress)
    vae, loop = train(config, acc, vae, images)
    with torch.no_grad():  # the latent scale, as SD sets it: unit-variance latents for the diffusion model
        z = torch.cat([vae.encode(images[s:s + 512].float() / 255 * 2 - 1).latent_dist.mode()
                       for s in range(0, min(len(images), SCALE_IMAGES), 512)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    held, _ = tinyworld_images(VAL_IMAGES, split="val", seed=config.seed, device=acc.device)
    val_psnr = psnr(vae, held.float() / 255)
    card = {"config": vae_config, "scaling_factor": vae.config.scaling_factor,
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "wall_time_s": timer.seconds, "device": str(acc.device)},
            "metrics": {"val_psnr_db": round(val_psnr, 2), "val_images": VAL_IMAGES}}
    if acc.is_main_process:
        vae.save_pretrained(Path(config.out) / "vae")
        (Path(config.out) / "vae" / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"vae: val PSNR {val_psnr:.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}, {timer.seconds} s")
    return card


if __name__ == "__main__":
    main(parse_args())
