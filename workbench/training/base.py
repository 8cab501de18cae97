"""Train the tiny-world diffusion base's UNet (``workbench train-base``).

    workbench train-base --vae runs/vae/vae --out runs/base --steps 8000 [--resume]

The base is trained unconditionally on the tiny world, with SD's interface: the UNet's
cross-attention always receives one fixed "prompt" embedding (a seeded random vector), and 10% of
the time the null embedding (zeros), so that prompt-vs-null guidance is defined as in SD. The VAE
latents of the whole training set are encoded once, batched, and cached in memory, so each step
runs only the UNet. An EMA of the weights is what gets saved. ``--init-from DIR`` continues from a
saved base (``data/tinyworld-base``, say): its UNet config and weights are the start, and the card
records the starting card.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import (Steps, Timer, TensorStream, add_common_args, command_line, cosine_lr, init_card,
                     load_checkpoint, make_accelerator, save_checkpoint, tinyworld_images)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench train-base", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", default=None, help="folder of a trained AutoencoderKL; omit for a pixel-space base")
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--widths", default="48,96,96", help="UNet block widths")
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet (and attention) layers per UNet block")
    p.add_argument("--null-prob", type=float, default=0.1, help="fraction of steps with the null prompt")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--min-timestep", type=int, default=0,
                   help="train only on timesteps >= this (of 1000): a fine-tune of the noisy, layout-deciding phase. "
                        "Default 0: all timesteps")
    p.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction"],
                   help="what the UNet predicts: the noise (SD 1.x) or v (SD 2.x; better conditioned at high noise, "
                        "where the layout is decided). Default: epsilon, or that of the --init-from base, which "
                        "this flag may switch")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their choice): each step's loss is "
                        "weighted by min(SNR, gamma)/SNR, which takes weight off the nearly clean timesteps. "
                        "Default: plain MSE")
    p.add_argument("--eval-classifiers", default=None,
                   help="data folder with tinyworld-cnn/vit to measure sample quality for the card")
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--eval-only", default=None, help="a saved base folder: measure its samples and update its card")
    p.add_argument("--init-from", default=None,
                   help="a saved base folder (unet/ inside) to continue from; its UNet config replaces --widths and "
                        "--layers-per-block")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (minutes of compile time; pays off on long runs)")
    p = add_common_args(p, steps=8000, batch_size=128, lr=1e-3, mixed_precision="auto")
    next(a for a in p._actions if a.dest == "out").required = False  # --eval-only writes into the folder it measures
    args = p.parse_args(argv)
    if args.out is None and args.eval_only is None:
        p.error("the following arguments are required: --out (or --eval-only BASE_FOLDER)")
    return args


def fixed_prompt_embeds(dim: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny base's prompt embedding ``[1, 1, dim]`` (seeded, unit RMS) and null embedding (zeros)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(1, 1, dim, generator=g)
    return p / p.pow(2).mean().sqrt(), torch.zeros(1, 1, dim)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, noise_sched,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """The denoising loss: MSE of ``pred`` against ``target`` (both ``[B, C, h, w]``; ``t``: ``[B]``), where the
    target is the noise or ``v``, as :func:`workbench.diffusion.training_target` gives it for ``noise_sched``.

    With ``snr_gamma``, each sample's MSE is weighted by ``min(SNR(t), gamma) / SNR(t)`` for epsilon-prediction and
    ``min(SNR(t), gamma) / (SNR(t) + 1)`` for v-prediction (Min-SNR-gamma, the weighting of diffusers' training
    scripts, with ``diffusers.training_utils.compute_snr``).
    """
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_sched, t)
    if noise_sched.config.prediction_type == "v_prediction":
        weight = snr.clamp(max=snr_gamma) / (snr + 1)
    else:
        weight = torch.where(snr > snr_gamma, snr_gamma / snr, torch.ones_like(snr))  # safe where SNR is 0
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample * weight).mean()


@torch.no_grad()
def encode_all(base, images_u8: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Scaled latents of every image, batched: ``uint8 [N, 3, H, W]`` -> ``float [N, C, h, w]``."""
    return torch.cat([base.encode(images_u8[s:s + batch].float() / 255) for s in range(0, len(images_u8), batch)])


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)


