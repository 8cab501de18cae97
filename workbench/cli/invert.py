"""``workbench invert``: invert one of your own image files at a layer and save the figure.

    workbench invert --classifier tinyworld-cnn --layer stages.3 --image photo.jpg [--num-samples 4] [--out FILE]

Any size and mode (RGBA, grayscale, 16-bit, palette) is converted through the classifier's
preprocessing to its input size. The figure shows original | samples | invariance map, and the
classifier's prediction on the image and on each sample is printed (class names where it has them).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench invert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", required=True, help="tinyworld-cnn, tinyworld-vit or any timm name")
    p.add_argument("--layer", required=True)
    p.add_argument("--image", required=True, help="an image file of any size and mode")
    p.add_argument("--inverter", default=None, help="inverter name or folder (default: CLASSIFIER/LAYER)")
    p.add_argument("--num-samples", type=int, default=4, help="samples of the image's features")
    p.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps (default: the inverter's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale; 1 disables it (default: the inverter's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="samples drawn at once (default: the inverter's)")
    p.add_argument("--out", default=None, help="output PNG (default: outputs/invert_<image>_<layer>.png)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def class_names(classifier) -> list[str] | None:
    """Names by class index: the classifier's ``class_names``, the tiny world's classes for a shipped classifier,
    else ``None``."""
    from ..tinyworld import CLASSES
    from ..zoo import SHIPPED_CLASSIFIERS

    names = getattr(classifier, "class_names", None)
    if names is None and getattr(classifier, "name", None) in SHIPPED_CLASSIFIERS:
        names = CLASSES
    return None if names is None else list(names)


def main(args) -> int:
    import matplotlib.pyplot as plt

    from ..inverters import load_inverter
    from ..models import load_classifier, load_image
    from ..plot import inversion_figure

    path = Path(args.image)
    clf = load_classifier(args.classifier, device=args.device)
    x = load_image(path, clf)
    inv = load_inverter(args.inverter or f"{args.classifier}/{args.layer}", classifier=args.classifier,
                        layer=args.layer, device=args.device)
    options = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale,
               "batch_size": args.batch_size}
    samples = inv.invert_images(x, clf, num_samples=args.num_samples, seed=args.seed,
                                **{k: v for k, v in options.items() if v is not None})
    out = Path(args.out or f"outputs/invert_{path.stem}_{args.layer}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = inversion_figure(x, samples, row_labels=[f"{args.classifier}\n{args.layer}"],
                           title=f"{path.name}: what {args.classifier} keeps at {args.layer}")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    with torch.no_grad():
        pred = clf(x.to(args.device)).argmax(1).item()
        preds = clf(samples[0].to(args.device)).argmax(1).tolist()
    names = class_names(clf) or []

    def label(k: int) -> str:
        return names[k] if k < len(names) else str(k)

    print(f"prediction on the image: {label(pred)}; on the samples: {', '.join(map(label, preds))}\nwrote {out}")
    return 0
