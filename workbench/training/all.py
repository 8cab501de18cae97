"""Retrain every tiny-world artefact from scratch, resumably (``make weights``).

    python -m workbench.training.all [--device cpu|cuda] [--jobs N] [--profile cpu|gpu] [--runs runs/weights] [--ship data]

Stages run in dependency order; independent stages run side by side with ``--jobs``. Each stage
trains into ``RUNS/<stage>/`` with ``--resume`` and leaves a ``DONE`` marker, so a stopped run picks
up where it left off. Finished weights are written (fp16) with their cards into ``--ship``.

| stage       | command                                   | needs          |
|-------------|-------------------------------------------|----------------|
| cnn, vit    | ``train-classifier``                      |                |
| vae         | ``train-vae``                             |                |
| base        | ``train-base`` on cached VAE latents      | vae            |
| base-card   | ``cards --base`` (the base's card)        | base, cnn, vit |
| inv-*       | ``train-inverter`` (5 inverters)          | base, cnn/vit  |
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

# stage -> (command, args, dependencies): a ``workbench`` training command, or ``cards`` (``python -m
# workbench.training.cards``, which measures a shipped artefact's card). Steps and batch sizes come from the profile.
STAGES: dict[str, tuple[str, list[str], list[str]]] = {
    "cnn": ("train-classifier", ["--name", "tinyworld-cnn"], []),
    "vit": ("train-classifier", ["--name", "tinyworld-vit"], []),
    "vae": ("train-vae", [], []),
    "base": ("train-base", ["--vae", "{runs}/vae/vae"], ["vae"]),
    "base-card": ("cards", ["--base"], ["base", "cnn", "vit"]),
    "inv-cnn-last": ("train-inverter", ["--classifier", "tinyworld-cnn", "--layer", "stages.3"], ["base", "cnn"]),
    "inv-vit-last": ("train-inverter", ["--classifier", "tinyworld-vit", "--layer", "blocks.5"], ["base", "vit"]),
    "inv-cnn-mid": ("train-inverter", ["--classifier", "tinyworld-cnn", "--layer", "stages.2"], ["base", "cnn"]),
    "inv-vit-mid": ("train-inverter", ["--classifier", "tinyworld-vit", "--layer", "blocks.2"], ["base", "vit"]),
    "inv-cnn-pooled": ("train-inverter", ["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--pooling", "mean"],
                       ["base", "cnn"]),
}

# profile -> stage -> extra arguments ("inv" serves every inv-* stage).
PROFILES: dict[str, dict[str, list[str]]] = {
    "cpu": {  # bf16 autocast where the CPU has it; the inverters compile (a one-off cost that a long run repays)
        "cnn": ["--steps", "3000", "--batch-size", "128", "--mixed-precision", "auto"],
        "vit": ["--steps", "4000", "--batch-size", "128", "--mixed-precision", "auto"],
        "vae": ["--steps", "3000", "--batch-size", "64"],
        "base": ["--steps", "8000", "--batch-size", "128", "--mixed-precision", "auto"],
        "inv": ["--steps", "6000", "--batch-size", "128", "--compile"],
    },
    "gpu": {  # one GPU, --jobs 6: the --max-minutes budgets fit one 10-minute call; classifiers run beside the VAE
        # and the base
        "cnn": ["--steps", "8000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "3.0",
                "--mixed-precision", "bf16"],
        "vit": ["--steps", "8000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "2.0",
                "--mixed-precision", "bf16"],
        "vae": ["--steps", "5000", "--batch-size", "128", "--train-images", "100000", "--max-minutes", "0.9"],
        "base": ["--steps", "20000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "3.2",
                 "--ema", "0.995"],
        "inv": ["--steps", "20000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "3.4",
                "--ema", "0.995", "--save-every", "100000"],
    },
    # one GPU, --jobs 6, with --init-from data: the base continues for its budget, then the five inverters are
    # fine-tuned onto it side by side
    "gpu-refresh": {
        "base": ["--steps", "40000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "4.5",
                 "--lr", "3e-4", "--ema", "0.998"],
        "inv": ["--steps", "20000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "2.5",
                "--ema", "0.995", "--save-every", "100000"],
    },
    # the inverters of scripts/gpu_base_sweep.sh: five side by side on the picked base
    "gpu-sweep": {
        "inv": ["--steps", "20000", "--batch-size", "256", "--train-images", "100000", "--max-minutes", "3.0",
                "--ema", "0.995", "--save-every", "100000"],
    },
    # a few inverter steps that can start from data/'s inverters (the smoke test of scripts/gpu_base_sweep.sh)
    "smoke-data": {"inv": ["--steps", "3", "--batch-size", "8", "--train-images", "64", "--eval-images", "4"]},
    "smoke": {  # a few steps of everything, for tests of this orchestration
        "cnn": ["--steps", "3", "--batch-size", "8", "--train-images", "64", "--test-images", "32", "--arch",
                '{"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}'],
        "vit": ["--steps", "3", "--batch-size", "8", "--train-images", "64", "--test-images", "32", "--arch",
                '{"embed_dim": 16, "depth": 6, "num_heads": 2}'],
        "vae": ["--steps", "3", "--batch-size", "8", "--train-images", "64", "--widths", "16,16"],
        "base": ["--steps", "3", "--batch-size", "8", "--train-images", "64", "--widths", "16,32,32"],
        "base-card": ["--base-eval-images", "8"],
        "inv": ["--steps", "3", "--batch-size", "8", "--train-images", "64", "--hidden-channels", "8",
                "--eval-images", "4"],
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="make weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/weights", help="run folders (checkpoints), resumable")
    p.add_argument("--ship", default=None, help="where finished fp16 weights and cards go (default: data/)")
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", default=None, choices=sorted(PROFILES), help="default: gpu on cuda, else cpu")
    p.add_argument("--jobs", type=int, default=1, help="stages run side by side")
    p.add_argument("--only", nargs="*", default=None, help="run only these stages (and nothing they need)")
    p.add_argument("--base-args", default="",
                   help="extra train-base arguments, after the profile's (e.g. '--prediction-type v_prediction')")
    p.add_argument("--inv-args", default="",
                   help="extra train-inverter arguments for every inv-* stage, after the profile's "
                        "(e.g. '--max-minutes 2.5')")
    p.add_argument("--init-from", default=None,
                   help="a data folder (data/, say) to continue from instead of training from scratch: classifiers, "
                        "base and inverters start from its weights (a skipped vae stage means its VAE is used)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def stage_command(stage: str, args, profile: dict[str, list[str]]) -> list[str]:
    """The command line of one stage: its command and arguments, the profile's, then ``--base-args`` /
    ``--inv-args``. A training stage trains into ``RUNS/<stage>`` with ``--resume`` and ships into ``--ship``; the
    ``cards`` stage measures what is in ``--ship`` (the ``WORKBENCH_DATA`` that :func:`main` sets)."""
    cmd, extra, _ = STAGES[stage]
    fill = {"runs": args.runs, "ship": args.ship}
    key = "inv" if stage.startswith("inv-") else stage
    if cmd == "cards":
        out = [sys.executable, "-m", "workbench.training.cards", *extra, "--device", args.device,
               *profile.get(key, [])]
    else:
        out = [sys.executable, "-m", "workbench.cli", cmd, *[e.format(**fill) for e in extra],
               "--out", f"{args.runs}/{stage}", "--device", args.device, "--resume", *profile.get(key, []),
               "--ship", args.ship]
        if args.init_from:
            out += init_args(stage, args)
    if stage == "base" and args.base_args:
        out += shlex.split(args.base_args)
    if stage.startswith("inv-") and args.inv_args:
        out += shlex.split(args.inv_args)
    if not args.progress:
        out.append("--no-progress")
    return out


def init_args(stage: str, args) -> list[str]:
    """``--init-from`` (and, for a base whose VAE stage is skipped, ``--vae``) of one stage under ``all --init-from``."""
    root = Path(args.init_from)
    if stage in ("cnn", "vit"):
        return ["--init-from", str(root)]
    if stage == "base":
        vae = [] if args.only is None or "vae" in args.only else ["--vae", str(root / "tinyworld-base" / "vae")]
        return ["--init-from", str(root / "tinyworld-base"), *vae]
    if stage.startswith("inv-"):
        _, extra, _ = STAGES[stage]
        name = f"{extra[1]}/{extra[3]}" + ("-pooled" if "--pooling" in extra else "")
        return ["--init-from", str(root / "inverters" / name)]
    return []  # the VAE trains from scratch (it is cheap, and the base depends on it)


def main(args) -> int:
    from ..paths import data_dir

    args.ship = str(Path(args.ship or data_dir()).resolve())
    args.runs = str(Path(args.runs).resolve())
    if args.init_from:
        args.init_from = str(Path(args.init_from).resolve())
        if not (Path(args.init_from) / "tinyworld-base").is_dir():
            raise SystemExit(f"--init-from {args.init_from}: not a data folder (no tinyworld-base/ in it); pass data/")
    device = args.device
    if args.profile is None:
        import torch

        args.profile = "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    profile = PROFILES[args.profile]
    env = {**os.environ, "WORKBENCH_DATA": args.ship}  # later stages load what earlier ones shipped
    todo = [s for s in STAGES if args.only is None or s in args.only]
    done = {s for s in STAGES if (Path(args.runs) / s / "DONE").is_file()}
    if args.only is not None:
        done |= {s for s in STAGES if s not in args.only}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed = []

    def stop(signum, frame):  # a timeout or Ctrl-C stops the children too; their checkpoints stay resumable
        for s, (proc, _) in running.items():
            proc.terminate()
        for s, (proc, _) in running.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"[weights] stopped by signal {signum}; unfinished: {sorted(running)}", flush=True)
        sys.exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for s, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[s]
                if proc.returncode == 0:
                    (Path(args.runs) / s).mkdir(parents=True, exist_ok=True)
                    (Path(args.runs) / s / "DONE").write_text(f"{time.time() - t0:.1f} s\n")
                    done.add(s)
                    print(f"[weights] {s} finished in {time.time() - t0:.0f} s", flush=True)
                else:
                    failed.append(s)
                    print(f"[weights] {s} FAILED (exit {proc.returncode}); see {args.runs}/{s}/log.txt", flush=True)
        ready = [s for s in todo if s not in done and s not in running and s not in failed
                 and all(d in done for d in STAGES[s][2])]
        while ready and len(running) < args.jobs:
            s = ready.pop(0)
            cmd = stage_command(s, args, profile)
            (Path(args.runs) / s).mkdir(parents=True, exist_ok=True)
            log = open(Path(args.runs) / s / "log.txt", "a")
            print(f"[weights] start {s}: {' '.join(cmd[2:])}", flush=True)
            running[s] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time())
        if not running:
            break
        time.sleep(1)
    missing = [s for s in todo if s not in done]
    if missing:
        print(f"[weights] not finished: {missing} (failed: {failed}); rerun to resume", flush=True)
        return 1
    print(f"[weights] all stages done; weights in {args.ship}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
