"""Overhead of ``wb.capture`` on 4 layers versus a plain forward pass.

ResNet-50 sized model (timm ``resnet50``, random weights), batch 8 at 224 px, CPU, ``no_grad``.
Plain and captured passes are interleaved and the medians compared, so drifting machine load hits
both alike. The target is a ratio <= 1.05.

Usage:
    .venv/bin/python benchmarks/hooks_overhead.py [--repeats 15] [--batch 8] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import workbench as wb

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs (plain, captured)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> float:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clf = wb.load_classifier("resnet50", pretrained=False)
    x = torch.rand(args.batch, 3, args.size, args.size)

    def plain() -> None:
        clf(x)

    def captured() -> None:
        with wb.capture(clf, LAYERS) as cache:
            clf(x)
        assert len(cache) == len(LAYERS)

    times: dict[str, list[float]] = {"plain": [], "capture": []}
    with torch.no_grad():
        for i in range(args.warmup + args.repeats):
            order = [("plain", plain), ("capture", captured)]
            if i % 2:  # alternate which goes first
                order.reverse()
            for key, fn in order:
                start = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - start)
    plain_s, capture_s = statistics.median(times["plain"]), statistics.median(times["capture"])
    ratio = capture_s / plain_s
    print(f"resnet50, batch {args.batch}, {args.size} px, CPU, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats")
    print(f"plain forward   median {plain_s * 1e3:8.1f} ms")
    print(f"capture 4 layers median {capture_s * 1e3:8.1f} ms  ({', '.join(LAYERS)})")
    print(f"ratio capture / plain = {ratio:.3f}  (target <= 1.05)")
    return ratio


if __name__ == "__main__":
    ratio = main(parse_args())
    sys.exit(0 if ratio <= 1.05 else 1)
