"""Feature cosine and top-1 agreement against sampling steps, for DDIM and DPM-Solver++; picks FeatInv's defaults.

On ``--n`` held-out tiny-world test images, one sample each, for the CNN and ViT last-layer inverters:

1. the step sweep, without feature guidance: DDIM and DPM-Solver++ at 4, 8, 12, 20 and 50 steps, guidance
   ``--sweep-guidance``.
   The default sampler is the cheapest (scheduler, steps) whose mean feature cosine reaches at least
   ``--target`` (98%) of DDIM-50's (the official setting) for *every* inverter. Cost = denoiser
   evaluations per image = steps x (2 with guidance, 1 without).
2. the guidance sweep at that sampler, on the first ``--guidance-n`` of the same images: the default
   guidance is chosen the same way, the cheapest scale (1.0 halves the cost) reaching the target of
   DDIM-50's cosine on those same images; among equally cheap scales, the highest mean cosine.
3. the speed-up: the chosen setting and DDIM-50 timed side by side on ``--time-n`` images, interleaved,
   medians over ``--repeats``.
4. the feature-guidance sweep at that sampler and at ``--fg-steps`` (fewer steps pay for the guided ones), on the
   first ``--fg-n`` images, measured by ``wb.evaluate``:
   feature cosine, top-1, cross-model cosine, Fréchet distance and seconds per image for each scale in
   ``--feature-guidances`` guiding the last k of ``--feature-guidance-steps`` denoising steps. Candidates must keep
   the naturalness of the unguided sampler for every inverter (cross-model cosine at least the unguided one's minus
   ``--cross-tolerance``, Fréchet distance at most ``1 + --fd-tolerance`` times the unguided one's; at 64 images
   the FD of one setting varies by ~10%), a guard against images that buy cosine adversarially. In order of mean
   feature cosine, each candidate is then timed against ``OptimizationInverter``'s defaults on ``--time-n`` images
   (interleaved, medians; see :func:`feature_guidance_sweep`): the first that stays ``--min-speedup`` (10x) faster
   with ``--speed-margin`` (10%) to spare, i.e. at least 11x, for every inverter is the default; if none does,
   feature guidance stays off.

``--sampler ddim:8:3.0`` skips 1-3 and runs 4 at that sampler (steps 1-3 were last run on 2026-11-26, see
docs/benchmarks-log.md).

The sweeps run in ``--workers`` processes of ``--threads`` threads each (one thread per process: on a
loaded 2-core machine two OpenMP threads per process were ~10x slower than one). Writes ``--out`` (JSON).

Usage:
    nohup .venv/bin/python benchmarks/sampler_tradeoff.py > benchmarks/results/sampler_tradeoff.log 2>&1 &
    .venv/bin/python benchmarks/sampler_tradeoff.py --n 8 --steps 2 4 --guidances 1 2 --time-n 2   # smoke run
    .venv/bin/python benchmarks/sampler_tradeoff.py --sampler ddim:8:3.0 --fg-n 64 --time-n 16      # step 4 only
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import torch

INVERTERS = ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inverters", nargs="+", default=INVERTERS)
    p.add_argument("--n", type=int, default=128, help="held-out test images of the step sweep")
    p.add_argument("--guidance-n", type=int, default=64, help="the first images of those, for the guidance sweep")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 12, 20, 50])
    p.add_argument("--schedulers", nargs="+", default=["ddim", "dpm++"])
    p.add_argument("--skip", nargs="*", default=[], help="scheduler:steps settings left out (e.g. dpm++:50)")
    p.add_argument("--reference", default="ddim:50", help="scheduler:steps of the official setting")
    p.add_argument("--sweep-guidance", type=float, default=2.0, help="guidance scale of the step sweep")
    p.add_argument("--guidances", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    p.add_argument("--target", type=float, default=0.98, help="fraction of the reference's cosine to reach")
    p.add_argument("--time-n", type=int, default=16, help="images of the interleaved speed measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed pairs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--sampler", default=None, help="scheduler:steps:guidance; skip the step and guidance sweeps")
    p.add_argument("--fg-n", type=int, default=64, help="the first images, for the feature-guidance sweep")
    p.add_argument("--feature-guidances", type=float, nargs="+", default=[0.025, 0.05, 0.1])
    p.add_argument("--feature-guidance-steps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--fg-steps", type=int, nargs="*", default=[6],
                   help="denoising steps tried besides the sampler's, to pay for the guided steps")
    p.add_argument("--cross-tolerance", type=float, default=0.02, help="cross-model cosine it may lose")
    p.add_argument("--fd-tolerance", type=float, default=0.25, help="relative FD increase it may have")
    p.add_argument("--min-speedup", type=float, default=10.0, help="over OptimizationInverter's defaults")
    p.add_argument("--speed-margin", type=float, default=0.1,
                   help="relative margin above --min-speedup a candidate must reach: repeated CPU-second measurements "
                        "of one setting's speed-up on this shared machine differ by up to ~10%% (10.3x against 9.9x)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="speed in CPU seconds of this process (robust to other jobs) or wall-clock seconds")
    p.add_argument("--reuse-sweep", default=None,
                   help="a JSON of an earlier step-4 run: reuse its quality rows, run only the speed guard")
    p.add_argument("--out", default="benchmarks/results/sampler_tradeoff.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- one evaluation (in a worker)
_CACHE: dict = {}


def _init(threads: int) -> None:
    torch.set_num_threads(threads)


def _load(name: str, n: int, seed: int):
    import workbench as wb

    if name not in _CACHE:
        inv = wb.load_inverter(name)
        _CACHE[name] = (inv, wb.load_classifier(inv.classifier_name))
    inv, clf = _CACHE[name]
    x = wb.TinyWorld("test", size=n, seed=seed).images()
    return inv, clf, x


def evaluate(task: dict) -> dict:
    """Invert ``task["n"]`` test images with one setting: per-image cosine and top-1 agreement, and seconds."""
    from workbench.hooks import extract_features
    from workbench.metrics import feature_cosine, topk_agreement

    inv, clf, x = _load(task["inverter"], task["n"], task["seed"])
    x = x[:task["use"]]
    feats = extract_features(clf, x, inv.layer)
    start = time.perf_counter()
    rec = inv.invert(feats, num_samples=1, num_inference_steps=task["steps"], scheduler=task["scheduler"],
                     guidance_scale=task["guidance"], seed=task["seed"], progress=False,
                     batch_size=task["batch_size"], feature_guidance_scale=0.0)[:, 0]
    seconds = time.perf_counter() - start
    cos = feature_cosine(clf, inv.layer, x, rec)
    top1 = topk_agreement(clf, x, rec, k=(1,))["top1"]
    return {**task, "cosine": cos.tolist(), "top1": top1.tolist(), "seconds": seconds}


def evaluate_full(task: dict) -> dict:
    """``wb.evaluate`` of ``task["use"]`` test images with one sampler setting: the summary's means."""
    import workbench as wb

    inv, clf, _ = _load(task["inverter"], task["n"], task["seed"])
    kw = {k: task[k] for k in ("scheduler", "num_inference_steps", "guidance_scale", "feature_guidance_scale",
                               "feature_guidance_steps")}
    s = wb.evaluate(inv, clf, num_images=task["use"], seed=task["seed"], progress=False, batch_size=task["batch_size"],
                    **kw).summary()
    return {**task, **{k: round(float(s[k]), 4) for k in FULL_METRICS}}


