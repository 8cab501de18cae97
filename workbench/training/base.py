"""Train the tiny-world diffusion base's UNet (``workbench train-base``).

    workbench train-base --vae runs/vae/vae --out runs/base --steps 8000 [--resume]

The base is trained unconditionally on the tiny world, with SD's interface: the UNet's
cross-attention always receives one fixed "prompt" embedding (a seeded random vector), and 10% of
the time the null embedding (zeros), so that prompt-vs-null guidance is defined as in SD. The VAE
latents of the whole training set are encoded once, batched, and cached in memory, so each step
runs only the UNet. An EMA of the weights is what gets saved. ``--init-from DIR`` continues from a
saved base (``data/tinyworld-base``, say): its UNet config and weights are the start, and the card
records the starting card. ``--eval-classifiers DATA`` measures the new base's samples for its card;
``python -m workbench.training.cards --base`` re-measures a saved one.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import ArgumentValueError
from .common import (EMA_DECAY, RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, check_int_field,
                     check_resume, check_snr_gamma, command_line, ema_update, encode_all, init_card, loop_generator,
                     optimiser_step, parse_config, process_of, resume_run, save_if_due, start_run, tinyworld_images)


@dataclass(kw_only=True)
class BaseConfig(RunConfig):
    """What ``workbench train-base`` takes: one field per flag (``--null-prob`` is ``null_prob``)."""

    # RunConfig's fields with this script's defaults
    steps: int = 8000
    batch_size: int = 128
    lr: float = 1e-3

    vae: str | None = None  # folder of a trained AutoencoderKL; none for a pixel-space base
    train_images: int = 50_000  # tiny-world training images, encoded once into latents
    widths: tuple[int, ...] = (48, 96, 96)  # UNet block widths
    layers_per_block: int = 1  # ResNet (and attention) layers per UNet block
    null_prob: float = 0.1  # fraction of items trained with the null prompt
    ema: float = EMA_DECAY  # EMA decay of the saved weights
    min_timestep: int = 0  # train only on timesteps >= this (of 1000): a fine-tune of the noisy, layout-deciding
    # phase; 0: all timesteps
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # what the UNet predicts: the noise (SD 1.x)
    # or v (SD 2.x; better conditioned at high noise, where the layout is decided). None: epsilon, or that of the
    # --init-from base, which this may switch
    zero_terminal_snr: bool = False  # Lin et al. 2024: betas rescaled to alpha_bar = 0 at t = 999 and "trailing"
    # sampling, so that more steps cannot start from a mismatched t (needs --prediction-type v_prediction)
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their choice): each
    # item's loss is weighted by min(SNR, gamma)/SNR, which takes weight off the nearly clean timesteps. None: MSE
    eval_classifiers: str | None = None  # data folder with tinyworld-cnn/vit to measure sample quality for the card
    eval_images: int = 512  # samples drawn (and real test images compared) for the card's sample quality
    init_from: str | None = None  # a saved base folder (unet/ inside) to continue from; its UNet config replaces
    # --widths and --layers-per-block
    compile: bool = False  # torch.compile the UNet (minutes of compile time; pays off on long runs)

    run_keys = ("vae", "widths", "layers_per_block", "init_from")
    positive = RunConfig.positive + ("train_images", "layers_per_block", "eval_images")
    fractions = ("null_prob", "ema")

    def check(self) -> None:
        super().check()
        check_int_field(self, "min_timestep", low=0, high=999)  # of the scheduler's 1000 steps
        check_snr_gamma(self)
        if not self.widths or min(self.widths) < 1:
            raise ArgumentValueError(f"--widths {','.join(map(str, self.widths))}: needs one or more widths >= 1")


def parse_args(argv=None) -> BaseConfig:
    return parse_config(BaseConfig, argv, prog="workbench train-base", description=__doc__)


def fixed_prompt_embeds(dim: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny base's prompt embedding ``[1, 1, dim]`` (seeded, unit RMS) and null embedding (zeros)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(1, 1, dim, generator=g)
    return p / p.pow(2).mean().sqrt(), torch.zeros(1, 1, dim)


def unet_loss(denoiser, base, latents: torch.Tensor, noise_scheduler, *, generator: torch.Generator,
              null_prob: float, min_timestep: int = 0, snr_gamma: float | None = None) -> torch.Tensor:
    """The base's loss on a batch of latents ``[B, C, h, w]``: :func:`~workbench.diffusion.diffusion_loss` with the
    fixed prompt, which a ``null_prob`` share of the items (drawn after the noise and the timesteps) swap for the
    null prompt. ``denoiser`` is the UNet (or its prepared / compiled wrapper)."""
    from ..diffusion import diffusion_loss

    b = latents.shape[0]

    def predict(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(b, generator=generator, device=latents.device) < null_prob
        return denoiser(noisy, t, encoder_hidden_states=base.embeds(b, null=drop)).sample

    return diffusion_loss(predict, latents, noise_scheduler, generator=generator, min_timestep=min_timestep,
                          snr_gamma=snr_gamma)


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


def build_base(config: BaseConfig):
    """``(config, base, unet_config)``: a :class:`~workbench.DiffusionBase` around a new UNet (or ``init_from``'s)
    and ``config.vae``, with the config's ``prediction_type`` resolved (``init_from``'s when not given)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from ..diffusion import DiffusionBase, tiny_scheduler_config, tiny_unet_config

    vae = AutoencoderKL.from_pretrained(config.vae) if config.vae else None
    latent_ch = vae.config.latent_channels if vae is not None else 3
    size = 32 // (2 ** (len(vae.config.block_out_channels) - 1)) if vae is not None else 32
    ucfg = tiny_unet_config(sample_size=size, in_channels=latent_ch, widths=config.widths,
                            layers_per_block=config.layers_per_block)
    if config.init_from:
        unet = init_unet(config.init_from, ucfg, latent_ch=latent_ch, size=size)
        ucfg = tiny_unet_config(sample_size=size, in_channels=latent_ch, widths=tuple(unet.config.block_out_channels),
                                layers_per_block=unet.config.layers_per_block)
    else:
        unet = UNet2DConditionModel(**ucfg)
    if config.prediction_type is None:
        prediction_type = init_prediction_type(config.init_from) if config.init_from else "epsilon"
        config = dataclasses.replace(config, prediction_type=prediction_type)
    prompt, null = fixed_prompt_embeds(ucfg["cross_attention_dim"])
    if config.zero_terminal_snr and config.prediction_type != "v_prediction":
        raise ArgumentValueError(f"--zero-terminal-snr needs --prediction-type v_prediction, got "
                                 f"{config.prediction_type!r}: at alpha_bar = 0 the noise says nothing of the image")
    scheduler_config = tiny_scheduler_config(config.prediction_type, zero_terminal_snr=config.zero_terminal_snr)
    base = DiffusionBase(unet, scheduler_config, prompt, null, vae, image_size=32,
                         name="tinyworld-base")
    return config, base, ucfg