@torch.no_grad()
def sample_quality(base, cnn, vit, *, n: int = 512, steps: int = 20, scheduler: str = "dpm++", seed: int = 0,
                   progress: bool = False) -> dict:
    """Quality of unconditional samples, as the base's card reports it.

    Returns:
        ``confident_fraction``: share of ``n`` samples to which ``cnn`` assigns some class with probability > 0.9;
        ``fd_samples_vs_real``: Fréchet distance between the samples and ``n`` real test images in ``vit``'s pooled
        features; ``fd_real_vs_real``: the same between two disjoint real sets (the noise floor).
    """
    from ..metrics import frechet_distance, pooled_extractor

    device = base.prompt_embeds.device
    samples = base.sample(n, num_inference_steps=steps, scheduler=scheduler, seed=seed, progress=progress)
    probs = torch.cat([cnn(samples[s:s + 256].to(device)).softmax(-1).cpu() for s in range(0, n, 256)])
    real_a, _ = tinyworld_images(n, split="test", seed=seed)
    real_b, _ = tinyworld_images(2 * n, split="val", seed=seed)
    ext = pooled_extractor(vit)
    fd_s = frechet_distance(real_a.float() / 255, samples, ext)
    fd_r = frechet_distance(real_a.float() / 255, real_b[n:].float() / 255, ext)
    return {"samples": n, "sampler": f"{scheduler} {steps} steps",
            "confident_fraction": round((probs.max(-1).values > 0.9).float().mean().item(), 4),
            "fd_samples_vs_real": round(fd_s, 3), "fd_real_vs_real": round(fd_r, 3),
            "class_histogram": torch.bincount(probs.argmax(-1), minlength=probs.shape[1]).tolist()}


def init_unet(path: str | Path, ucfg: dict, *, latent_ch: int, size: int):
    """The fp32 UNet of a saved base folder, checked against the latent shape this run trains on."""
    from diffusers import UNet2DConditionModel

    folder = Path(path) / "unet"
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--init-from {path}: no UNet there ({folder / 'config.json'} is missing); pass a saved base "
                         "folder such as data/tinyworld-base or RUN/tinyworld-base")
    unet = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32)
    got = (unet.config.in_channels, unet.config.sample_size, unet.config.cross_attention_dim)
    want = (latent_ch, size, ucfg["cross_attention_dim"])
    if got != want:
        raise SystemExit(f"--init-from {path}: its UNet takes (channels, size, cross-attention dim) {got}, this run "
                         f"trains on {want}; pass the --vae the base was trained with (or none for a pixel base)")
    return unet


def init_prediction_type(path: str | Path) -> str:
    """The ``prediction_type`` in a saved base folder's scheduler config (``"epsilon"`` where it has none)."""
    f = Path(path) / "scheduler" / "scheduler_config.json"
    return json.loads(f.read_text()).get("prediction_type", "epsilon") if f.is_file() else "epsilon"


def evaluate_saved(args, device) -> dict:
    """Measure a saved base's sample quality with the classifiers in ``--eval-classifiers``; update its card."""
    from ..diffusion import DiffusionBase
    from ..models import load_shipped_classifier

    if not args.eval_classifiers:
        raise SystemExit("--eval-only needs --eval-classifiers DIR (a folder with tinyworld-cnn and tinyworld-vit)")
    path = Path(args.eval_only)
    base = DiffusionBase.from_pretrained(path, device=device)
    cnn = load_shipped_classifier("tinyworld-cnn", device=device, root=args.eval_classifiers)
    vit = load_shipped_classifier("tinyworld-vit", device=device, root=args.eval_classifiers)
    metrics = sample_quality(base, cnn, vit, n=args.eval_samples, seed=args.seed, progress=args.progress)
    card = json.loads((path / "card.json").read_text())
    card["metrics"] = metrics
    (path / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"base: {json.dumps(metrics)}")
    return card