FULL_METRICS = ("feature_cosine", "top1", "cross_cosine", "frechet_distance", "psnr", "seconds_per_image")


def run_full(tasks: list[dict], args) -> list[dict]:
    out = []
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.threads,)) as pool:
        for r in pool.map(evaluate_full, tasks):
            print(f"  {r['inverter']:24s} {r['num_inference_steps']} steps, feature guidance "
                  f"{r['feature_guidance_scale']:.3f} last {r['feature_guidance_steps']}  cos {r['feature_cosine']:.4f}  top1 {r['top1']:.3f}  "
                  f"x-cos {r['cross_cosine']:.3f}  FD {r['frechet_distance']:.2f}  "
                  f"{r['seconds_per_image']:.3f} s/img", flush=True)
            out.append(r)
    return out


#: the clock of the speed measurements: CPU seconds of this process (``time.process_time``), which other jobs on a
#: shared machine barely change, unlike wall-clock seconds (``--clock wall``, e.g. on a quiet or a GPU machine)
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _timed(fns: dict, repeats: int, n: int, clock=time.process_time) -> dict[str, float]:
    """Median seconds per image of each callable, run interleaved ``repeats`` times (order alternating)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(repeats):
        for k, fn in list(fns.items())[::(-1 if rep % 2 else 1)]:
            start = clock()
            fn()
            times[k].append(clock() - start)
    return {k: statistics.median(v) / n for k, v in times.items()}


def feature_guidance_sweep(args, sampler: tuple[str, int, float]) -> dict:
    """Step 4: the feature-guidance sweep around ``sampler`` and the speed guard against the optimisation baseline.

    Settings are ``(num_inference_steps, scale, k)``: ``sampler``'s steps and each of ``--fg-steps``, each scale of
    ``--feature-guidances`` at the last k of ``--feature-guidance-steps`` steps; ``(steps, 0, steps)`` is the
    unguided sampler, the reference of the naturalness guard. The speed guard times the optimisation baseline once
    per inverter, interleaved with the unguided sampler, and each candidate interleaved with the unguided sampler:
    speed-up = (optimisation / unguided) / (candidate / unguided).
    """
    import workbench as wb
    from workbench.hooks import extract_features

    sched, steps, guidance = sampler
    base = dict(n=max(args.n, args.fg_n), seed=args.seed, batch_size=args.batch_size, use=args.fg_n,
                scheduler=sched, guidance_scale=guidance)
    grid = [(steps, 0.0, steps)] + sorted({(st, g, min(k, st)) for st in sorted({steps, *args.fg_steps})
                                           for g in args.feature_guidances if g > 0
                                           for k in args.feature_guidance_steps})
    print(f"feature-guidance sweep, {sched} with guidance {guidance}: {len(grid)} settings (steps, scale, last k) x "
          f"{len(args.inverters)} inverters on {args.fg_n} images", flush=True)
    if args.reuse_sweep:  # the quality rows of an earlier run; only the speed guard runs again
        rows = json.loads(Path(args.reuse_sweep).read_text())["feature_guidance"]["rows"]
        print(f"  quality rows reused from {args.reuse_sweep}", flush=True)
    else:
        rows = run_full([dict(base, inverter=i, num_inference_steps=st, feature_guidance_scale=g,
                              feature_guidance_steps=k) for i in args.inverters for st, g, k in grid], args)
    res = {(r["inverter"], r["num_inference_steps"], r["feature_guidance_scale"], r["feature_guidance_steps"]): r
           for r in rows}
    off = {i: res[(i, *grid[0])] for i in args.inverters}

    def natural(i, key):
        r = res[(i, *key)]
        return (r["cross_cosine"] >= off[i]["cross_cosine"] - args.cross_tolerance and
                r["frechet_distance"] <= (1 + args.fd_tolerance) * off[i]["frechet_distance"])

    candidates = sorted((key for key in grid[1:] if all(natural(i, key) for i in args.inverters)),
                        key=lambda key: -sum(res[(i, *key)]["feature_cosine"] for i in args.inverters))
    print(f"natural candidates (steps, scale, last k), best mean cosine first: {candidates}", flush=True)
    # the speed guard
    setups, opt_ratio = {}, {}
    for i in args.inverters:
        inv = wb.load_inverter(i)
        clf = wb.load_classifier(inv.classifier_name)
        feats = extract_features(clf, wb.TinyWorld("test", size=args.time_n, seed=args.seed).images(), inv.layer)
        opt = wb.load_inverter(f"optimization:{i}")
        unguided = dict(scheduler=sched, num_inference_steps=steps, guidance_scale=guidance, feature_guidance_scale=0.0)
        setups[i] = (inv, clf, feats, unguided)
        med = _timed({"unguided": lambda: inv.invert(feats, progress=False, seed=args.seed, **unguided),
                      "optimization": lambda: opt.invert(feats, progress=False, seed=args.seed)},
                     args.repeats, args.time_n, CLOCKS[args.clock])
        opt_ratio[i] = med["optimization"] / med["unguided"]
        print(f"  speed {i}: unguided {med['unguided']:.3f} s/img, optimisation {med['optimization']:.3f} s/img, "
              f"{opt_ratio[i]:.1f}x", flush=True)
    chosen, timings = grid[0], [{"inverter": i, "setting": list(grid[0]), "speedup": round(opt_ratio[i], 2)}
                                for i in args.inverters]
    for key in candidates:
        ratios = {}
        for i, (inv, clf, feats, unguided) in setups.items():
            kw = dict(unguided, num_inference_steps=key[0], feature_guidance_scale=key[1],
                      feature_guidance_steps=key[2], classifier=clf)
            med = _timed({"unguided": lambda: inv.invert(feats, progress=False, seed=args.seed, **unguided),
                          "candidate": lambda: inv.invert(feats, progress=False, seed=args.seed, **kw)},
                         args.repeats, args.time_n, CLOCKS[args.clock])
            ratios[i] = opt_ratio[i] * med["unguided"] / med["candidate"]
            timings.append({"inverter": i, "setting": list(key), "cost_vs_unguided": round(med["candidate"] /
                            med["unguided"], 3), "speedup": round(ratios[i], 2)})
            print(f"  speed {i}: {key}: {med['candidate'] / med['unguided']:.2f}x the unguided cost, "
                  f"{ratios[i]:.1f}x faster than optimisation", flush=True)
        if all(r >= args.min_speedup * (1 + args.speed_margin) for r in ratios.values()):
            chosen = key
            break
    print(f"default: {chosen[0]} steps, feature guidance {chosen[1]} at the last {chosen[2]} steps", flush=True)
    return {"rows": rows, "candidates": [list(c) for c in candidates], "timings": timings,
            "chosen": {"num_inference_steps": chosen[0], "feature_guidance_scale": chosen[1],
                       "feature_guidance_steps": chosen[2]}}


def run_all(tasks: list[dict], args) -> list[dict]:
    tasks = sorted(tasks, key=lambda t: -t["steps"] * t["use"] * (1 if t["guidance"] == 1 else 2))
    out = []
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.threads,)) as pool:
        for r in pool.map(evaluate, tasks):
            print(f"  {r['inverter']:24s} {r['scheduler']:6s} {r['steps']:3d} steps  guidance {r['guidance']:.1f}  "
                  f"cos {statistics.fmean(r['cosine']):.4f}  top1 {statistics.fmean(r['top1']):.3f}  "
                  f"{r['seconds']:.0f} s", flush=True)
            out.append(r)
    return out


def cost(steps: int, guidance: float) -> int:
    """Denoiser evaluations per image."""
    return steps * (1 if guidance == 1.0 else 2)


def mean(xs, k=None) -> float:
    return statistics.fmean(xs[:k] if k else xs)


# ---------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    if args.sampler:
        sched, steps, guidance = args.sampler.split(":")
        t0 = time.time()
        fg = feature_guidance_sweep(args, (sched, int(steps), float(guidance)))
        record = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} torch thread(s) x {args.workers} processes, CPU", "args": vars(args),
                  "sampler": {"scheduler": sched, "steps": int(steps), "guidance": float(guidance)},
                  "feature_guidance": fg, "wall_s": round(time.time() - t0)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        return record
    ref_sched, ref_steps = args.reference.split(":")
    ref_steps = int(ref_steps)
    base = dict(n=args.n, seed=args.seed, batch_size=args.batch_size)
    t0 = time.time()

    # 1. the step sweep
    grid = [(s, k) for s in args.schedulers for k in args.steps if f"{s}:{k}" not in args.skip]
    if (ref_sched, ref_steps) not in grid:
        grid.append((ref_sched, ref_steps))
    print(f"step sweep: {len(grid)} settings x {len(args.inverters)} inverters on {args.n} images", flush=True)
    sweep = run_all([dict(base, inverter=i, scheduler=s, steps=k, guidance=args.sweep_guidance, use=args.n)
                     for i in args.inverters for s, k in grid], args)
    res = {(r["inverter"], r["scheduler"], r["steps"]): r for r in sweep}
    ref = {i: res[(i, ref_sched, ref_steps)] for i in args.inverters}

    def reaches(i, r, k=None):
        return mean(r["cosine"]) >= args.target * mean(ref[i]["cosine"], k) if k is None else \
            mean(r["cosine"]) >= args.target * mean(ref[i]["cosine"], k)

    ok = [(s, k) for s, k in grid if all(reaches(i, res[(i, s, k)]) for i in args.inverters)]
    best = min(ok, key=lambda sk: (sk[1], -sum(mean(res[(i, *sk)]["cosine"]) for i in args.inverters)))
    print(f"cheapest setting reaching {args.target:.0%} of {ref_sched}-{ref_steps}: {best[0]} {best[1]} steps",
          flush=True)
    # the official setting is the reference, but on the tiny base (capped cosine schedule, "leading" spacing) many
    # steps start at a noisier t; check the pick also against the best setting of the sweep
    top = {i: max(mean(res[(i, *sk)]["cosine"]) for sk in grid) for i in args.inverters}
    strict = [sk for sk in grid if all(mean(res[(i, *sk)]["cosine"]) >= args.target * top[i] for i in args.inverters)]
    strict_best = min(strict, key=lambda sk: (sk[1], -sum(mean(res[(i, *sk)]["cosine"]) for i in args.inverters)))
    print(f"cheapest setting reaching {args.target:.0%} of the best setting of the sweep: {strict_best[0]} "
          f"{strict_best[1]} steps" + ("" if strict_best == best else "  (differs: the reference is not the best)"),
          flush=True)

    # 2. the guidance sweep at that sampler, on the first guidance-n images
    gn = min(args.guidance_n, args.n)
    print(f"guidance sweep at {best[0]} {best[1]} steps on {gn} images", flush=True)
    gsweep = run_all([dict(base, inverter=i, scheduler=best[0], steps=best[1], guidance=g, use=gn)
                      for i in args.inverters for g in args.guidances], args)
    gres = {(r["inverter"], r["guidance"]): r for r in gsweep}
    gok = [g for g in args.guidances
           if all(mean(gres[(i, g)]["cosine"]) >= args.target * mean(ref[i]["cosine"], gn) for i in args.inverters)]
    if gok:
        guidance = min(gok, key=lambda g: (cost(best[1], g), -sum(mean(gres[(i, g)]["cosine"]) for i in args.inverters)))
    else:  # no scale reaches the target on the subset: take the best one
        guidance = max(args.guidances, key=lambda g: sum(mean(gres[(i, g)]["cosine"]) for i in args.inverters))
    print(f"default guidance: {guidance}", flush=True)

    # 3. the speed-up against the reference, interleaved on one process
    import workbench as wb
    from workbench.hooks import extract_features

    inv = wb.load_inverter(args.inverters[0])
    clf = wb.load_classifier(inv.classifier_name)
    feats = extract_features(clf, wb.TinyWorld("test", size=args.time_n, seed=args.seed).images(), inv.layer)
    settings = {"reference": dict(scheduler=ref_sched, num_inference_steps=ref_steps,
                                  guidance_scale=args.sweep_guidance, feature_guidance_scale=0.0),
                "default": dict(scheduler=best[0], num_inference_steps=best[1], guidance_scale=guidance,
                                feature_guidance_scale=0.0)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for rep in range(args.repeats):
        order = list(settings.items())[::(-1 if rep % 2 else 1)]
        for key, kw in order:
            start = time.perf_counter()
            inv.invert(feats, num_samples=1, progress=False, seed=args.seed, batch_size=args.batch_size, **kw)
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) / args.time_n for k, v in times.items()}
    speedup = med["reference"] / med["default"]

    # report
    table = []
    for i in args.inverters:
        for s, k in grid:
            r = res[(i, s, k)]
            table.append(dict(inverter=i, scheduler=s, steps=k, guidance=args.sweep_guidance, n=args.n,
                              cosine=round(mean(r["cosine"]), 4), top1=round(mean(r["top1"]), 4),
                              vs_reference=round(mean(r["cosine"]) / mean(ref[i]["cosine"]), 4),
                              seconds_per_image=round(r["seconds"] / args.n, 4)))
        for g in args.guidances:
            r = gres[(i, g)]
            table.append(dict(inverter=i, scheduler=best[0], steps=best[1], guidance=g, n=gn,
                              cosine=round(mean(r["cosine"]), 4), top1=round(mean(r["top1"]), 4),
                              vs_reference=round(mean(r["cosine"]) / mean(ref[i]["cosine"], gn), 4),
                              seconds_per_image=round(r["seconds"] / gn, 4)))
    fg = feature_guidance_sweep(args, (best[0], best[1], guidance))
    record = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch thread(s) x {args.workers} processes, CPU",
              "args": vars(args), "rows": table, "feature_guidance": fg,
              "chosen": {"scheduler": best[0], "steps": best[1], "guidance": guidance},
              "chosen_against_best_setting": {"scheduler": strict_best[0], "steps": strict_best[1]},
              "speedup_vs_reference": {"reference_s_per_image": round(med["reference"], 4),
                                       "default_s_per_image": round(med["default"], 4),
                                       "ratio": round(speedup, 2), "images": args.time_n, "repeats": args.repeats},
              "wall_s": round(time.time() - t0)}
    print(f"\n{'inverter':24s} {'sched':6s} {'steps':>5s} {'guid':>5s} {'n':>4s} {'cosine':>7s} {'top1':>6s} "
          f"{'/ref':>6s} {'s/img':>7s}")
    for r in table:
        print(f"{r['inverter']:24s} {r['scheduler']:6s} {r['steps']:5d} {r['guidance']:5.1f} {r['n']:4d} "
              f"{r['cosine']:7.4f} {r['top1']:6.3f} {r['vs_reference']:6.3f} {r['seconds_per_image']:7.3f}")
    print(f"\nchosen defaults: scheduler={best[0]!r} steps={best[1]} guidance={guidance}")
    print(f"speed-up vs {ref_sched}-{ref_steps} (guidance {args.sweep_guidance}), interleaved, {args.time_n} images, "
          f"median of {args.repeats}: {med['reference']:.3f} s/img vs {med['default']:.3f} s/img = {speedup:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main(parse_args())
