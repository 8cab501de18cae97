"""What every training script shares: arguments, accelerate, data streams, atomic resumable checkpoints.

Checkpoints never pickle code: model weights are safetensors, and optimiser / scheduler / RNG
states are plain tensors and numbers saved with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``. A checkpoint folder is written under a temporary name and
renamed into place, so a kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

CKPT = "checkpoint"


def add_common_args(p: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float,
                    mixed_precision: str = "no") -> argparse.ArgumentParser:
    p.add_argument("--out", required=True, help="run folder for checkpoints and the final weights")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps in total (a resumed run continues to this)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (accelerate picks the GPU when 'auto')")
    p.add_argument("--mixed-precision", default=mixed_precision, choices=["auto", "no", "fp16", "bf16"],
                   help="autocast precision; 'auto' is bf16 where the device computes it natively (recent GPUs, CPUs "
                        "with AVX512-BF16/AMX), else fp32 (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--ship", default=None, help="also write fp16 weights and card into this data folder")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: after 30 steps the total is cut to what fits (the LR schedule follows)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def make_accelerator(args):
    """An ``accelerate.Accelerator`` honouring ``--device``, ``--mixed-precision`` and ``--grad-accum``.
    Under ``accelerate launch`` the launcher's settings win for the device."""
    from accelerate import Accelerator

    cpu = args.device == "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:  # an earlier run in this process (a notebook, tests): accelerate keeps one
        AcceleratorState._reset_state()  # state per process and refuses a new precision; the process group stays
    args.mixed_precision = resolve_mixed_precision(args.mixed_precision, "cpu" if cpu or not torch.cuda.is_available()
                                                   else "cuda")
    return Accelerator(cpu=cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum)


def resolve_mixed_precision(mode: str, device_type: str) -> str:
    """``'auto'`` -> ``'bf16'`` where ``device_type`` runs bf16 natively, else ``'no'``; other modes pass through."""
    if mode != "auto":
        return mode
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    except (AttributeError, RuntimeError):
        return "no"