def main(args) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from ..diffusion import DiffusionBase, tiny_scheduler_config, tiny_unet_config, training_target

    timer = Timer()
    acc = make_accelerator(args)
    torch.manual_seed(args.seed)
    if args.eval_only:
        return evaluate_saved(args, acc.device)
    vae = AutoencoderKL.from_pretrained(args.vae) if args.vae else None
    widths = tuple(int(w) for w in args.widths.split(","))
    latent_ch = vae.config.latent_channels if vae is not None else 3
    size = 32 // (2 ** (len(vae.config.block_out_channels) - 1)) if vae is not None else 32
    if not 0 <= args.min_timestep < 1000:
        raise SystemExit(f"--min-timestep {args.min_timestep}: must be in [0, 1000) (the scheduler's 1000 steps)")
    if args.snr_gamma is not None and not args.snr_gamma > 0:
        raise SystemExit(f"--snr-gamma {args.snr_gamma}: must be > 0 (5 is the paper's choice), or left out for "
                         "plain MSE")
    if args.layers_per_block < 1:
        raise SystemExit(f"--layers-per-block {args.layers_per_block}: needs at least 1")
    ucfg = tiny_unet_config(sample_size=size, in_channels=latent_ch, widths=widths, layers_per_block=args.layers_per_block)
    if args.init_from:
        unet = init_unet(args.init_from, ucfg, latent_ch=latent_ch, size=size)
        widths = tuple(unet.config.block_out_channels)
        ucfg = tiny_unet_config(sample_size=size, in_channels=latent_ch, widths=widths,
                                layers_per_block=unet.config.layers_per_block)
    else:
        unet = UNet2DConditionModel(**ucfg)
    if args.prediction_type is None:
        args.prediction_type = init_prediction_type(args.init_from) if args.init_from else "epsilon"
    prompt, null = fixed_prompt_embeds(ucfg["cross_attention_dim"])
    base = DiffusionBase(unet, tiny_scheduler_config(args.prediction_type), prompt, null, vae, image_size=32,
                         name="tinyworld-base")
    base.unet.requires_grad_(True).train()
    base.to(acc.device)
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    noise_sched = base.make_scheduler("ddpm")
    images, _ = tinyworld_images(args.train_size, split="train", seed=args.seed, device=acc.device,
                                 progress=args.progress)
    latents = encode_all(base, images)
    del images
    stream = TensorStream(latents, batch_size=args.batch_size, seed=args.seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    sched = cosine_lr(opt, warmup=min(200, args.steps // 10), total=args.steps)
    start = 0
    if args.resume and (st := load_checkpoint(args.out, modules={"unet": unet, "ema": ema}, optimizer=opt,
                                              lr_scheduler=sched)):
        start = st["step"]
        print(f"resumed from step {start} of {args.out}", flush=True)
        stream.load_state_dict(st["extra"]["stream"])
    unet_p, opt = acc.prepare(unet, opt)
    denoiser = torch.compile(unet_p) if args.compile else unet_p
    it = iter(stream)
    g = torch.Generator(acc.device).manual_seed(args.seed + start)
    loop = Steps(start, args.steps, desc="base", max_minutes=args.max_minutes, lr_scheduler=sched,
                 progress=args.progress)
    for step in loop:
        (z0,) = next(it)
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g, device=z0.device)
        t = torch.randint(args.min_timestep, noise_sched.config.num_train_timesteps, (b,), generator=g,
                          device=z0.device)
        zt = noise_sched.add_noise(z0, noise, t)
        drop = torch.rand(b, generator=g, device=z0.device) < args.null_prob
        with acc.accumulate(unet_p):
            pred = denoiser(zt, t, encoder_hidden_states=base.embeds(b, null=drop)).sample
            loss = diffusion_loss(pred, training_target(noise_sched, z0, noise, t), t, noise_sched, args.snr_gamma)
            acc.backward(loss)
            acc.clip_grad_norm_(unet_p.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        ema_update(ema, acc.unwrap_model(unet_p), args.ema if step > 200 else 0.0)
        loop.log(loss=loss.item())
        if loop.should_save(step, args.save_every):
            if acc.is_main_process:
                save_checkpoint(args.out, step=step + 1, modules={"unet": acc.unwrap_model(unet_p), "ema": ema},
                                optimizer=opt, lr_scheduler=sched, extra={"stream": stream.state_dict()})
    base.unet = ema
    base.requires_grad_(False).eval()
    card = {"name": "tinyworld-base", "space": "latent" if vae is not None else "pixel",
            "latent_shape": list(base.latent_shape), "unet_config": {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in ucfg.items()},
            "parameters_unet": sum(p.numel() for p in ema.parameters()),
            "training": {"command": command_line(), "seed": args.seed, "steps": loop.total,
                         "batch_size": args.batch_size, "train_images": args.train_size, "ema": args.ema,
                         "null_prob": args.null_prob, "snr_gamma": args.snr_gamma,
                         "min_timestep": args.min_timestep, "prediction_type": args.prediction_type,
                         "lr": args.lr, "init_from": args.init_from,
                         "mixed_precision": args.mixed_precision, "compile": args.compile,
                         "wall_time_s": timer.seconds, "device": str(acc.device)}}
    prev = init_card(Path(args.init_from) / "card.json", also=("vae",)) if args.init_from else None
    start_vae = prev.pop("vae", None) if prev else None
    if prev:  # the starting weights' card
        card["training"]["init_card"] = prev
    if vae is not None and (Path(args.vae) / "card.json").is_file():
        card["vae"] = json.loads((Path(args.vae) / "card.json").read_text())
    elif vae is not None and start_vae and Path(args.vae).resolve() == (Path(args.init_from) / "vae").resolve():
        card["vae"] = start_vae  # the VAE of the saved base we started from: its card lives in the base's card
    if args.eval_classifiers:
        from ..models import load_shipped_classifier

        cnn = load_shipped_classifier("tinyworld-cnn", device=acc.device, root=args.eval_classifiers)
        vit = load_shipped_classifier("tinyworld-vit", device=acc.device, root=args.eval_classifiers)
        card["metrics"] = sample_quality(base, cnn, vit, n=args.eval_samples, seed=args.seed,
                                         progress=args.progress)
    if acc.is_main_process:
        base.save_pretrained(Path(args.out) / "tinyworld-base", fp16=False, card=card)
        if args.ship:
            base.save_pretrained(Path(args.ship) / "tinyworld-base", fp16=True, card=card)
    print(f"base: {json.dumps(card.get('metrics', {}))} {timer.seconds} s")
    return card


if __name__ == "__main__":
    main(parse_args())
