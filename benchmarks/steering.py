"""Which steering edits make the inverted image show the concept? The measured table of docs/steering.md.

Held-out hearts, crescents and crosses of the tiny world are steered towards a target class (star, and circle)
by each edit method of :mod:`workbench.analysis.steering`, at ``stages.3`` and ``stages.2`` of ``tinyworld-cnn``,
over an alpha sweep; every sweep is inverted with FeatInv from one noise draw per image and sample, shared
across alphas. Per (method, alpha): p(target) of the inverted images (the CNN, and ``tinyworld-vit`` as an
independent judge), p(target) of the edited map, their gap, and the drift of position, size, hue and background
read out of the inversions, in dataset standard deviations from the unsteered inversion.

    .venv/bin/python benchmarks/steering.py --threads 1 --json benchmarks/results/steering.json
"""
from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

import workbench as wb
from workbench.analysis import class_probabilities, composition, steering_studies
from workbench.tinyworld import CLASSES

SOURCES = ("heart", "crescent", "cross")
FACTORS = ("x", "y", "size", "hue", "background")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-fit", type=int, default=2000, help="training images the concepts, prototypes and priors are fitted on")
    p.add_argument("--n-per-class", type=int, default=4, help="held-out images per source class")
    p.add_argument("--num-samples", type=int, default=2, help="inversions per (image, alpha), each with its own shared noise")
    p.add_argument("--targets", default="star,circle")
    p.add_argument("--layers", default="stages.3,stages.2")
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the table and the goal verdicts here")
    return p.parse_args(argv)


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    start = time.time()
    cnn, vit = wb.load_classifier("tinyworld-cnn"), wb.load_classifier("tinyworld-vit")
    fit = wb.TinyWorld("train", size=args.n_fit, seed=2)
    x, y, factors = fit.images(), fit.labels(), fit.factor_table()
    readout = composition.fit_factor_readout(cnn, "stages.0", x, factors, factors=list(FACTORS))
    scale = {f: float(factors[f].std()) for f in ("x", "y", "size", "hue")}
    test = wb.TinyWorld("test", size=40 * args.n_per_class, seed=7)
    xt, yt = test.images(), test.labels()
    idx = torch.cat([torch.nonzero(yt == CLASSES.index(c))[:args.n_per_class, 0] for c in SOURCES])
    images = xt[idx]
    studies = {}
    for target_name in args.targets.split(","):          # the whole sweep for one target, then the next
        target = CLASSES.index(target_name)
        for layer in args.layers.split(","):
            inverter = wb.load_inverter(f"tinyworld-cnn/{layer}")
            feats = wb.extract_features(cnn, x, layer)
            methods = steering_studies.standard_edits(cnn, images, feats, y, target, layer=layer)
            for method, (edit, alphas) in methods.items():
                key = f"{layer} | {target_name} | {method}"
                table, samples = steering_studies.steering_study(
                    cnn, inverter, images, edit, alphas, target_class=target, readout=readout,
                    num_samples=args.num_samples, num_inference_steps=args.num_inference_steps, progress=False)
                table["p_target_vit"] = class_probabilities(vit, samples.reshape(-1, *samples.shape[3:]))[:, target].numpy()
                studies[key] = table
                print(f"{time.time() - start:7.0f}s {key}: p_target by alpha "
                      f"{table.groupby('alpha').p_target.mean().round(3).tolist()}", flush=True)
                result = report(studies, scale, args, start)          # written after every study
    print(pd.DataFrame(result["table"]).round(3).to_string())
    print(pd.DataFrame(result["goal"]).round(3).to_string())
    return result


def report(studies, scale, args, start) -> dict:
    """The table and the goal verdicts of the studies so far, written to ``args.json`` if given."""
    summary = steering_studies.steering_table(studies, factors=FACTORS, factor_scale=scale)
    summary["p_target_vit"] = [float(studies[m][studies[m].alpha == a].p_target_vit.mean()) for m, a in summary.index]
    goal = steering_studies.steering_goal(summary)
    result = {"args": vars(args), "factor_scale": scale, "seconds": round(time.time() - start, 1),
              "images": f"{args.n_per_class} held-out test images each of {', '.join(SOURCES)}",
              "table": summary.reset_index().to_dict(orient="records"),
              "goal": goal.reset_index().to_dict(orient="records")}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result

if __name__ == "__main__":
    main(parse_args())


def markdown(paths) -> str:
    """The Markdown tables of docs/steering.md from this script's JSON files."""
    lines = ["| layer | target | method | alpha | p(target), image | p(target), ViT on image | p(target), edited map | "
             "gap | drift x | drift y | drift size | drift hue | background changed |", "|" + "---|" * 13]
    goals = ["| layer | target | method | best alpha | p(target), image | p(target), map | max drift x/y/size | goal |",
             "|" + "---|" * 8]
    for path in paths:
        with open(path) as fh:
            result = json.load(fh)
        for r in result["table"]:
            layer, target, method = r["method"].split(" | ")
            lines.append(f"| {layer} | {target} | {method} | {r['alpha']:g} | {r['p_target']:.3f} | "
                         f"{r['p_target_vit']:.3f} | {r['p_target_map']:.3f} | {r['off_manifold_gap']:.3f} | "
                         f"{r['drift_x']:.2f} | {r['drift_y']:.2f} | {r['drift_size']:.2f} | {r['drift_hue']:.2f} | "
                         f"{r['drift_background']:.2f} |")
        for r in result["goal"]:
            layer, target, method = r["method"].split(" | ")
            goals.append(f"| {layer} | {target} | {method} | {r['alpha']:g} | {r['p_target']:.3f} | "
                         f"{r['p_target_map']:.3f} | {r['max_drift']:.2f} | {'**reached**' if r['reached'] else 'no'} |")
    return "\n".join(lines) + "\n\n" + "\n".join(goals) + "\n"
