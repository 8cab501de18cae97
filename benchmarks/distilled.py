"""The distilled inverters against their teachers, graded by the judges (issue 29): fidelity, diversity, invariance.

For each shipped ``<teacher>-distilled`` inverter, on the **test** split (``TinyWorld("test", size=2000)``), one
sample of each of ``--n`` images:

1. ``wb.evaluate`` of the teacher at its default sampler (``wb.Sampler()``: DDIM 5, classifier-free guidance, feature
   guidance) and of the student, both graded by the shipped judges, the factor reader and the KID against 2,000
   separate real images, with bootstrap 95 % intervals. Reported: the judges' mean top-1 agreement and the
   factor-kept mean (:func:`workbench.judges.factor_kept`, 0: another real image, 1: the image itself) of the student
   as a share of the teacher's (goal >= 0.98 each), and whether the student's KID lies within the teacher's interval.
2. Invariance maps (``--m`` images, ``--samples`` samples each): the per-image Pearson correlation of the student's
   and the teacher's maps, beside two references: the teacher against itself under other seeds (what agreement
   between two honest draws looks like) and the student against the teacher's map of another image (chance).
3. Diversity: the mean absolute pixel difference between the student's samples of one map under two seeds
   (0 would be a deterministic decoder).

Usage:
    .venv/bin/python benchmarks/distilled.py [--n 256] [--m 64] > benchmarks/results/distilled.log
"""
from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone

import torch

TEACHERS = ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", nargs="+", default=TEACHERS)
    p.add_argument("--n", type=int, default=256, help="test images graded by the judges")
    p.add_argument("--m", type=int, default=64, help="test images whose invariance maps are compared")
    p.add_argument("--samples", type=int, default=4, help="samples per image for the invariance maps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/distilled.json")
    return p.parse_args(argv)


def judged(inv, clf, dataset, args, sampler) -> dict:
    """The summary and factor bounds of ``wb.evaluate`` with the judges."""
    import workbench as wb

    table = wb.evaluate(inv, clf, dataset=dataset, num_images=args.n, seed=args.seed, progress=False, sampler=sampler)
    return {"summary": table.summary(), "bounds": table.attrs["factor_bounds"]}


def scores(result: dict) -> dict[str, float]:
    """Mean judge agreement, mean factor kept (over the factors the reader can tell apart), KID and its interval."""
    import math

    from workbench.judges import factor_kept

    s, bounds = result["summary"], result["bounds"]
    agree = [v for k, v in s.items() if k.startswith("judge_agree[tinyworld-judge-") and k.endswith("]")]
    kept = {f: factor_kept(s[f"factor[{f}]"], bounds["ceiling"][f], bounds["chance"][f]) for f in bounds["ceiling"]}
    kept = {f: v for f, v in kept.items() if not math.isnan(v)}
    return {"judge_agreement": sum(agree) / len(agree), "factor_kept": sum(kept.values()) / len(kept),
            "kept": kept, "kid": s["kid"], "kid_lo": s["kid_lo"], "kid_hi": s["kid_hi"]}


def invariance_agreement(teacher, student, feats: torch.Tensor, samples: int, seed: int) -> dict[str, float]:
    """Per-image Pearson correlations of invariance maps ``[m, 1, H, W]``: student vs teacher, teacher vs teacher
    under other seeds, student vs the teacher's map of another image (the next one)."""
    import workbench as wb

    def maps(inv, s):
        return wb.invariance_map(inv.invert(feats, num_samples=samples, seed=s, progress=False)).flatten(1)

    def pearson(a, b):
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)

    t1, t2, s1 = maps(teacher, seed), maps(teacher, seed + 1), maps(student, seed)
    return {"student_vs_teacher": pearson(s1, t1).mean().item(),
            "teacher_vs_teacher_other_seed": pearson(t2, t1).mean().item(),
            "student_vs_other_image": pearson(s1, t1.roll(1, 0)).mean().item()}


def main(args: argparse.Namespace) -> dict:
    import workbench as wb

    torch.set_num_threads(args.threads)
    dataset = wb.TinyWorld("test", size=2000)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": platform.machine(),
           "n": args.n, "m": args.m, "results": {}}
    for name in args.teachers:
        teacher, student = wb.load_inverter(name), wb.load_inverter(f"{name}-distilled")
        clf = wb.load_classifier(teacher.classifier_name)
        t, s = scores(judged(teacher, clf, dataset, args, wb.Sampler())), scores(judged(student, clf, dataset, args, None))
        x = wb.TinyWorld("test", size=args.m, seed=args.seed + 1).images()
        feats = wb.extract_features(clf, x, teacher.layer)
        inv = invariance_agreement(teacher, student, feats, args.samples, args.seed)
        a, b = student.invert(feats[:16], seed=1, progress=False), student.invert(feats[:16], seed=2, progress=False)
        row = {"teacher": t, "student": s,
               "judge_agreement_share": s["judge_agreement"] / t["judge_agreement"],
               "factor_kept_share": s["factor_kept"] / t["factor_kept"],
               "kid_within_teacher_interval": t["kid_lo"] <= s["kid"] <= t["kid_hi"],
               "invariance": inv, "seed_difference": (a - b).abs().mean().item()}
        out["results"][name] = row
        print(f"{name}: teacher (default sampler) vs distilled ({len(student.timesteps)} evaluation), "
              f"{args.n} test images")
        print(f"  judge agreement  {t['judge_agreement']:.3f} -> {s['judge_agreement']:.3f}  "
              f"share {row['judge_agreement_share']:.3f} (goal >= 0.98)")
        print(f"  factor kept      {t['factor_kept']:.3f} -> {s['factor_kept']:.3f}  "
              f"share {row['factor_kept_share']:.3f} (goal >= 0.98)")
        print("  per factor       " + ", ".join(f"{f} {t['kept'][f]:.2f}->{s['kept'].get(f, float('nan')):.2f}"
                                               for f in t["kept"]))
        print(f"  KID              {t['kid']:.3f} [{t['kid_lo']:.3f}, {t['kid_hi']:.3f}] -> {s['kid']:.3f} "
              f"[{s['kid_lo']:.3f}, {s['kid_hi']:.3f}]  within: {row['kid_within_teacher_interval']}")
        print(f"  invariance maps (Pearson per image, {args.m} images x {args.samples} samples): student vs "
              f"teacher {inv['student_vs_teacher']:.3f}; teacher vs itself, other seeds "
              f"{inv['teacher_vs_teacher_other_seed']:.3f}; student vs another image {inv['student_vs_other_image']:.3f}")
        print(f"  seeds differ: mean |pixel difference| between two seeds {row['seed_difference']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main(parse_args())
