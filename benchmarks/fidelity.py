"""Fidelity and naturalness of FeatInv against its baselines at the last layers: issue 16's table.

For each of ``--inverters`` (FeatInv's shipped last-layer inverters), :func:`workbench.evaluate` on the same
``--n`` held-out tiny-world test images (``TinyWorld("test", size=2000)``, seeded subset), one sample each:

* ``featinv``: FeatInv at its defaults (``DEFAULT_*`` in ``workbench/inverters/featinv.py``), or at
  ``--featinv-kwargs``;
* ``featinv-unguided``: the same without feature guidance (``feature_guidance_scale=0``), when the default guides;
* ``official``: the official code's sampler, DDIM 50 steps, guidance 1.75, ``guidance_mode="prompt"``;
* ``decoder``: the shipped feature-matching decoder of the layer (``<name>-decoder``);
* ``optimization``: ``OptimizationInverter`` at its defaults.

Columns: feature cosine (the inverted classifier and layer), top-1 agreement (chance 1/8), cross-model cosine and
Fréchet distance (both in the other tiny-world classifier's pooled features), PSNR, seconds per image. Rows are
printed as they finish and appended to ``--out`` (JSON lines), so a partial run keeps what it measured.

Usage:
    nohup .venv/bin/python benchmarks/fidelity.py --threads 1 > benchmarks/results/fidelity.log 2>&1 &
    .venv/bin/python benchmarks/fidelity.py --n 8 --rows featinv decoder        # smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

INVERTERS = ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"]
ROWS = ["featinv", "featinv-unguided", "decoder", "optimization", "official"]
#: The official code's sampler (AI4HealthUOL/FeatInv): DDIM 50 steps, guidance 1.75, both branches see the features.
OFFICIAL = dict(scheduler="ddim", num_inference_steps=50, guidance_scale=1.75, guidance_mode="prompt",
                feature_guidance_scale=0.0)
SUMMARY = ("feature_cosine", "top1", "cross_cosine", "frechet_distance", "psnr", "seconds_per_image")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inverters", nargs="+", default=INVERTERS)
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--n", type=int, default=256, help="held-out test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--featinv-kwargs", type=json.loads, default={},
                   help='sampler arguments of the featinv row instead of the defaults, e.g. \'{"feature_guidance_scale": 0.05}\'')
    p.add_argument("--out", default="benchmarks/results/fidelity.jsonl")
    return p.parse_args(argv)


def rows_of(name: str, rows: list[str], featinv_kwargs: dict | None = None) -> list[tuple[str, str, dict]]:
    """``(row, inverter spec, invert kwargs)`` of one last-layer inverter."""
    from workbench.inverters import featinv as fi

    out = []
    for row in rows:
        if row == "featinv":
            out.append((row, name, dict(featinv_kwargs or {})))
        elif row == "featinv-unguided" and fi.DEFAULT_FEATURE_GUIDANCE_SCALE:
            out.append((row, name, {"feature_guidance_scale": 0.0}))
        elif row == "official":
            out.append((row, name, dict(OFFICIAL)))
        elif row == "decoder":
            out.append((row, f"{name}-decoder", {}))
        elif row == "optimization":
            out.append((row, f"optimization:{name}", {}))
    return out


def main(args: argparse.Namespace) -> list[dict]:
    import workbench as wb
    from workbench.inverters import featinv as fi

    torch.set_num_threads(args.threads)
    dataset = wb.TinyWorld("test", size=max(args.n, 2000), seed=0)
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.inverters:
        clf_name = name.split("/")[0]
        clf = wb.load_classifier(clf_name)
        for row, spec, kwargs in rows_of(name, args.rows, args.featinv_kwargs):
            inv = wb.load_inverter(spec)
            table = wb.evaluate(inv, clf, dataset=dataset, num_images=args.n, seed=args.seed, progress=False, **kwargs)
            s = table.summary()
            sampler = fi.sampler_description(**kwargs) if isinstance(inv, fi.FeatInv) else ""
            rec = {"inverter": name, "row": row, "spec": spec, "sampler": sampler, "n": args.n,
                   **{k: round(float(s[k]), 4) for k in SUMMARY},
                   "date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": machine}
            records.append(rec)
            print(json.dumps(rec), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    print(f"\n{'inverter':24s} {'row':17s} {'cosine':>7s} {'top1':>6s} {'x-cos':>6s} {'FD':>6s} {'PSNR':>5s} "
          f"{'s/img':>6s}   (n={args.n}, top-1 chance 0.125)")
    for r in records:
        print(f"{r['inverter']:24s} {r['row']:17s} {r['feature_cosine']:7.4f} {r['top1']:6.3f} "
              f"{r['cross_cosine']:6.3f} {r['frechet_distance']:6.2f} {r['psnr']:5.1f} {r['seconds_per_image']:6.3f}")
    return records


if __name__ == "__main__":
    main(parse_args())
