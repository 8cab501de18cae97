"""``workbench invert``: invert one of your own image files at a layer and save the figure.

    workbench invert --classifier tinyworld-cnn --layer stages.3 --image photo.jpg [--samples 4] [--out FILE]

Any size and mode (RGBA, grayscale, 16-bit, palette) is converted through the classifier's
preprocessing to its input size. The figure shows original | samples | invariance map.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench invert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", required=True)
    p.add_argument("--layer", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--inverter", default=None, help="inverter name or folder (default: CLASSIFIER/LAYER)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output PNG (default: outputs/invert_<image>_<layer>.png)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(args) -> int:
    from ..inverters import load_inverter
    from ..models import load_classifier, load_image
    from ..plot import inversion_figure

    path = Path(args.image)
    if not path.is_file():
        raise SystemExit(f"workbench invert: --image {args.image!r} does not exist")
    clf = load_classifier(args.classifier, device=args.device)
    x = load_image(path, clf)
    inv = load_inverter(args.inverter or f"{args.classifier}/{args.layer}", classifier=args.classifier,
                        layer=args.layer, device=args.device)
    samples = inv.invert_images(x, clf, num_samples=args.samples, steps=args.steps, guidance=args.guidance,
                                seed=args.seed)
    out = Path(args.out or f"outputs/invert_{path.stem}_{args.layer}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = inversion_figure(x, samples, row_labels=[f"{args.classifier}\n{args.layer}"],
                           title=f"{path.name}: what {args.classifier} keeps at {args.layer}")
    fig.savefig(out, dpi=100)
    pred = clf(x.to(args.device)).argmax(1).item()
    preds = clf(samples[0].to(args.device)).argmax(1).tolist()
    print(f"prediction on the image: {pred}; on the samples: {preds}\nwrote {out}")
    return 0