def cosine_lr(optimizer, *, warmup: int, total: int):
    """Linear warm-up then cosine decay to 10% (a ``LambdaLR``; its state is a plain dict).
    ``sched.horizon["total"]`` may be lowered later by :class:`StepBudget`."""
    horizon = {"total": total}

    def f(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        prog = min(1.0, (step - warmup) / max(1, horizon["total"] - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, f)
    sched.horizon = horizon
    return sched


class StepBudget:
    """Cut a run's total steps to fit ``max_minutes`` (measured after ``probe`` steps of this process).

    Usage: ``total = budget.update(step, total)`` once per step; it returns the (possibly lowered) total and
    lowers the LR schedule's horizon with it, so the cosine decay still ends at the last step.
    """

    def __init__(self, max_minutes: float | None, lr_scheduler=None, probe: int = 30):
        self.limit = None if max_minutes is None else max_minutes * 60
        self.sched = lr_scheduler
        self.probe = probe
        self.t0 = time.time()
        self.seen = 0

    def update(self, step: int, total: int) -> int:
        self.seen += 1
        if self.seen == 1:  # the first step may include compilation: the rate is measured after it
            self.t1 = time.time()
        if self.limit is None or self.seen != self.probe:
            return total
        per_step = (time.time() - self.t1) / (self.seen - 1)
        fits = step + 1 + int((self.limit - (time.time() - self.t0)) / per_step)
        if fits < total:
            total = max(step + 2, fits)
            if self.sched is not None:
                self.sched.horizon["total"] = total
        return total


# ---------------------------------------------------------------------- data
def tinyworld_images(n: int, *, split: str = "train", seed: int = 0, device: str | torch.device = "cpu",
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` tiny-world images in batches on ``device``: (``uint8 [n, 3, 32, 32]``, ``int64 [n]``).

    The same items as ``TinyWorld(split, size=n, seed=seed)``, rendered straight on the training device."""
    from tqdm.auto import tqdm

    from ..tinyworld import TinyWorld, render_batch

    ds = TinyWorld(split, size=n, seed=seed)
    factors = ds.factors
    imgs = []
    chunk = 8192
    for s in tqdm(range(0, n, chunk), desc=f"render {split}", disable=not progress):
        part = {k: v[s:s + chunk] for k, v in factors.items()}
        try:
            x = render_batch(part, device=device)
        except RuntimeError:  # a device the renderer cannot use: render on the CPU and move
            x = render_batch(part, device="cpu").to(device)
        imgs.append((x * 255).round().to(torch.uint8))
    return torch.cat(imgs), ds.labels().to(device)


class TensorStream:
    """Infinite random mini-batches from tensors held in memory, resumable through ``state_dict``.

    Args:
        tensors: tensors sharing their first dimension (e.g. images ``uint8 [N, 3, H, W]`` and labels ``[N]``).
        batch_size: items per batch.
        seed: seed of the sampling generator.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0):
        self.tensors = tensors
        self.n = tensors[0].shape[0]
        self.batch_size = batch_size
        self.g = torch.Generator("cpu").manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            idx = torch.randint(self.n, (self.batch_size,), generator=self.g)
            yield tuple(t[idx.to(t.device)] for t in self.tensors)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.g.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.set_state(state["generator"])


def image_folder_stream(path: str | Path, *, image_size: int, batch_size: int, seed: int = 0,
                        num_workers: int = 4) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches from an ImageFolder-style directory (ImageNet layout): ``([B, 3, S, S] in [0, 1], [B])``.
    Images are resized on the short side and centre-cropped to ``image_size``."""
    from torchvision import datasets, transforms

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {path!r} is neither 'tinyworld' nor an existing ImageFolder directory")
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()])
    ds = datasets.ImageFolder(str(root), transform=tf, loader=lambda p: datasets.folder.pil_loader(p))
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, drop_last=True,
                                         num_workers=num_workers, persistent_workers=num_workers > 0)
    while True:
        yield from loader


def state_fingerprint(*modules: nn.Module, extra: str = "") -> str:
    """A short hash of modules' weights (and ``extra``): the key of a cache computed with them."""
    import hashlib

    h = hashlib.sha256(extra.encode())
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_tensor(cache_dir: str | Path | None, name: str, key: str, compute, *, half: bool = False) -> torch.Tensor:
    """``compute()`` once, kept in ``cache_dir/{name}-{key}.safetensors`` for later runs (and ``--resume``).

    ``key`` must change whenever the result would (see :func:`state_fingerprint`). With ``half`` the tensor is
    stored and returned as fp16, unless its values leave fp16's range (then fp32). ``cache_dir=None`` computes
    without writing anything."""
    from safetensors.torch import load_file, save_file

    path = None if cache_dir is None else Path(cache_dir) / f"{name}-{key}.safetensors"
    if path is not None and path.is_file():
        try:
            return load_file(str(path))["value"]
        except Exception as e:  # a truncated file from a killed run: recompute it
            print(f"cache {path} is unreadable ({type(e).__name__}); recomputing it", flush=True)
    value = compute()
    if half and value.is_floating_point() and value.abs().max().item() < 6e4:
        value = value.half()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"value": value.detach().contiguous().cpu()}, str(tmp))
        tmp.replace(path)
    return value


def init_card(card_path: str | Path, *, also: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Provenance of ``--init-from`` weights for a new card: the ``training`` (without its loss curve) and
    ``metrics`` of the card at ``card_path`` (plus the keys in ``also`` it has), or ``None`` when there is no
    card there (weights alone)."""
    path = Path(card_path)
    if not path.is_file():
        return None
    try:
        prev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"--init-from: the card {path} is not valid JSON ({e}); restore it or remove it") from e
    training = {k: v for k, v in (prev.get("training") or {}).items() if k != "loss_curve"}
    return {"training": training, "metrics": prev.get("metrics"), **{k: prev[k] for k in also if k in prev}}


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(out: str | Path, *, step: int, modules: dict[str, nn.Module], optimizer=None, lr_scheduler=None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``out/checkpoint`` atomically: modules as safetensors (fp32), the rest as plain tensors."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp, final, old = out / (CKPT + ".tmp"), out / CKPT, out / (CKPT + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in modules.items():
        save_file({k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
                   for k, v in m.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    state = {"step": step, "torch_rng": torch.get_rng_state(), "extra": extra or {}}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if lr_scheduler is not None:
        state["lr_scheduler"] = lr_scheduler.state_dict()
    torch.save(state, tmp / "state.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step, "time": time.time()}))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out: str | Path, *, modules: dict[str, nn.Module], optimizer=None, lr_scheduler=None,
                    map_location="cpu") -> dict[str, Any] | None:
    """Restore ``out/checkpoint`` into the given objects; returns the state (with ``step``) or ``None``."""
    from safetensors.torch import load_file

    ck = Path(out) / CKPT
    if not (ck / "state.pt").is_file():
        old = Path(out) / (CKPT + ".old")  # a kill between the two renames leaves only .old
        if (old / "state.pt").is_file():
            ck = old
        else:
            return None
    for name, m in modules.items():
        m.load_state_dict(load_file(str(ck / f"{name}.safetensors")))
    state = torch.load(ck / "state.pt", map_location=map_location, weights_only=True)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and "lr_scheduler" in state:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def command_line() -> str:
    """The command that started this process, as a user would type it (``workbench train-...``)."""
    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if argv0 in ("workbench", "cli.py"):
        return " ".join(["workbench"] + sys.argv[1:])
    return " ".join(["python -m workbench.training." + argv0.removesuffix(".py")] + sys.argv[1:])


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return round(time.time() - self.t0, 1)


class Steps:
    """The step loop of a training script: a progress bar with the loss, resume from ``start``, and a total
    that :class:`StepBudget` may lower to fit ``--max-minutes``.

    Example:
        >>> loop = Steps(start, args.steps, desc="vae", max_minutes=args.max_minutes, lr_scheduler=sched)
        >>> for step in loop:
        ...     loss = ...; loop.log(loss=loss.item())
        ...     if loop.should_save(step, args.save_every): save_checkpoint(...)
    """

    def __init__(self, start: int, total: int, *, desc: str, max_minutes: float | None = None, lr_scheduler=None,
                 progress: bool = True, log_every: int = 100):
        from tqdm.auto import tqdm

        self.step, self.total = start, total
        self.desc, self.progress, self.log_every = desc, progress, log_every
        self.start, self.t0, self.values = start, time.time(), {}
        self.budget = StepBudget(max_minutes, lr_scheduler)
        self.bar = tqdm(initial=start, total=total, desc=desc, disable=not progress)

    def __iter__(self):
        while self.step < self.total:
            yield self.step
            self.step += 1
            self.bar.update(1)
            new = self.budget.update(self.step - 1, self.total)
            if new != self.total:
                self.total = new
                self.bar.total = new
                self.bar.refresh()
        self.bar.close()

    def should_save(self, step: int, every: int) -> bool:
        return (step + 1) % every == 0 or step + 1 == self.total

    def log(self, **values: float) -> None:
        """Show ``values`` on the bar; without a bar (``--no-progress``, e.g. under nohup) print a line every
        ``log_every`` steps instead."""
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
        if not self.progress and self.log_every and (self.step + 1) % self.log_every == 0:
            rate = (time.time() - self.t0) / max(1, self.step + 1 - self.start)
            vals = " ".join(f"{k}={v:.4f}" for k, v in values.items())
            print(f"{self.desc}: step {self.step + 1}/{self.total} {vals} {rate:.2f} s/step", flush=True)
