"""``workbench invert``: invert one of your own image files at a layer and save the figure.

    workbench invert --classifier tinyworld-cnn --layer stages.3 --image photo.jpg [--num-samples 4] [--out FILE]
    workbench invert --inverter runs/x --image photo.jpg     # a trained inverter's folder names both

Any size and mode (RGBA, grayscale, 16-bit, palette) is converted through the classifier's
preprocessing to its input size. The figure shows original | samples | invariance map, with the
classifier's prediction and confidence on the image; the predictions on the samples are printed
(class names where it has them). The tiny-world classifiers know only 32 px renderings of 8 shapes:
a photo gets a warning, and needs a real-scale classifier and inverter (``wb.presets``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def parse_args(argv=None):
    from . import HelpFormatter, add_common

    p = argparse.ArgumentParser(prog="workbench invert", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--classifier", default=None,
                   help="tinyworld-cnn, tinyworld-vit or any timm name (None: the one --inverter was trained for)")
    p.add_argument("--layer", default=None,
                   help="the layer to invert, as named by `workbench layers MODEL` (None: --inverter's)")
    p.add_argument("--image", required=True, help="an image file of any size and mode")
    p.add_argument("--inverter", default=None,
                   help="inverter name or folder, a training run's --out too (None: CLASSIFIER/LAYER)")
    p.add_argument("--num-samples", type=int, default=4, help="samples of the image's features")
    p.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps (None: the inverter's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale; 1 disables it (None: the inverter's)")
    p.add_argument("--batch-size", type=int, default=None, help="samples drawn at once (None: the inverter's)")
    p.add_argument("--out", default=None, help="output PNG (None: outputs/invert_<image>_<layer>.png)")
    add_common(p, progress=False)
    args = p.parse_args(argv)
    if args.inverter is None and (args.classifier is None or args.layer is None):
        p.error("name --classifier and --layer, or --inverter (a shipped name or a folder, which knows both)")
    return args


def fill_from_inverter(args) -> None:
    """Set ``args.classifier`` and ``args.layer``, where left out, from ``--inverter``'s config (a shipped name, a
    ``save_pretrained`` folder or a training run's folder), reading only its ``config.json``."""
    from ..inverters import inverter_folder, list_inverters
    from ..inverters.interface import read_config
    from ..paths import data_dir

    if args.inverter is None or (args.classifier and args.layer):
        return
    spec = args.inverter
    if spec.startswith("optimization:"):
        clf, _, layer = spec.removeprefix("optimization:").rpartition("/")
        cfg = {"classifier_name": clf, "layer": layer}
    else:
        folder = inverter_folder(spec)
        if not (folder / "config.json").is_file() and spec in list_inverters():
            folder = data_dir() / "inverters" / spec
        if not (folder / "config.json").is_file():
            from ..inverters import load_inverter

            load_inverter(spec)  # raises the loader's error, with its advice
        cfg = read_config(folder)
    args.classifier = args.classifier or cfg["classifier_name"]
    args.layer = args.layer or cfg["layer"]


def class_names(classifier) -> list[str] | None:
    """Names by class index: the classifier's ``class_names``, the tiny world's classes for a shipped classifier,
    else ``None``."""
    from ..tinyworld import CLASSES
    from ..zoo import SHIPPED_CLASSIFIERS

    names = getattr(classifier, "class_names", None)
    if names is None and getattr(classifier, "name", None) in SHIPPED_CLASSIFIERS:
        names = CLASSES
    return None if names is None else list(names)


def output_path(args) -> Path:
    """Where the figure goes: ``--out``, or ``outputs/invert_<image>_<layer>.png``."""
    return Path(args.out or f"outputs/invert_{Path(args.image).stem}_{args.layer}.png")


