"""FeatInv at real scale on one GPU: training and sampling throughput, official setup against ours.

Everything is built from configs with random weights (no downloads): a miniSD-shaped base (the SD 1.x
UNet, ``block_out_channels=(320, 640, 1280, 1280)``, ``cross_attention_dim=768``, and the SD KL-VAE, at
256 px), a FeatInv ControlNet from it, and timm classifiers (``resnet50``, ``convnext_base``,
``swinv2_tiny_window8_256``). With ``--tiny`` the same code runs at miniature widths (the configs of
``sd_miniature_configs()``, 64 px, small timm models) on the CPU in about a minute, so it cannot rot.

Training, per classifier, ``--batch-size`` images per step (timed in interleaved blocks, medians):

* ``train_official``: fp32, classic (non-SDPA) attention, the prompt encoded at every step by a
  CLIP-L-shaped text encoder (random weights, 12 layers, width 768, 77 tokens) for every item, features
  computed per sample (the classifier run on one image at a time).
* ``train_ours``: bf16 autocast (CUDA only; fp32 on a CPU), SDPA attention, channels_last, features batched in the step, the
  prompt embedding cached (computed once).
* ``train_ours_compiled``: ours with ``torch.compile`` on the UNet and ControlNet (CUDA only, first
  classifier only; compile time is reported, not timed).

Both designs encode the images with the VAE in the step (real-scale data is not cached). Peak GPU
memory of a design is its resident state (weights, gradients, optimiser) plus the step's peak.

Sampling: images per second of DDIM-50 against FeatInv's default sampler (``wb.Sampler()``), with our runtime settings (bf16 autocast on CUDA).

Writes ``--out`` (JSON) and ``--table`` (markdown rows for benchmarks/RESULTS.md), with the device name.

Usage:
    python benchmarks/gpu_scale.py                      # one GPU, under 8 minutes on an H100
    python benchmarks/gpu_scale.py --tiny               # CPU, CI-sized
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

FULL_CLASSIFIERS = {"resnet50": ("layer4", {}), "convnext_base": ("stages.3", {}),
                    "swinv2_tiny_window8_256": ("layers.3", {})}
TINY_CLASSIFIERS = {"resnet18": ("layer4", {}), "convnext_atto": ("stages.3", {}),
                    "swinv2_tiny_window8_256": ("layers.3", dict(img_size=64, window_size=4, embed_dim=32,
                                                                 depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="miniature widths on the CPU (CI)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch-size", type=int, default=None, help="images per training step (default 8; 2 with --tiny)")
    p.add_argument("--classifiers", nargs="+", default=None)
    p.add_argument("--blocks", type=int, default=None, help="interleaved timing blocks (default 3; 1 with --tiny)")
    p.add_argument("--steps-per-block", type=int, default=None, help="training steps per block (default 4; 1 tiny)")
    p.add_argument("--sample-images", type=int, default=None, help="images sampled (default 8; 1 with --tiny)")
    p.add_argument("--compile", choices=["first", "none"], default="first",
                   help="time a torch.compile'd variant for the first classifier (CUDA only)")
    p.add_argument("--out", default=None, help="default benchmarks/results/gpu_scale[_tiny].json")
    p.add_argument("--table", default=None, help="markdown table path (default: --out with .md)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (one: see sampler_tradeoff.py)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.out = args.out or f"benchmarks/results/gpu_scale{'_tiny' if tiny else ''}.json"
    args.batch_size = args.batch_size or (2 if tiny else 8)
    args.blocks = args.blocks or (1 if tiny else 3)
    args.steps_per_block = args.steps_per_block or (1 if tiny else 4)
    args.sample_images = args.sample_images or (1 if tiny else 8)
    args.classifiers = args.classifiers or list((TINY_CLASSIFIERS if tiny else FULL_CLASSIFIERS))
    return args


# ---------------------------------------------------------------------- the components, random weights
def sd1_configs() -> dict:
    """SD 1.x UNet and KL-VAE configs (miniSD's shapes: 256 px, 32x32x4 latents)."""
    from workbench.diffusion import sd_miniature_configs

    unet = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=2,
               block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4)
    return {"unet": unet, "vae": vae, "scheduler": sd_miniature_configs()["scheduler"], "size": 256}


def build_base(tiny: bool, device):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from workbench.diffusion import DiffusionBase, sd_miniature_configs

    cfg = dict(sd_miniature_configs(), size=64) if tiny else sd1_configs()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    d = cfg["unet"]["cross_attention_dim"]
    return DiffusionBase(unet, cfg["scheduler"], torch.randn(1, 77, d), torch.randn(1, 77, d), vae,
                         image_size=cfg["size"], name="random-sd1" + ("-miniature" if tiny else "")).to(device)


