"""FeatInv at its defaults against the optimisation baseline at its defaults: seconds per image and feature cosine.

The same ``--n`` held-out tiny-world test images, one image per map, for the CNN and ViT last-layer
inverters. ``FeatInv.invert`` runs with its defaults (``DEFAULT_SCHEDULER``, ``DEFAULT_NUM_INFERENCE_STEPS``,
``DEFAULT_GUIDANCE_SCALE``); ``OptimizationInverter(classifier, layer)`` with its defaults. The two are timed
alternately ``--repeats`` times in one process (medians of CPU seconds of the process by default, which other jobs on a
shared machine barely change; ``--clock wall`` for wall-clock seconds); the cosine is that of the first repeat (both
are deterministic for a seed). The goal is FeatInv at least 10x faster per image.

Where a distilled inverter of the same layer is shipped (``<name>-distilled``, :mod:`workbench.inverters.distilled`),
it is timed in the same interleaved loop on the same images: the goals of issue 29 are the distilled inverter at least
5x faster than its teacher's default sampler and at least 50x faster than the optimisation baseline's defaults.
Results are written as JSON with ``--json`` (``benchmarks/results/inversion_speed.json``).

Usage:
    .venv/bin/python benchmarks/inversion_speed.py [--n 32] [--repeats 3] [--threads 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

INVERTERS = ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inverters", nargs="+", default=INVERTERS)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see sampler_tradeoff.py)")
    p.add_argument("--featinv-kwargs", type=json.loads, default={},
                   help="FeatInv sampler arguments instead of its defaults (a candidate default), as JSON")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="CPU seconds of this process (robust to other jobs on a shared machine) or wall-clock seconds")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    import workbench as wb
    from workbench.inverters import featinv as fi
    from workbench.inverters.optimization import OptimizationInverter
    from workbench.hooks import extract_features
    from workbench.metrics import feature_cosine

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = {}
    for name in args.inverters:
        inv = wb.load_inverter(name)
        clf = wb.load_classifier(inv.classifier_name)
        opt = OptimizationInverter(clf, inv.layer)
        x = wb.TinyWorld("test", size=args.n, seed=args.seed).images()
        feats = extract_features(clf, x, inv.layer)
        kw = dict(args.featinv_kwargs, classifier=clf)
        methods = {"featinv": lambda: inv.invert(feats, num_samples=1, seed=args.seed, progress=False, **kw),
                   "optimization": lambda: opt.invert(feats, num_samples=1, seed=args.seed, progress=False)}
        if f"{name}-distilled" in wb.list_inverters():
            fast = wb.load_inverter(f"{name}-distilled")
            methods["distilled"] = lambda: fast.invert(feats, num_samples=1, seed=args.seed, progress=False)
        times: dict[str, list[float]] = {k: [] for k in methods}
        cos = {}
        for rep in range(args.repeats):
            for key, fn in list(methods.items())[::(-1 if rep % 2 else 1)]:
                start = clock()
                rec = fn()
                times[key].append(clock() - start)
                if key not in cos:
                    cos[key] = feature_cosine(clf, inv.layer, x, rec[:, 0]).nanmean().item()
        per = {k: statistics.median(v) / args.n for k, v in times.items()}
        results[name] = {k: {"s_per_image": per[k], "cosine": cos[k]} for k in methods}
        results[name]["speedup"] = per["optimization"] / per["featinv"]
        print(f"{name}, {args.n} images, CPU, {torch.get_num_threads()} thread(s), {args.repeats} interleaved repeats")
        print(f"  FeatInv ({fi.sampler_description(**args.featinv_kwargs)})  "
              f"{per['featinv']:.3f} s/image  cosine {cos['featinv']:.4f}")
        print(f"  optimisation ({opt.num_optimizer_steps} Adam steps)        {per['optimization']:.3f} s/image  "
              f"cosine {cos['optimization']:.4f}")
        print(f"  speed-up FeatInv over optimisation = {results[name]['speedup']:.1f}x  (goal >= 10)")
        if "distilled" in per:
            results[name]["distilled_over_teacher"] = per["featinv"] / per["distilled"]
            results[name]["distilled_over_optimization"] = per["optimization"] / per["distilled"]
            print(f"  distilled ({len(fast.timesteps)} evaluation(s))          {per['distilled']:.4f} s/image  "
                  f"cosine {cos['distilled']:.4f}")
            print(f"  speed-up distilled over its teacher = {results[name]['distilled_over_teacher']:.1f}x  (goal >= 5); "
                  f"over optimisation = {results[name]['distilled_over_optimization']:.0f}x  (goal >= 50)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "repeats": args.repeats, "threads": args.threads, "clock": args.clock,
                       "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main(parse_args())