def train(config: BaseConfig, acc, base, latents: torch.Tensor) -> tuple[torch.nn.Module, Steps]:
    """The training loop on ``latents`` ``[N, C, h, w]`` (resumed with ``config.resume``); returns the EMA UNet
    and the finished loop. Each process trains on its own share of every global batch, with its own noise."""
    unet = base.unet.requires_grad_(True).train()
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    noise_sched = base.make_scheduler("ddpm")
    rank, world = process_of(acc)
    stream = TensorStream(latents, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    opt, sched = adamw_with_schedule(unet.parameters(), config, weight_decay=0.01)
    state = resume_run(config, modules={"unet": unet, "ema": ema}, optimizer=opt, lr_scheduler=sched, stream=stream,
                       acc=acc)
    start = state["step"] if state else 0
    g = loop_generator(config, acc, state)
    unet_p, opt = acc.prepare(unet, opt)
    denoiser = torch.compile(unet_p) if config.compile else unet_p
    it = iter(stream)
    loop = Steps(start, config.steps, desc="base", max_minutes=config.max_minutes, lr_scheduler=sched,
                 progress=config.progress, acc=acc)
    for step in loop:
        (z0,) = next(it)
        with acc.accumulate(unet_p):
            loss = unet_loss(denoiser, base, z0, noise_sched, generator=g, null_prob=config.null_prob,
                             min_timestep=config.min_timestep, snr_gamma=config.snr_gamma)
            optimiser_step(acc, loss, unet_p, opt, sched, max_grad_norm=1.0)
        ema_update(ema, acc.unwrap_model(unet_p), config.ema, step=step)
        loop.log(loss=loss.item())
        save_if_due(loop, step, acc, config, modules={"unet": acc.unwrap_model(unet_p), "ema": ema}, optimizer=opt,
                    lr_scheduler=sched, extra={"stream": stream.state_dict()}, generator=g)
    return ema, loop


def base_card(config: BaseConfig, base, ucfg: dict, loop: Steps, *, wall_time_s: float, device) -> dict:
    """The card of the trained base: its shape, UNet config, training record, starting card and VAE card."""
    card = {"name": "tinyworld-base", "space": "latent" if base.vae is not None else "pixel",
            "latent_shape": list(base.latent_shape),
            "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in ucfg.items()},
            "parameters_unet": sum(p.numel() for p in base.unet.parameters()),
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "train_images": config.train_images, "ema": config.ema,
                         "null_prob": config.null_prob, "snr_gamma": config.snr_gamma,
                         "min_timestep": config.min_timestep, "prediction_type": config.prediction_type,
                         "zero_terminal_snr": config.zero_terminal_snr,
                         "lr": config.lr, "init_from": config.init_from,
                         "mixed_precision": config.mixed_precision, "compile": config.compile,
                         "wall_time_s": wall_time_s, "device": str(device)}}
    prev = init_card(Path(config.init_from) / "card.json", also=("vae",)) if config.init_from else None
    start_vae = prev.pop("vae", None) if prev else None
    if prev:  # the starting weights' card
        card["training"]["init_card"] = prev
    if config.vae and (Path(config.vae) / "card.json").is_file():
        card["vae"] = json.loads((Path(config.vae) / "card.json").read_text())
    elif config.vae and start_vae and Path(config.vae).resolve() == (Path(config.init_from) / "vae").resolve():
        card["vae"] = start_vae  # the VAE of the saved base we started from: its card lives in the base's card
    return card