def build_text_encoder(tiny: bool, width: int, device):
    """CLIP-L's text tower shape (12 layers, 768 wide, 77 tokens); 2 layers at ``width`` with --tiny."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=2 if tiny else 12, num_attention_heads=4 if tiny else 12,
                         max_position_embeddings=77, projection_dim=width)
    return CLIPTextModel(cfg).to(device).eval().requires_grad_(False)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- one training design
class Design:
    """A FeatInv, its optimiser and how a step gets features and prompt. ``step()`` runs one training step."""

    def __init__(self, name, base, clf, layer, images, *, official: bool, text=None, compiled=False):
        from diffusers.models.attention_processor import AttnProcessor

        from workbench.inverters.featinv import FeatInv
        from workbench.models import classifier_view
        from workbench.hooks import extract_features

        self.name, self.official, self.clf, self.layer, self.images, self.text = name, official, clf, layer, images, text
        self.device = images.device
        self.view = lambda x: classifier_view(x, clf)
        self.extract = extract_features
        feats = extract_features(clf, self.view(images[:2]), layer)
        self.inv = FeatInv(base, "random", layer, feats.shape[1:])
        self.inv.conditioning.set_feature_stats(feats)
        self.inv.to(self.device)
        if official:
            self.inv.base.unet.set_attn_processor(AttnProcessor())
            self.inv.controlnet.set_attn_processor(AttnProcessor())
        else:
            for m in (self.inv.base.unet, self.inv.controlnet, self.inv.base.vae, clf):
                m.to(memory_format=torch.channels_last)
        self.inv.controlnet.requires_grad_(True).train()
        self.opt = torch.optim.AdamW(self.inv.controlnet.parameters(), lr=1e-5)
        self.sched = base.make_scheduler("ddpm")
        self.g = torch.Generator(self.device).manual_seed(0)
        self.tokens = torch.randint(0, 49408, (len(images), 77), device=self.device)
        if compiled:
            self.inv.controlnet = torch.compile(self.inv.controlnet)
            self.inv.base.unet = torch.compile(self.inv.base.unet)

    def autocast(self):
        if self.official or self.device.type != "cuda":  # bf16 autocast is a GPU setting; on a CPU it is slower
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self) -> None:
        x = self.images
        with torch.no_grad(), self.autocast():
            if self.official:  # per sample, as a Dataset's __getitem__ would
                f = torch.cat([self.extract(self.clf, self.view(x[i:i + 1]), self.layer) for i in range(len(x))])
                self.text(self.tokens)  # the prompt, encoded for every item at every step
            else:
                xin = x.contiguous(memory_format=torch.channels_last)
                f = self.extract(self.clf, self.view(xin), self.layer, batch_size=len(x))
            z0 = self.inv.base.encode(x if self.official else xin, sample=True, generator=self.g)
        with self.autocast():
            loss = self.inv.training_loss(z0, f.float(), noise_scheduler=self.sched, generator=self.g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.inv.controlnet.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def mem() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def time_designs(designs: list[Design], args, device) -> dict:
    """Warm each design up (recording its resident memory), then time interleaved blocks of steps."""
    resident, warm_s = {}, {}
    for d in designs:
        before = mem()
        start = time.perf_counter()
        for _ in range(1 if args.tiny else 2):
            d.step()
        sync(device)
        warm_s[d.name] = time.perf_counter() - start
        resident[d.name] = mem() - before
    times = {d.name: [] for d in designs}
    peaks = {d.name: [] for d in designs}
    for b in range(args.blocks):
        for d in designs[::(-1 if b % 2 else 1)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start_mem = mem()
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps_per_block):
                d.step()
            sync(device)
            times[d.name].append((time.perf_counter() - start) / args.steps_per_block)
            if device.type == "cuda":
                peaks[d.name].append(torch.cuda.max_memory_allocated() - start_mem + resident[d.name])
    out = {}
    for d in designs:
        s = statistics.median(times[d.name])
        out[d.name] = {"images_per_s": round(args.batch_size / s, 3), "s_per_step": round(s, 4),
                       "warmup_s": round(warm_s[d.name], 1),
                       "peak_gib": round(max(peaks[d.name]) / 2**30, 2) if peaks[d.name] else None}
    return out


def time_sampling(inv, feats, clf, args, device) -> dict:
    """Sampling images per second: the official sampler (DDIM 50, guidance 1.75, both branches feature-conditioned,
    no feature guidance) against ours (FeatInv's defaults, feature guidance through ``clf`` included)."""
    from workbench.inverters.sampler import Sampler

    settings = {"sample_ddim50": dict(scheduler="ddim", num_inference_steps=50, guidance_scale=1.75,
                                      guidance_mode="prompt", feature_guidance_scale=0.0),
                "sample_default": Sampler().to_dict()}
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    times = {k: [] for k in settings}
    with ctx:
        inv.invert(feats, num_samples=1, num_inference_steps=1, progress=False, classifier=clf)  # warm-up
        for b in range(args.blocks):
            for key, kw in list(settings.items())[::(-1 if b % 2 else 1)]:
                sync(device)
                start = time.perf_counter()
                inv.invert(feats, num_samples=1, progress=False, classifier=clf, **kw)
                sync(device)
                times[key].append(time.perf_counter() - start)
    return {k: {"images_per_s": round(len(feats) / statistics.median(v), 3), **settings[k]} for k, v in times.items()}


# ---------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict:
    import workbench as wb

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the official setup
    t0 = time.time()
    zoo = TINY_CLASSIFIERS if args.tiny else FULL_CLASSIFIERS
    base = build_base(args.tiny, device)
    text = build_text_encoder(args.tiny, base.prompt_embeds.shape[-1], device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, base.image_size, base.image_size, generator=g).to(device)
    record = {"date": date.today().isoformat(), "tiny": args.tiny,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "batch": args.batch_size, "image_size": base.image_size, "classifiers": {}}
    for i, name in enumerate(args.classifiers):
        layer, kw = zoo.get(name, ("layer4", {}))
        clf = wb.load_classifier(name, pretrained=False, device=device, **kw).eval().requires_grad_(False)
        if args.tiny:  # the miniature classifiers read the base's 64 px images as they are
            clf.input_size = (3, base.image_size, base.image_size)
        designs = [Design("train_official", base, clf, layer, images, official=True, text=text),
                   Design("train_ours", copy.deepcopy(base), copy.deepcopy(clf), layer, images, official=False)]
        if args.compile == "first" and i == 0 and device.type == "cuda":
            designs.append(Design("train_ours_compiled", copy.deepcopy(base), copy.deepcopy(clf), layer, images,
                                  official=False, compiled=True))
        res = time_designs(designs, args, device)
        res["ratio_ours_over_official"] = round(res["train_ours"]["images_per_s"]
                                                / res["train_official"]["images_per_s"], 2)
        if i == 0:  # sampling, with the first classifier's (untrained) inverter in eval mode
            inv = designs[1].inv.eval()
            inv.controlnet.requires_grad_(False)
            feats = wb.metrics.extract_features(clf, designs[1].view(images[:args.sample_images]), layer).float()
            samp = time_sampling(inv, feats, clf, args, device)
            record.update(samp)
            record["sampling_ratio_default_over_ddim50"] = round(
                samp["sample_default"]["images_per_s"] / samp["sample_ddim50"]["images_per_s"], 2)
            record.update({k: res[k] for k in ("train_official", "train_ours")})
            record["train_ratio_ours_over_official"] = res["ratio_ours_over_official"]
        record["classifiers"][name] = {"layer": layer, **res}
        del designs
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.progress:
            print(f"{name}: ours / official = {res['ratio_ours_over_official']}x", flush=True)
    record["wall_s"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    md = table(record)
    Path(args.table or out.with_suffix(".md")).write_text(md + "\n")
    print(md)
    return record


def table(record: dict) -> str:
    """Markdown rows for benchmarks/RESULTS.md."""
    lines = [f"gpu_scale.py{' --tiny' if record['tiny'] else ''}, {record['date']}, {record['device']}, "
             f"torch {record['torch']}, batch {record['batch']}, {record['image_size']} px, {record['wall_s']} s",
             "", "| classifier | design | images/s | peak GPU GiB | ours / official |", "|---|---|---|---|---|"]
    for name, r in record["classifiers"].items():
        for k in ("train_official", "train_ours", "train_ours_compiled"):
            if k in r:
                lines.append(f"| {name} ({r['layer']}) | {k} | {r[k]['images_per_s']} | {r[k]['peak_gib']} | "
                             f"{r['ratio_ours_over_official'] if k == 'train_ours' else ''} |")
    default = record["sample_default"]
    lines += ["", "| sampler | images/s | default / DDIM-50 |", "|---|---|---|",
              f"| official (DDIM 50 steps, guidance 1.75, prompt mode) | {record['sample_ddim50']['images_per_s']} | |",
              f"| default ({default['scheduler']} {default['num_inference_steps']} steps, guidance "
              f"{default['guidance_scale']}, feature guidance {default['feature_guidance_scale']} at the last "
              f"{default['feature_guidance_steps']}) | {default['images_per_s']} | "
              f"{record['sampling_ratio_default_over_ddim50']} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
