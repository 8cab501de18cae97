"""``workbench evaluate``: measure one inverter on held-out tiny-world images and print (or save) the summary.

    workbench evaluate --inverter tinyworld-cnn/stages.3 --num-images 256 --seed 0 --json out.json
    workbench evaluate --inverter tinyworld-vit/blocks.5-decoder --num-images 64
    workbench evaluate --inverter optimization:tinyworld-cnn/stages.3 --num-images 16 --num-inference-steps 100

``--inverter`` is anything ``wb.load_inverter`` takes: a shipped name (``wb.list_inverters()``), a folder
written by ``save_pretrained``, or ``optimization:<classifier>/<layer>`` for the optimisation baseline (it needs
no weights). The JSON file holds ``{"summary": {...}, "attrs": {...}, "rows": [...]}``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def parse_args(argv=None):
    from . import HelpFormatter, add_common

    p = argparse.ArgumentParser(prog="workbench evaluate", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--inverter", required=True,
                   help="shipped name, folder (a training run's --out too), or optimization:<classifier>/<layer>")
    p.add_argument("--num-images", type=int, default=256, help="held-out images to evaluate")
    p.add_argument("--num-samples", type=int, default=1, help="reconstructions per image")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="denoising steps (FeatInv) or optimiser steps (the optimisation baseline); None: the "
                        "inverter's")
    p.add_argument("--batch-size", type=int, default=None, help="maps inverted at once (None: the inverter's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the tiny world's split")
    p.add_argument("--ood", action="store_true", help="held-out (shape, background) pairs only")
    p.add_argument("--json", default=None, help="write summary, attrs and per-image rows here (None: print only)")
    add_common(p)
    return p.parse_args(argv)


def invert_options(inverter, args) -> dict:
    """The keyword arguments of ``inverter.invert`` that the flags set: ``--num-inference-steps`` goes to
    ``num_inference_steps`` (a kind that samples, FeatInv) or ``num_optimizer_steps`` (the optimisation baseline),
    whichever the kind takes (``uses_sampler``, ``invert_options``)."""
    takes = (("num_inference_steps",) if getattr(inverter, "uses_sampler", False) else ()) + tuple(
        getattr(inverter, "invert_options", ()))
    options = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if args.num_inference_steps is not None:
        name = next((k for k in ("num_inference_steps", "num_optimizer_steps") if k in takes), None)
        if name is None:
            raise SystemExit(f"--num-inference-steps: {type(inverter).__name__} takes no steps; leave the flag out")
        options[name] = args.num_inference_steps
    return options


def check_args(args) -> None:
    """Every count an int >= 1 and the seed in ``[0, 2**64)``, before any model loads."""
    from ..checks import check_image_count, check_seed, checked_int

    for flag in ("num_images", "num_samples", "num_inference_steps", "batch_size"):
        if getattr(args, flag) is not None:
            checked_int(getattr(args, flag), "--" + flag.replace("_", "-"), minimum=1)
    check_seed(args.seed, "--seed")
    # the rendered test images, and the inversions of each, are held at once
    check_image_count(args.num_images, "--num-images", copies=1 + (args.num_samples or 1))


#: summary entries that count things: printed as whole numbers (the summary Series holds them as floats)
COUNTS = ("n_images", "num_samples", "nonfinite")


def format_value(key: str, value) -> str:
    """A summary value as printed: counts (:data:`COUNTS`) as whole numbers, other numbers to 4 decimals.

    Example:
        >>> format_value("n_images", 8.0), format_value("feature_cosine", 0.95712)
        ('8', '0.9571')
    """
    if key in COUNTS and isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def main(args) -> int:
    from ..evaluation import evaluate
    from ..inverters import load_inverter
    from ..models import load_classifier
    from ..tinyworld import TinyWorld

    check_args(args)
    inv = load_inverter(args.inverter, device=args.device)
    clf = load_classifier(inv.classifier_name, device=args.device)
    dataset = TinyWorld(args.split, size=max(args.num_images, 2000), seed=0, ood=args.ood)
    table = evaluate(inv, clf, inv.layer, dataset, num_images=args.num_images, seed=args.seed,
                     num_samples=args.num_samples, progress=args.progress, **invert_options(inv, args))
    summ = {k: (None if isinstance(v, float) and math.isnan(v) else int(v) if k in COUNTS else v)
            for k, v in table.summary().items()}
    print(f"{table.attrs['inverter']} on {args.num_images} {args.split}{' ood' if args.ood else ''} images:")
    for k, v in summ.items():
        print(f"  {k:>18}: {format_value(k, v)}")
    if args.json:
        out = {"inverter": args.inverter, "summary": summ,
               "attrs": {k: v for k, v in table.attrs.items() if isinstance(v, (str, int, float, dict))},
               "rows": json.loads(table.to_json(orient="records"))}
        write_json(Path(args.json), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
