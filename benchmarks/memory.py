"""Peak resident memory: ``workbench demo``, and FeatInv sampling all at once against chunked.

Every measurement runs in a fresh child process and is read from that child's own ``rusage``
(``os.wait4``), so one measurement cannot inherit another's peak. Sampling is measured as the child's
peak minus the peak of a child that loads the same inverter and features but does not sample
(``load_only``). The sampling children run interleaved, alternating their order, ``--repeats`` times;
medians are reported.

* ``all_at_once``: ``--n`` images in one batch (``batch_size=n``).
* ``chunked``: the same images with ``batch_size=--chunk``.
* ``chunked_4x``: four times the images at the same ``batch_size``: its peak must stay that of
  ``chunked`` (memory bound by ``batch_size``, not by the input size) plus the outputs themselves.

Usage:
    .venv/bin/python benchmarks/memory.py [--n 64] [--chunk 8] [--repeats 2] [--skip-demo]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="images sampled")
    p.add_argument("--chunk", type=int, default=8, help="batch_size of the chunked runs")
    p.add_argument("--steps", type=int, default=2, help="denoising steps (memory does not grow with them)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--inverter", default="tinyworld-cnn/stages.3")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """Run in the child: load, then (unless load_only) sample ``args.n`` images at ``args.batch_size``."""
    import torch

    import workbench as wb

    torch.set_num_threads(1)
    inv = wb.load_inverter(args.inverter)
    feats = torch.randn(args.n, *inv.feature_shape).abs()
    if args.child != "load_only":
        out = inv.invert(feats, num_samples=1, num_inference_steps=args.steps, progress=False,
                         batch_size=args.batch_size)
        assert out.shape[0] == args.n


def peak_mib(cmd: list[str], env: dict | None = None) -> float:
    """Peak RSS of the child process ``cmd`` (its own rusage, read with ``os.wait4``) in MiB."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def main(args: argparse.Namespace) -> dict:
    me = [sys.executable, str(Path(__file__).resolve()), "--inverter", args.inverter, "--steps", str(args.steps)]
    runs = {"load_only": (args.n, args.n), "all_at_once": (args.n, args.n), "chunked": (args.n, args.chunk),
            "chunked_4x": (4 * args.n, args.chunk)}
    peaks: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.repeats):
        order = list(runs.items())[::(-1 if rep % 2 else 1)]
        for key, (n, bs) in order:
            peaks[key].append(peak_mib(me + ["--child", key, "--n", str(n), "--batch-size", str(bs)],
                                       {"OMP_NUM_THREADS": "1"}))
    med = {k: statistics.median(v) for k, v in peaks.items()}
    extra = {k: med[k] - med["load_only"] for k in runs if k != "load_only"}
    result = {"peak_mib": med, "sampling_mib": extra}
    print(f"{args.inverter}, {args.steps} steps, peak RSS (median of {args.repeats} fresh processes each)")
    print(f"  load only                          {med['load_only']:7.0f} MiB")
    for key, label in [("all_at_once", f"{args.n} images, batch_size {args.n}"),
                       ("chunked", f"{args.n} images, batch_size {args.chunk}"),
                       ("chunked_4x", f"{4 * args.n} images, batch_size {args.chunk}")]:
        print(f"  {label:34s} {med[key]:7.0f} MiB  (sampling adds {extra[key]:6.0f} MiB)")
    print(f"  ratio all-at-once / chunked (sampling memory) = {extra['all_at_once'] / max(extra['chunked'], 1):.2f}")
    print(f"  ratio 4x images / 1x images, chunked          = {extra['chunked_4x'] / max(extra['chunked'], 1):.2f}  "
          f"(outputs alone: {4 * args.n * 3 * 32 * 32 * 4 / 2**20:.1f} MiB for {4 * args.n} images)")
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as tmp:
            demo = peak_mib([str(Path(sys.executable).parent / "workbench"), "demo", "--out", tmp, "--no-progress",
                             "--device", "cpu"], {"OMP_NUM_THREADS": "1"})
        result["demo_peak_mib"] = demo
        print(f"  workbench demo (defaults: 8 images x 4 samples x 4 layers) peak {demo:7.0f} MiB")
    return result


if __name__ == "__main__":
    a = parse_args()
    child(a) if a.child else main(a)