def check_args(args) -> None:
    """Every argument, before any model loads: counts are ints >= 1, the guidance scale finite and >= 0, the seed
    in ``[0, 2**64)``, ``--image`` an existing file (not a folder), ``--out`` a file type matplotlib writes."""
    from matplotlib.figure import Figure

    from ..checks import check_image_count, check_seed, checked_float, checked_int
    from ..errors import ArgumentValueError, ImageReadError

    check_image_count(args.num_samples, "--num-samples", copies=3)       # noise, latents and images per sample
    for flag in ("num_inference_steps", "batch_size"):
        if getattr(args, flag) is not None:
            checked_int(getattr(args, flag), "--" + flag.replace("_", "-"), minimum=1)
    if args.guidance_scale is not None:
        checked_float(args.guidance_scale, "--guidance-scale", minimum=0.0)
    check_seed(args.seed, "--seed")
    image = Path(args.image)
    if image.is_dir():
        raise ImageReadError(f"--image {str(image)!r} is a folder, not an image file; name one of the images in it")
    if not image.is_file():
        raise FileNotFoundError(f"--image {str(image)!r}: no such file")
    kinds, out = Figure().canvas.get_supported_filetypes(), output_path(args)
    suffix = out.suffix.lstrip(".").lower()
    if suffix not in kinds:
        raise ArgumentValueError(f"--out {str(out)!r}: matplotlib writes no {suffix or 'suffix-less'!r} files; end the "
                                 f"name with one of {', '.join('.' + k for k in sorted(kinds))}")


def save_figure(fig, out: Path) -> None:
    """Write ``fig`` to ``out`` atomically: to a temporary name beside it, then renamed, so a failure leaves no
    half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".").lower())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def warn_off_world(classifier, x: torch.Tensor, source_size: tuple[int, int]) -> None:
    """Print :func:`~workbench.image_check.warn_if_not_tiny_world`'s warning, if any, as a command's line on
    stderr (``workbench invert: warning: ...``)."""
    import sys
    import warnings

    from ..errors import OffDistributionWarning
    from ..image_check import warn_if_not_tiny_world

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OffDistributionWarning)
        warn_if_not_tiny_world(classifier, x, source_size=source_size)
    for w in caught:
        print(f"workbench invert: warning: {w.message}", file=sys.stderr)


def main(args) -> int:
    import matplotlib.pyplot as plt

    from ..inverters import load_inverter
    from ..models import load_classifier, prepare_image, read_image
    from ..plot import inversion_figure

    fill_from_inverter(args)
    check_args(args)
    path = Path(args.image)
    image = read_image(path)  # a file that is not an image fails here, before any model loads
    clf = load_classifier(args.classifier, device=args.device)
    x = prepare_image(image, clf)
    warn_off_world(clf, x, image.size)  # a photo given to a tiny-world classifier: say so before the answer
    inv = load_inverter(args.inverter or f"{args.classifier}/{args.layer}", classifier=args.classifier,
                        layer=args.layer, device=args.device)
    options = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale,
               "batch_size": args.batch_size}
    samples = inv.invert_images(x, clf, num_samples=args.num_samples, seed=args.seed,
                                **{k: v for k, v in options.items() if v is not None})
    with torch.no_grad():
        probs = clf(x.to(args.device)).softmax(1)[0]
        preds = clf(samples[0].to(args.device)).argmax(1).tolist()
    names = class_names(clf) or []

    def label(k: int) -> str:
        return names[k] if k < len(names) else str(k)

    pred, p = int(probs.argmax()), float(probs.max())
    out = output_path(args)
    fig = inversion_figure(x, samples, row_labels=[f"{args.classifier}\n{args.layer}\n{label(pred)} p={p:.2f}"],
                           title=f"{path.name}: what {args.classifier} keeps at {args.layer} "
                                 f"(it predicts {label(pred)}, p = {p:.2f})")
    try:
        save_figure(fig, out)
    finally:
        plt.close(fig)
    print(f"prediction on the image: {label(pred)}; on the samples: {', '.join(map(label, preds))}\n"
          f"confidence on the image: p({label(pred)}) = {p:.2f}\nwrote {out}")
    return 0
