"""Re-measure the metrics on the cards of shipped artefacts (after a sampler default changes, say).

    python -m workbench.training.cards [--inverters [NAME ...]] [--base [--base-sampler ddpm:250]] [--n 256]

With neither flag, every FeatInv inverter card; ``--base`` alone, only the base card; ``--inverters`` with no
names, every FeatInv inverter card.

Inverter cards get feature cosine and top-1 agreement on ``n`` held-out test images at the current
sampler defaults; the base card gets its unconditional sample quality. Only ``metrics`` changes.
"""
from __future__ import annotations

import argparse
import json

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m workbench.training.cards", description=__doc__)
    p.add_argument("--inverters", nargs="*", default=None,
                   help="names to re-measure; no names: all FeatInv ones (also the default without --base)")
    p.add_argument("--base", action="store_true", help="re-measure the base's sample quality")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--base-samples", type=int, default=512)
    p.add_argument("--base-sampler", default="dpm++:20", help="scheduler:steps of the base's unconditional samples")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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


def main(args) -> int:
    from ..diffusion import DiffusionBase
    from ..inverters import list_inverters, load_inverter
    from ..models import load_classifier
    from ..paths import data_dir
    from .base import sample_quality
    from .featinv import evaluate_card

    names = inverter_names(args, list_inverters())
    sched, steps = parse_sampler(args.base_sampler)
    if args.base:
        base = DiffusionBase.from_pretrained("tinyworld-base", device=args.device)
        cnn = load_classifier("tinyworld-cnn", device=args.device)
        vit = load_classifier("tinyworld-vit", device=args.device)
        m = sample_quality(base, cnn, vit, n=args.base_samples, scheduler=sched, steps=steps, progress=True)
        path = data_dir() / "tinyworld-base" / "card.json"
        card = json.loads(path.read_text())
        card["metrics"] = m
        path.write_text(json.dumps(card, indent=2) + "\n")
        print("tinyworld-base", json.dumps(m), flush=True)
    for name in names:
        inv = load_inverter(name, device=args.device)
        clf = load_classifier(inv.classifier_name, device=args.device)
        m = evaluate_card(inv, clf, n=args.n)
        path = data_dir() / "inverters" / name / "card.json"
        card = json.loads(path.read_text())
        card["metrics"] = m
        path.write_text(json.dumps(card, indent=2) + "\n")
        print(name, json.dumps(m), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