def main(config: BaseConfig) -> dict:
    """Train the base, write ``config.out/tinyworld-base`` (and ``config.ship``'s) with its card; measure its
    samples for the card when ``config.eval_classifiers`` is given (the main process measures and writes; the
    others return the card without metrics)."""
    from ..card_metrics import base_card_metrics
    from ..models import load_shipped_classifier

    check_resume(config, what="the base")
    timer = Timer()
    config, acc = start_run(config)
    config, base, ucfg = build_base(config)
    base.to(acc.device)
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=acc.device,
                                 progress=config.progress and acc.is_main_process)
    latents = encode_all(base, images, progress=config.progress and acc.is_main_process)
    del images
    base.unet, loop = train(config, acc, base, latents)
    base.requires_grad_(False).eval()
    card = base_card(config, base, ucfg, loop, wall_time_s=timer.seconds, device=acc.device)
    card["training"]["processes"] = acc.num_processes
    if acc.is_main_process:
        if config.eval_classifiers:
            cnn = load_shipped_classifier("tinyworld-cnn", device=acc.device, root=config.eval_classifiers)
            vit = load_shipped_classifier("tinyworld-vit", device=acc.device, root=config.eval_classifiers)
            card["metrics"] = base_card_metrics(base, cnn, vit, num_images=config.eval_images, seed=config.seed,
                                                progress=config.progress)
        base.save_pretrained(Path(config.out) / "tinyworld-base", fp16=False, card=card)
        if config.ship:
            base.save_pretrained(Path(config.ship) / "tinyworld-base", fp16=True, card=card)
        print(f"base: {json.dumps(card.get('metrics', {}))} {timer.seconds} s")
    acc.wait_for_everyone()  # the weights are there for every process to read
    return card


if __name__ == "__main__":
    main(parse_args())
