"""Every inversion graded by judges that no method touches: the sampler choice on val, the comparison on test, and
the layer-factor table (issue 26).

Three steps, each a list of ``wb.evaluate`` jobs run in ``--workers`` processes of one torch thread; every job grades
one sample of each of ``--n`` images by the shipped judges (``tinyworld-judge-*``), the factor reader and the KID
against 2,000 separate real images, with bootstrap 95 % intervals:

1. ``sampler`` (on the **val** split, ``TinyWorld("val", size=2000)``): FeatInv's candidate samplers on both
   last-layer inverters. The default is the candidate with the highest mean, over both inverters, of the judges'
   mean top-1 agreement plus the factor reader's mean class-like accuracy (shape, background, distractor); own-model
   metrics take no part. If feature guidance does not win by that rule, it is off by default.
2. ``compare`` (on the **test** split, ``TinyWorld("test", size=2000)``): at both last layers, FeatInv (the paper's
   method, unguided), FeatInv + feature guidance (uses the model's gradients), the pooled FeatInv (CNN), the
   feature-matching decoder, the pixel-loss-only decoder, retrieval (nearest of 20,000 training images by map cosine)
   and the optimisation baseline.
3. ``layers`` (test): every shipped FeatInv inverter at the default sampler, for the layer-factor table: how much of
   each factor survives inversion, from 0 (no better than another real image) to 1 (as well as the image itself).

Writes ``--out-dir``/judged_<step>.json (rows: summaries with intervals) and prints a table per step; ``layers`` also
writes the figure ``docs/img/layer_factors.png``.

Usage:
    nohup .venv/bin/python benchmarks/judged.py sampler > benchmarks/results/judged_sampler.log 2>&1 &
    nohup .venv/bin/python benchmarks/judged.py compare > benchmarks/results/judged_compare.log 2>&1 &
    nohup .venv/bin/python benchmarks/judged.py layers > benchmarks/results/judged_layers.log 2>&1 &
    .venv/bin/python benchmarks/judged.py compare --n 8 --methods FeatInv retrieval     # smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

LAST = ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"]
ALL_FEATINV = ["tinyworld-cnn/stages.2", "tinyworld-cnn/stages.3", "tinyworld-cnn/stages.3-pooled",
               "tinyworld-vit/blocks.2", "tinyworld-vit/blocks.5"]
#: The sampler candidates of step 1 (name -> FeatInv's invert keyword arguments).
CANDIDATES = {
    "DDIM 5, unguided": {"num_inference_steps": 5, "feature_guidance_scale": 0.0},
    "DDIM 8, unguided": {"num_inference_steps": 8, "feature_guidance_scale": 0.0},
    "DDIM 5, feature guidance 0.025 x 2": {"num_inference_steps": 5, "feature_guidance_scale": 0.025,
                                           "feature_guidance_steps": 2},
    "DDIM 8, feature guidance 0.025 x 2": {"num_inference_steps": 8, "feature_guidance_scale": 0.025,
                                           "feature_guidance_steps": 2},
}
#: Since 2026-12-07 feature guidance never acts at the final step (issue 26): the guided candidates measured before
#: that acted at the last 2 steps; rerun them with ``--candidates`` to measure the current sampler.
UNGUIDED = {"feature_guidance_scale": 0.0}
GUIDED = {"feature_guidance_scale": 0.025, "feature_guidance_steps": 2}
METHODS = ["FeatInv", "FeatInv + feature guidance", "FeatInv (pooled)", "decoder", "decoder (pixel loss only)",
           "retrieval", "optimisation"]
CLASS_LIKE = ("shape", "background", "distractor")
#: The other inverted classifier, graded alongside the judges as the old unaugmented reference (not a judge: it is
#: left out of every choice and of the judges' mean).
REFERENCE = {"tinyworld-cnn": "tinyworld-vit", "tinyworld-vit": "tinyworld-cnn"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["sampler", "compare", "layers"])
    p.add_argument("--n", type=int, default=256, help="images per job")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--bank", type=int, default=20_000, help="training images in the retrieval bank")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--figure", default="docs/img/layer_factors.png")
    return p.parse_args(argv)


def jobs_of(args: argparse.Namespace) -> list[dict]:
    """The evaluate jobs of a step: ``{"split", "spec", "method", "kwargs"}`` each."""
    if args.step == "sampler":
        return [{"split": "val", "spec": s, "method": c, "kwargs": CANDIDATES[c]}
                for s in LAST for c in args.candidates]
    if args.step == "layers":
        return [{"split": "test", "spec": s, "method": "FeatInv", "kwargs": {}} for s in ALL_FEATINV] + [
            {"split": "test", "spec": f"{s}-decoder", "method": "decoder", "kwargs": {}} for s in LAST]
    specs = {"FeatInv": ("{}", {**UNGUIDED}), "FeatInv + feature guidance": ("{}", GUIDED),
             "FeatInv (pooled)": ("{}-pooled", {}), "decoder": ("{}-decoder", {}),
             "decoder (pixel loss only)": ("{}-decoder-pixel", {}), "retrieval": ("retrieval:{}", {}),
             "optimisation": ("optimization:{}", {})}
    out = []
    for s in LAST:
        for m in args.methods:
            fmt, kw = specs[m]
            if m == "FeatInv (pooled)" and "cnn" not in s:
                continue
            out.append({"split": "test", "spec": fmt.format(s), "method": m, "kwargs": kw})
    return out


def load(spec: str, clf, bank: int):
    """The inverter of a job spec (``retrieval:`` builds the bank)."""
    import workbench as wb
    from workbench.inverters.retrieval import RetrievalInverter

    if spec.startswith("retrieval:"):
        layer = spec.split("/")[-1]
        return RetrievalInverter.from_dataset(clf, layer, wb.TinyWorld("train", size=bank, seed=0))
    return wb.load_inverter(spec)


def run_job(job: dict, n: int, seed: int, bank: int) -> dict:
    """One ``wb.evaluate`` with the judges; the summary (with intervals) and the factor bounds."""
    torch.set_num_threads(1)
    import workbench as wb

    from workbench.judges import load_judges

    clf_name = job["spec"].split(":")[-1].split("/")[0]
    clf = wb.load_classifier(clf_name)
    inv = load(job["spec"], clf, bank)
    dataset = wb.TinyWorld(job["split"], size=2000, seed=0)
    # the shipped judges, and the other inverted classifier (trained without augmentation) as the old reference
    other = REFERENCE[clf_name]
    judges = {**load_judges(), other: wb.load_classifier(other)}
    table = wb.evaluate(inv, clf, dataset=dataset, num_images=n, seed=seed, progress=False, judges=judges,
                        **job["kwargs"])
    s = table.summary()
    return {**job, "n": n, "layer": inv.layer, "classifier": clf_name, "method_name": table.attrs["method"],
            "summary": {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                        for k, v in s.items()},
            "factor_bounds": table.attrs.get("factor_bounds"),
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}


def judge_score(s: dict) -> tuple[float, float]:
    """``(mean judge top-1 agreement, mean class-like factor accuracy)`` of a summary."""
    agree = [v for k, v in s.items() if k.startswith("judge_agree[tinyworld-judge-") and not k.endswith(("_lo", "_hi"))]
    factors = [s[f"factor[{f}]"] for f in CLASS_LIKE]
    return sum(agree) / len(agree), sum(factors) / len(factors)


def fmt(s: dict, key: str, digits: int = 3) -> str:
    v, lo, hi = s.get(key), s.get(f"{key}_lo"), s.get(f"{key}_hi")
    if v is None:
        return "-"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None else f"{v:.{digits}f}"


def print_rows(rows: list[dict]) -> None:
    judges = sorted({k[12:-1] for r in rows for k in r["summary"] if k.startswith("judge_agree[")
                     and not k.endswith(("_lo", "_hi"))})
    for r in rows:
        s = r["summary"]
        print(f"\n## {r['spec']} | {r['method']} ({r['method_name']}) | {r['split']} n={r['n']} | uses model gradients: "
              f"{s.get('uses_model_gradients')}")
        print(f"  own (graded model): cosine {fmt(s, 'feature_cosine')}  top-1 {fmt(s, 'top1')}")
        for j in judges:
            print(f"  judge {j:26s} agree {fmt(s, f'judge_agree[{j}]')}  cosine {fmt(s, f'judge_cosine[{j}]')}")
        print("  factors: " + "  ".join(f"{f} {fmt(s, f'factor[{f}]')}" for f in
                                         ("shape", "background", "distractor", "hue", "size", "x", "y", "rotation",
                                          "saturation")))
        print(f"  KID {fmt(s, 'kid', 4)}  FD(originals) {s['frechet_distance']:.3f}  s/img {s['seconds_per_image']:.3f}")


def choose_sampler(rows: list[dict]) -> str:
    """Step 1's rule: the candidate with the highest mean of judge agreement plus class-like factor accuracy."""
    by = {}
    for r in rows:
        a, f = judge_score(r["summary"])
        by.setdefault(r["method"], []).append(a + f)
    scores = {c: sum(v) / len(v) for c, v in by.items()}
    print("\nsampler choice on val (mean over both inverters of judge agreement + class-like factor accuracy):")
    for c, v in sorted(scores.items(), key=lambda kv: -kv[1]):
        print(f"  {v:.4f}  {c}")
    best = max(scores, key=scores.get)
    print(f"chosen: {best}")
    return best


