"""The optimised sampling path of ``FeatInv.invert`` against the loop as first written, side by side.

The slow path (:func:`slow_invert`, also the reference of ``tests/test_performance.py``) repeats the
features per sample and lets the ControlNet re-embed the condition, and the dropped condition, at every
denoising step, under ``no_grad``. The library's path embeds each map once per chunk, embeds the dropped
(zero) condition once, and runs under ``inference_mode``. Both draw the same images (max abs difference
printed); they are timed alternately, medians of ``--repeats``.

Usage:
    .venv/bin/python benchmarks/sampling_path.py [--n 16] [--samples 4] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inverter", default="tinyworld-cnn/stages.3")
    p.add_argument("--n", type=int, default=16, help="maps")
    p.add_argument("--samples", type=int, default=4, help="samples per map")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: FeatInv's "
                   "DEFAULT_NUM_INFERENCE_STEPS)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


@torch.no_grad()
def slow_invert(inv: FeatInv, features: torch.Tensor, *, num_samples: int, num_inference_steps: int,
                guidance_scale: float, scheduler: str, seed: int, guidance_mode: str, batch_size: int = 64,
                ) -> torch.Tensor:
    """The sampling loop as first written: features repeated per sample, and the ControlNet re-embedding
    the condition (cond and dropped) at every step. The reference the optimised path must match."""
    device = inv.base.prompt_embeds.device
    B, S = features.shape[0], num_samples
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((B * S, *inv.base.latent_shape), generator=g)
    feats = features.detach().float().repeat_interleave(S, 0)
    out = torch.empty(B * S, 3, inv.image_size, inv.image_size)
    for s in range(0, B * S, batch_size):
        e = min(s + batch_size, B * S)
        f = feats[s:e].to(device)
        sched = inv.base.make_scheduler(scheduler)
        sched.set_timesteps(num_inference_steps, device=device)
        z = noise[s:e].to(device) * sched.init_noise_sigma
        n = e - s
        cond_emb, null_emb = inv.base.embeds(n), inv.base.embeds(n, null=True)
        uncond_feats = torch.zeros_like(f) if guidance_mode == "features" else f
        for t in sched.timesteps:
            zin = sched.scale_model_input(z, t)
            if guidance_scale == 1.0:
                eps = inv.predict_noise(zin, t, f, cond_emb)
            else:
                eps_c, eps_u = inv.predict_noise(torch.cat([zin, zin]), t, torch.cat([f, uncond_feats]),
                                                 torch.cat([cond_emb, null_emb])).chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            z = sched.step(eps, t, z).prev_sample
        out[s:e] = inv.base.decode(z).float().cpu()
    return out.view(B, S, 3, inv.image_size, inv.image_size)


def main(args: argparse.Namespace) -> float:
    import workbench as wb

    torch.set_num_threads(args.threads)
    inv = wb.load_inverter(args.inverter)
    clf = wb.load_classifier(inv.classifier_name)
    feats = wb.metrics.extract_features(clf, wb.TinyWorld("test", size=args.n, seed=0).images(), inv.layer)
    default = wb.Sampler()
    kw = dict(num_samples=args.samples, num_inference_steps=args.steps or default.num_inference_steps,
              guidance_scale=default.guidance_scale, scheduler=default.scheduler, seed=0,
              guidance_mode=default.guidance_mode)
    paths = {"slow": lambda: slow_invert(inv, feats, **kw), "library": lambda: inv.invert(feats, progress=False, **kw)}
    times: dict[str, list[float]] = {k: [] for k in paths}
    outs = {}
    for rep in range(args.repeats + 1):
        for key, fn in list(paths.items())[::(-1 if rep % 2 else 1)]:
            start = time.perf_counter()
            outs[key] = fn()
            if rep > 0:  # the first round warms up
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["slow"] / med["library"]
    images = args.n * args.samples
    print(f"{args.inverter}, {args.n} maps x {args.samples} samples, {kw['scheduler']} {kw['num_inference_steps']} "
          f"steps, guidance {kw['guidance_scale']}, CPU, {torch.get_num_threads()} thread(s), {args.repeats} "
          "interleaved repeats")
    print(f"  slow path     {med['slow'] / images * 1e3:7.1f} ms/image")
    print(f"  library path  {med['library'] / images * 1e3:7.1f} ms/image")
    print(f"  ratio slow / library = {ratio:.3f}   max |difference| = {(outs['slow'] - outs['library']).abs().max():.2e}")
    return ratio


if __name__ == "__main__":
    main(parse_args())
