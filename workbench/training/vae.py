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

from ..errors import ArgumentValueError
from .common import (RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, check_resume, command_line,
                     loop_generator, optimiser_step, parse_config, process_of, resume_run, save_if_due, start_run,
                     tinyworld_images)

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

    run_keys = ("widths",)
    positive = RunConfig.positive + ("train_images",)

    def check(self) -> None:
        super().check()
        if not (isinstance(self.kl_weight, (int, float)) and self.kl_weight >= 0):
            raise ArgumentValueError(f"--kl-weight {self.kl_weight!r}: must be >= 0")
        if not self.widths or min(self.widths) < 1:
            raise ArgumentValueError(f"--widths {','.join(map(str, self.widths))}: needs one or more widths >= 1")


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


class VAEStep(torch.nn.Module):
    """The VAE's training forward as one module, ``x -> (KL per item [B], reconstruction)``: encode, sample the
    posterior with ``generator``, decode. Under several processes DDP wraps it, so its gradients are averaged."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        post = self.vae.encode(x).latent_dist
        return post.kl(), self.vae.decode(post.sample(generator=generator)).sample


def train(config: VAEConfig, acc, vae, images: torch.Tensor) -> tuple[torch.nn.Module, Steps]:
    """The training loop on uint8 ``images`` ``[N, 3, H, W]`` (resumed with ``config.resume``); returns the trained
    VAE (unwrapped, in eval mode) and the finished loop. Each process trains on its own share of every global batch
    and draws its own posterior samples."""
    opt, sched = adamw_with_schedule(vae.parameters(), config, weight_decay=0.0)
    rank, world = process_of(acc)
    stream = TensorStream(images, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    state = resume_run(config, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched, stream=stream, acc=acc)
    g = loop_generator(config, acc, state)
    step_p, opt = acc.prepare(VAEStep(vae), opt)
    it = iter(stream)
    loop = Steps(state["step"] if state else 0, config.steps, desc="vae", max_minutes=config.max_minutes,
                 lr_scheduler=sched, progress=config.progress, acc=acc)
    step_p.train()
    for step in loop:
        (x,) = next(it)
        x = x.float() / 255 * 2 - 1
        with acc.accumulate(step_p):
            kl, rec = step_p(x, generator=g)
            mse = F.mse_loss(rec, x)
            optimiser_step(acc, mse + config.kl_weight * kl.mean(), step_p, opt, sched)
        loop.log(mse=mse.item())
        save_if_due(loop, step, acc, config, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched,
                    extra={"stream": stream.state_dict()}, generator=g)
    return vae.eval(), loop


def main(config: VAEConfig) -> dict:
    """Train, set the latent scale, measure the held-out PSNR, write ``config.out/vae`` with its card (the main
    process; the others return the card without metrics)."""
    from diffusers import AutoencoderKL
    from ..diffusion import tiny_vae_config

    check_resume(config, what="the VAE")
    timer = Timer()
    config, acc = start_run(config)
    vae_config = tiny_vae_config(widths=config.widths)
    vae = AutoencoderKL(**vae_config)
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=acc.device,
                                 progress=config.progress and acc.is_main_process)
    vae, loop = train(config, acc, vae, images)
    with torch.no_grad():  # the latent scale, as SD sets it: unit-variance latents for the diffusion model
        z = torch.cat([vae.encode(images[s:s + 512].float() / 255 * 2 - 1).latent_dist.mode()
                       for s in range(0, min(len(images), SCALE_IMAGES), 512)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    card = {"config": vae_config, "scaling_factor": vae.config.scaling_factor,
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "processes": acc.num_processes,
                         "wall_time_s": timer.seconds, "device": str(acc.device)}}
    if acc.is_main_process:
        held, _ = tinyworld_images(VAL_IMAGES, split="val", seed=config.seed, device=acc.device)
        val_psnr = psnr(vae, held.float() / 255)
        card["metrics"] = {"val_psnr_db": round(val_psnr, 2), "val_images": VAL_IMAGES}
        vae.save_pretrained(Path(config.out) / "vae")
        (Path(config.out) / "vae" / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"vae: val PSNR {val_psnr:.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}, {timer.seconds} s")
    acc.wait_for_everyone()  # the weights are there for every process to read
    return card


if __name__ == "__main__":
    main(parse_args())
