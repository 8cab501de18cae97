"""``workbench demo`` (``make demo``): what do the tiny world's CNN and ViT see at two layers each?

Loads the shipped world, classifiers and FeatInv inverters, inverts ``--num-images`` held-out test images
at the last and a middle layer of both classifiers with ``--num-samples`` samples each, writes
``OUT/demo.png`` (a grid: a row per image, its original, then per layer its samples and their invariance map) and
``OUT/demo_metrics.csv``, and prints the metrics table: ``judge_agreement`` (the shipped judges' consensus class of
each sample against theirs of its original: graded by models that made none of the images) first, then the inverted
classifier's own ``feature_cosine`` and ``top1_agreement`` (whose gradients the default sampler follows).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..errors import ArgumentValueError

#: (classifier, layer) pairs the demo inverts, with their shipped inverters.
DEMO_LAYERS = [("tinyworld-cnn", "stages.3"), ("tinyworld-cnn", "stages.2"),
               ("tinyworld-vit", "blocks.5"), ("tinyworld-vit", "blocks.2")]


def parse_args(argv=None):
    from . import HelpFormatter, add_common

    p = argparse.ArgumentParser(prog="workbench demo", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--num-images", type=int, default=8, help="held-out test images")
    p.add_argument("--num-samples", type=int, default=4, help="samples per image and layer")
    p.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps (None: FeatInv's)")
    p.add_argument("--out", default="outputs", help="folder for demo.png and demo_metrics.csv")
    add_common(p)
    return p.parse_args(argv)


def run(*, num_images: int = 8, num_samples: int = 4, num_inference_steps: int | None = None, seed: int = 0,
        device: str = "cpu", progress: bool = True):
    """Invert ``num_images`` test images at every :data:`DEMO_LAYERS` pair, ``num_samples`` samples each.

    Returns:
        ``(images [N, 3, 32, 32], {(classifier, layer): samples [N, S, 3, 32, 32]}, metrics DataFrame)``.

    Example:
        >>> images, samples, table = run(num_images=2, num_samples=2)
    """
    import pandas as pd

    from ..inverters import load_inverter
    from ..inverters.featinv import invariance_map
    from ..metrics import feature_cosine, topk_agreement
    from ..models import load_classifier
    from ..tinyworld import TinyWorld

    if num_images < 1 or num_samples < 2:
        raise ArgumentValueError(f"the demo needs num_images >= 1 and num_samples >= 2 (for the invariance map), got "
                                 f"num_images={num_images}, num_samples={num_samples}")
    from ..judges import judge_readings

    options = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    images = TinyWorld("test", size=num_images, seed=seed).images()
    judged_originals = judge_readings(images, reader=None).get("judge_predicted")   # the judges' class of each
    results, rows = {}, []
    classifiers = {}
    for clf_name, layer in DEMO_LAYERS:
        clf = classifiers.setdefault(clf_name, load_classifier(clf_name, device=device))
        inv = load_inverter(f"{clf_name}/{layer}", device=device)
        t0 = time.perf_counter()
        out = inv.invert_images(images, clf, num_samples=num_samples, seed=seed, progress=progress, **options)
        dt = time.perf_counter() - t0
        results[(clf_name, layer)] = out
        flat = out.flatten(0, 1)
        orig = images.repeat_interleave(num_samples, 0)
        cos = feature_cosine(clf, layer, orig, flat)
        agree = topk_agreement(clf, orig, flat, k=(1,))["top1"]
        judged = judge_readings(flat, reader=None).get("judge_predicted")
        same = (judged == judged_originals.repeat_interleave(num_samples, 0)).float().mean().item()
        rows.append({"classifier": clf_name, "layer": layer, "feature_shape": "x".join(map(str, inv.feature_shape)),
                     "judge_agreement": round(same, 3),     # graded by judges that made none of the images
                     "feature_cosine": round(cos.mean().item(), 3), "top1_agreement": round(agree.float().mean().item(), 3),
                     "invariance": round(invariance_map(out).mean().item(), 4),
                     "s_per_image": round(dt / (num_images * num_samples), 3)})
    return images, results, pd.DataFrame(rows)


def demo_figure(images: torch.Tensor, results: dict):
    """One grid: a row per image, its original, then per layer a block of its samples and their invariance map
    (one colour scale for all), so that one image reads across the layers.

    Args:
        images: ``Tensor[N, 3, H, W]``; results: ``{(classifier, layer): samples [N, S, 3, H, W]}`` from :func:`run`.
    """
    from ..inverters.featinv import invariance_map
    from ..plot import image_grid

    spread = {key: invariance_map(samples) for key, samples in results.items()}
    rows = [[images[i]] + [x for key, samples in results.items() for x in (*samples[i], spread[key][i])]
            for i in range(len(images))]
    cols = ["original"] + [f"{c.split('-')[-1]} {layer} " + (f"sample {k + 1}" if k < samples.shape[1] else "spread")
                           for (c, layer), samples in results.items() for k in range(samples.shape[1] + 1)]
    return image_grid(rows, col_labels=cols, row_labels=[f"#{i}" for i in range(len(images))],
                      colorbar_label="std over samples",
                      title="FeatInv on the tiny world: per layer, samples of each image's map and their spread")


def main(args) -> int:
    import matplotlib.pyplot as plt

    from ..checks import check_image_count, check_seed, checked_int

    if args.num_images < 1 or args.num_samples < 2:  # before any loading; run() checks the same
        raise SystemExit(f"--num-images {args.num_images} --num-samples {args.num_samples}: the demo needs at least "
                         "1 image and 2 samples (for the invariance map)")
    if args.num_inference_steps is not None:
        checked_int(args.num_inference_steps, "--num-inference-steps", minimum=1)
    check_seed(args.seed, "--seed")
    # the images, and num_samples inversions of each at every demo layer, are all held for the figure
    check_image_count(args.num_images, "--num-images", copies=1 + len(DEMO_LAYERS) * checked_int(
        args.num_samples, "--num-samples", minimum=1))
    t0 = time.perf_counter()
    images, results, table = run(num_images=args.num_images, num_samples=args.num_samples,
                                 num_inference_steps=args.num_inference_steps, seed=args.seed, device=args.device,
                                 progress=args.progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = demo_figure(images, results)
    fig.savefig(out / "demo.png", dpi=80)
    plt.close(fig)
    table.to_csv(out / "demo_metrics.csv", index=False)
    print(table.to_string(index=False))
    print(f"\nwrote {out / 'demo.png'} and {out / 'demo_metrics.csv'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
