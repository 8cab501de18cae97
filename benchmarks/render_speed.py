"""How fast TinyWorld renders: images per second for a batch of factors.

Usage:
    python benchmarks/render_speed.py                    # 10k images on the CPU
    python benchmarks/render_speed.py --device cuda --n 100000
"""
from __future__ import annotations

import argparse
import time

import torch

from workbench.tinyworld import render_batch, sample_factors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per timed run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(args: argparse.Namespace) -> dict[str, float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # 1. Factors (on the CPU, as TinyWorld draws them).
    start = time.perf_counter()
    factors = sample_factors(args.n, seed=0, split="train")
    sample_s = time.perf_counter() - start

    # 2. Warm up (first CUDA calls, allocator).
    render_batch({k: v[:256] for k, v in factors.items()}, device=device)
    _sync(device)

    # 3. Timed runs; factor transfer to the device is included.
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        render_batch(factors, device=device)
        _sync(device)
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"device={device} threads={torch.get_num_threads()} n={args.n}")
    print(f"sample_factors: {sample_s:.3f} s ({args.n / sample_s:,.0f} items/s)")
    print(f"render_batch:   best {best:.3f} s of {[round(t, 3) for t in times]} -> {args.n / best:,.0f} images/s")
    return {"sample_s": sample_s, "render_s": best, "images_per_s": args.n / best}


if __name__ == "__main__":
    main(parse_args())
