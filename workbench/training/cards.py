"""Re-measure the metrics on the cards of shipped artefacts (after a sampler default changes, say): the one way
to measure a saved artefact's card.

    python -m workbench.training.cards [--inverters [NAME ...]] [--base [--base-sampler dpm++:20]]
                                       [--eval-images 256] [--base-eval-images 512]

With neither flag, every FeatInv inverter card; ``--base`` alone, only the base card; ``--inverters`` with no
names, every FeatInv inverter card. The cards are those of the data folder (``$WORKBENCH_DATA``, else ``data/``).

Inverter cards get :func:`~workbench.card_metrics.inverter_card_metrics` on held-out test images at the current
sampler defaults; the base card gets :func:`~workbench.card_metrics.base_card_metrics`, the quality of its
unconditional samples. Only ``metrics`` changes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..weights import read_card, write_card


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m workbench.training.cards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inverters", nargs="*", default=None,
                   help="names to re-measure; no names: all FeatInv ones (also the default without --base)")
    p.add_argument("--base", action="store_true", help="re-measure the base's sample quality")
    p.add_argument("--eval-images", type=int, default=256, help="held-out test images per inverter card")
    p.add_argument("--base-eval-images", type=int, default=512,
                   help="samples drawn (and real test images compared) for the base card")
    p.add_argument("--base-sampler", default="dpm++:20", help="scheduler:steps of the base's unconditional samples")
    p.add_argument("--seed", type=int, default=0, help="seeds the test images and the samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def inverter_names(args, available: list[str]) -> list[str]:
    """The inverter cards to re-measure: named ones, all FeatInv ones, or none (``--base`` alone)."""
    featinv = [n for n in available if not n.endswith("-decoder")]
    if args.inverters is None:
        return [] if args.base else featinv
    unknown = [n for n in args.inverters if n not in available]
    if unknown:
        raise SystemExit(f"--inverters: unknown {unknown}; shipped ones are {available}")
    return args.inverters or featinv


def parse_sampler(spec: str) -> tuple[str, int]:
    """``'dpm++:20'`` -> ``('dpm++', 20)``, with a clear error for anything else."""
    sched, _, steps = spec.partition(":")
    if not sched or not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"--base-sampler {spec!r}: expected SCHEDULER:STEPS, e.g. dpm++:20 or ddpm:250")
    return sched, int(steps)


def write_metrics(card_path, metrics: dict) -> None:
    """Replace the ``metrics`` of the card at ``card_path``, leaving the rest as it is."""
    card_path = Path(card_path)
    card = read_card(card_path.stem, card_path.parent)
    card["metrics"] = metrics
    write_card(card_path.stem, card, card_path.parent)    # atomically: other stages may be reading it


def main(args) -> int:
    from ..diffusion import DiffusionBase
    from ..card_metrics import base_card_metrics, inverter_card_metrics
    from ..inverters import list_inverters, load_inverter
    from ..models import load_classifier
    from ..paths import data_dir

    names = inverter_names(args, list_inverters())
    scheduler, num_inference_steps = parse_sampler(args.base_sampler)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.base:
        base = DiffusionBase.from_pretrained("tinyworld-base", device=device)
        cnn = load_classifier("tinyworld-cnn", device=device)
        vit = load_classifier("tinyworld-vit", device=device)
        m = base_card_metrics(base, cnn, vit, num_images=args.base_eval_images, scheduler=scheduler,
                              num_inference_steps=num_inference_steps, seed=args.seed, progress=args.progress)
        write_metrics(data_dir() / "tinyworld-base" / "card.json", m)
        print("tinyworld-base", json.dumps(m), flush=True)
    for name in names:
        inv = load_inverter(name, device=device)
        clf = load_classifier(inv.classifier_name, device=device)
        m = inverter_card_metrics(inv, clf, num_images=args.eval_images, seed=args.seed)
        write_metrics(data_dir() / "inverters" / name / "card.json", m)
        print(name, json.dumps(m), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