def layer_table(rows: list[dict], figure: str) -> None:
    import matplotlib
    matplotlib.use("Agg")

    from workbench.judges import layer_factor_table
    from workbench.plot import table_heatmap

    names = {r["spec"]: r for r in rows}
    table = layer_factor_table({k: r["summary"] for k, r in names.items()},
                               {k: r["factor_bounds"] for k, r in names.items()})
    print("\nhow much of each factor survives inversion (0: no better than another real image, 1: as the image "
          "itself):")
    print(table.round(2).to_string())
    fig = table_heatmap(table, title="how much of each factor survives inversion (1: as the image itself)")
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120, bbox_inches="tight")
    print(f"figure: {figure}")


def main(args: argparse.Namespace) -> list[dict]:
    jobs = jobs_of(args)
    print(f"{args.step}: {len(jobs)} jobs, n={args.n}, {args.workers} workers x 1 thread, {platform.machine()}, "
          f"{datetime.now(timezone.utc).isoformat(timespec='minutes')}", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_job, jobs, [args.n] * len(jobs), [args.seed] * len(jobs), [args.bank] * len(jobs)))
    out = Path(args.out_dir) / f"judged_{args.step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print_rows(rows)
    if args.step == "sampler":
        choose_sampler(rows)
    if args.step == "layers":
        layer_table(rows, args.figure)
    print(f"\nwrote {out}")
    return rows


if __name__ == "__main__":
    main(parse_args())
