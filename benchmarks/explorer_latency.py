"""Edit-to-image latency of the live explorer (issue 29): one image, 4 samples, one CPU thread.

The explorer is built on the shipped CNN with the distilled inverter of each layer where one is shipped
(``Explorer.tinyworld``'s default) and, for comparison, with the teachers (``fast=False``: the default sampler, by
button). Each of ``--edits`` edits moves the ablation text and the steering alpha; the latency is the wall time (and the
process's CPU time, which other jobs on a shared machine barely change) from the control's change to the new images
being on screen (:meth:`LiveUpdates.wait`), with the debounce delay set to 0
(a user's pause adds ``delay_s``, 0.05 s by default), and for the teacher the time of one ``update()``. Medians are
printed and written to ``--json``. The goal is under 100 ms with the distilled inverter.

Usage:
    .venv/bin/python benchmarks/explorer_latency.py [--edits 20] > benchmarks/results/explorer_latency.log
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=20)
    p.add_argument("--layer", default="stages.3")
    p.add_argument("--json", default="benchmarks/results/explorer_latency.json")
    return p.parse_args(argv)


def edits(ex, k: int):
    """The ``k``-th edit: ablate a moving block of channels and steer along the first concept."""
    concepts = [c for c in ex.concept.options if c != "(none)"]
    yield lambda: setattr(ex.channels, "value", f"{(8 * k) % 64}-{(8 * k) % 64 + 7}")
    if concepts:
        yield lambda: setattr(ex.concept, "value", concepts[k % len(concepts)])
        yield lambda: setattr(ex.alpha, "value", float(k % 4))


def live_latency(ex, n: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (of this process, all threads) from each edit to its images on screen."""
    wall, cpu = [], []
    for k in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        for change in edits(ex, k):
            change()
        ex.live.wait(60)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def button_latency(ex, n: int) -> list[float]:
    times = []
    for k in range(n):
        for change in edits(ex, k):
            change()
        start = time.perf_counter()
        ex.update()
        times.append(time.perf_counter() - start)
    return times


def main(args: argparse.Namespace) -> dict:
    from workbench.widgets import Explorer

    torch.set_num_threads(1)
    fast = Explorer.tinyworld(num_samples=4, delay_s=0.0, n_concept_images=256)
    fast.layer.value = args.layer
    assert fast.is_live(), f"no distilled inverter is shipped for {args.layer}: the explorer is not live there"
    fast.live.wait(60)
    live, live_cpu = live_latency(fast, args.edits)
    slow = Explorer.tinyworld(num_samples=4, fast=False, n_concept_images=256)
    slow.layer.value = args.layer
    button = button_latency(slow, max(3, args.edits // 4))
    out = {"layer": args.layer, "samples": 4, "threads": 1, "edits": args.edits,
           "inverter": type(fast.inverters[args.layer]).__name__,
           "live_median_s": statistics.median(live), "live_max_s": max(live),
           "live_cpu_median_s": statistics.median(live_cpu),
           "teacher_update_median_s": statistics.median(button)}
    print(f"explorer, tinyworld-cnn {args.layer}, 1 image x 4 samples, 1 thread")
    print(f"  distilled, live: edit -> images on screen, median {1000 * out['live_median_s']:.0f} ms "
          f"(max {1000 * out['live_max_s']:.0f} ms) over {args.edits} edits, CPU time median "
          f"{1000 * out['live_cpu_median_s']:.0f} ms; goal < 100 ms (+ the 50 ms debounce)")
    print(f"  teacher (default sampler), one update(): median {1000 * out['teacher_update_median_s']:.0f} ms")
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main(parse_args())
