"""``workbench evaluate``: measure one inverter on held-out tiny-world images and print (or save) the summary.

    workbench evaluate --inverter tinyworld-cnn/stages.3 --n 256 --seed 0 --json out.json
    workbench evaluate --inverter tinyworld-vit/blocks.5-decoder --n 64
    workbench evaluate --inverter optimization:tinyworld-cnn/stages.3 --n 16 --steps 100

``--inverter`` is a shipped name (``wb.list_inverters()``), a folder written by ``save_pretrained``, or
``optimization:<classifier>/<layer>`` for the optimisation baseline (it needs no weights).
The JSON file holds ``{"summary": {...}, "attrs": {...}, "rows": [...]}``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inverter", required=True, help="shipped name, folder, or optimization:<classifier>/<layer>")
    p.add_argument("--n", type=int, default=256, help="images to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="reconstructions per image")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (FeatInv) or optimiser steps")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--ood", action="store_true", help="held-out (shape, background) pairs only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write summary, attrs and per-image rows here")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def load_any_inverter(spec: str, *, device: str = "cpu"):
    """``(inverter, classifier)`` from a CLI spec: a shipped name, a folder, or ``optimization:<clf>/<layer>``.

    Example:
        >>> inv, clf = load_any_inverter("optimization:tinyworld-cnn/stages.3")
    """
    from ..inverters import load_inverter
    from ..inverters.optimization import OptimizationInverter
    from ..models import load_classifier

    if spec.startswith("optimization:"):
        clf_name, _, layer = spec.removeprefix("optimization:").rpartition("/")
        if not clf_name or not layer:
            raise ValueError(f"{spec!r}: write optimization:<classifier>/<layer>, e.g. optimization:tinyworld-cnn/stages.3")
        clf = load_classifier(clf_name, device=device)
        return OptimizationInverter(clf, layer), clf
    inv = load_inverter(spec, device=device)
    return inv, load_classifier(inv.classifier_name, device=device)


def main(args) -> int:
    from ..evaluation import evaluate
    from ..tinyworld import TinyWorld

    inv, clf = load_any_inverter(args.inverter, device=args.device)
    dataset = TinyWorld(args.split, size=max(args.n, 2000), seed=0, ood=args.ood)
    kwargs = {} if args.steps is None else {"steps": args.steps}
    table = evaluate(inv, clf, inv.layer, dataset, n=args.n, seed=args.seed, num_samples=args.num_samples,
                     progress=args.progress, **kwargs)
    summ = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in table.summary().items()}
    print(f"{table.attrs['inverter']} on {args.n} {args.split}{' ood' if args.ood else ''} images:")
    for k, v in summ.items():
        print(f"  {k:>18}: {v:.4f}" if isinstance(v, float) else f"  {k:>18}: {v}")
    if args.json:
        out = {"inverter": args.inverter, "summary": summ,
               "attrs": {k: v for k, v in table.attrs.items() if isinstance(v, (str, int, float, dict))},
               "rows": json.loads(table.to_json(orient="records"))}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
