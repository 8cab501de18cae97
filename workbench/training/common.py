"""What every training script shares: its config's common fields and their flags, accelerate, the LR schedule,
data streams, the EMA, atomic resumable checkpoints and the step loop.

Each script (``classifier``, ``vae``, ``base``, ``featinv``, ``decoder``) has a config dataclass that extends
:class:`RunConfig`, ``parse_args(argv) -> config`` (one flag per field, built by :func:`config_parser`) and
``main(config)``.

Checkpoints never pickle code: model weights are safetensors, and optimiser / scheduler / RNG
states are plain tensors and numbers saved with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``. A checkpoint folder is written under a temporary name and
renamed into place, so a kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
import shutil
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from ..tinyworld import tinyworld_images  # noqa: F401  (the training scripts' image source)

CKPT = "checkpoint"
WARMUP_STEPS = 200  # the LR warms up linearly over min(WARMUP_STEPS, steps // 10) steps, then decays (cosine_lr)
EMA_DECAY = 0.999  # the default decay of the EMA weights that the diffusion scripts save
EMA_START_STEP = 200  # up to this step the EMA copies the weights (decay 0) rather than averaging the early ones


# ---------------------------------------------------------------------- config
@dataclass(kw_only=True)
class RunConfig:
    """The fields every training script shares; each script's config extends it (and sets the first three)."""

    steps: int  # optimiser steps in total (a resumed run continues to this)
    batch_size: int  # images per optimiser step on each process
    lr: float  # peak learning rate (linear warm-up, then cosine decay to a tenth)
    out: str  # run folder for checkpoints and the final weights
    seed: int = 0  # seeds the weights, the data and every random draw of the loop
    device: str = "auto"  # auto | cpu | cuda (accelerate picks the GPU when 'auto')
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "no"  # autocast precision; 'auto' is bf16 where the
    # device computes it natively (recent GPUs, CPUs with AVX512-BF16/AMX), else fp32
    grad_accum: int = 1  # gradient accumulation steps
    save_every: int = 500  # steps between checkpoints
    resume: bool = False  # continue from OUT/checkpoint if it exists
    ship: str | None = None  # also write fp16 weights and card into this data folder
    max_minutes: float | None = None  # time budget: after 30 steps the total is cut to what fits (the LR schedule
    # follows)
    progress: bool = True  # progress bars (without them, a log line every 100 steps)


def field_comments(cls) -> dict[str, str]:
    """The ``# comment`` beside each field of the config dataclass ``cls`` and its dataclass bases, with the
    comment lines right below it: the config's documentation, which :func:`config_parser` shows as the flags' help.

    Example:
        >>> field_comments(RunConfig)["save_every"]
        'steps between checkpoints'
    """
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except OSError:  # no source shipped (a bytecode-only install): flags without help, not a failure
            continue
        name = None
        for line in source.splitlines():
            if m := re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line):  # `name: type = default  # comment`
                name, out[m[1]] = m[1], m[2]
            elif name and (m := re.match(r"\s+#\s*(.*)$", line)):  # its continuation
                out[name] += " " + m[1]
            else:
                name = None
    return out


def int_tuple(text: str) -> tuple[int, ...]:
    """``"16,32,32"`` -> ``(16, 32, 32)``: how a ``tuple[int, ...]`` field is written on the command line."""
    return tuple(int(w) for w in text.split(","))


def config_parser(cls, *, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag-name`` per field of the config dataclass ``cls``: type, choices and
    default from the field (no default: a required flag), help from its comment (:func:`field_comments`).

    Types: ``int``, ``float``, ``str``, ``X | None``, ``Literal[...]`` (choices), ``tuple[int, ...]`` (written
    ``16,32,32``), ``dict`` (JSON); a ``bool`` field is a switch (``--flag``), or ``--flag/--no-flag`` when it
    defaults to true. The script's own fields come first, then :class:`RunConfig`'s.

    Example:
        >>> config_parser(VAEConfig, prog="workbench train-vae", description="").parse_args(["--out", "runs/vae"])
    """
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    common = {f.name for f in dataclasses.fields(RunConfig)}
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in common):
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:  # X | None
            kind = next(a for a in args if a is not type(None))
        required = f.default is dataclasses.MISSING
        kw: dict[str, Any] = {"dest": f.name, "help": comments.get(f.name, "").replace("%", "%%")}
        if required:
            kw["required"] = True
        else:
            kw["default"] = f.default
            kw["help"] += " (default: %(default)s)"
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        elif typing.get_origin(kind) is Literal:
            kw.update(choices=list(typing.get_args(kind)), type=type(typing.get_args(kind)[0]))
        elif typing.get_origin(kind) is tuple:
            kw.update(type=int_tuple, metavar="N,N,...")
            if not required:
                kw["help"] = kw["help"].replace("%(default)s", ",".join(map(str, f.default)))
        else:
            kw["type"] = json.loads if kind is dict else kind
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    return p


def parse_config(cls, argv=None, *, prog: str, description: str):
    """``argv`` (default ``sys.argv[1:]``) parsed by :func:`config_parser` into a ``cls`` instance: the body of
    every training script's ``parse_args``."""
    return cls(**vars(config_parser(cls, prog=prog, description=description).parse_args(argv)))


# ---------------------------------------------------------------------- accelerate
def start_run(config):
    """The first step of every script's ``main``: ``(config, accelerator)``, the config with ``'auto'`` precision
    resolved (what the card records), an ``accelerate.Accelerator`` honouring ``device``, ``mixed_precision`` and
    ``grad_accum``, and torch seeded with ``config.seed``. Under ``accelerate launch`` the launcher's settings win for
    the device."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = config.device == "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    # accelerate keeps one state per process, refusing a later run's other precision: only its private reset drops it
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state()
    device_type = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    config = dataclasses.replace(config, mixed_precision=resolve_mixed_precision(config.mixed_precision, device_type))
    acc = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum)
    torch.manual_seed(config.seed)
    return config, acc


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


def adamw_with_schedule(params, config: RunConfig, *, weight_decay: float, warmup: int = WARMUP_STEPS):
    """``(AdamW, cosine_lr)`` for ``config.steps`` at ``config.lr``, warming up over ``min(warmup, steps // 10)``."""
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=weight_decay)
    return opt, cosine_lr(opt, warmup=min(warmup, config.steps // 10), total=config.steps)


def optimiser_step(acc, loss: torch.Tensor, model: nn.Module, optimizer, lr_scheduler, *,
                   max_grad_norm: float | None = None) -> None:
    """Backward ``loss`` through accelerate, clip ``model``'s gradients to ``max_grad_norm`` (if given), step the
    optimiser and the LR schedule and clear the gradients (call it inside ``acc.accumulate(model)``)."""
    acc.backward(loss)
    if max_grad_norm is not None:
        acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, *, step: int) -> None:
    """Move ``ema``'s weights towards ``model``'s: ``ema += (1 - decay) * (model - ema)``; up to step
    :data:`EMA_START_STEP` a copy (decay 0)."""
    weight = 1 - (decay if step > EMA_START_STEP else 0.0)
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), weight)


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
@torch.no_grad()
def encode_all(base, images_u8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Scaled latents of every image, batched: ``uint8 [N, 3, H, W]`` -> ``float [N, C, h, w]``."""
    return torch.cat([base.encode(images_u8[s:s + batch_size].float() / 255)
                      for s in range(0, len(images_u8), batch_size)])


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


def resume_run(config: RunConfig, *, modules: dict[str, nn.Module], optimizer, lr_scheduler,
               stream: "TensorStream | None" = None) -> dict[str, Any] | None:
    """With ``config.resume``, restore ``config.out``'s checkpoint into the modules, optimiser, LR schedule and
    ``stream``; returns its state (``state["step"]``: where to start) or ``None`` (no resume, or no checkpoint)."""
    if not config.resume:
        return None
    state = load_checkpoint(config.out, modules=modules, optimizer=optimizer, lr_scheduler=lr_scheduler)
    if state is None:
        return None
    print(f"resumed from step {state['step']} of {config.out}", flush=True)
    if stream is not None:
        stream.load_state_dict(state["extra"]["stream"])
    return state


def save_if_due(loop: "Steps", step: int, acc, config: RunConfig, *, modules: dict[str, nn.Module], optimizer,
                lr_scheduler, extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint after ``step`` every ``config.save_every`` steps and at the last one (main process only)."""
    if loop.should_save(step, config.save_every):
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(config.out, step=step + 1, modules=modules, optimizer=optimizer, lr_scheduler=lr_scheduler,
                            extra=extra)


def command_line() -> str:
    """The command that started this process, as a user would type it (``workbench train-...``)."""
    argv0 = Path(sys.argv[0]) if sys.argv else Path()
    if argv0.name == "workbench" or argv0.parent.name == "cli":  # the entry point, or python -m workbench.cli
        return " ".join(["workbench"] + sys.argv[1:])
    return " ".join(["python -m workbench.training." + argv0.stem] + sys.argv[1:])


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
        >>> loop = Steps(start, config.steps, desc="vae", max_minutes=config.max_minutes, lr_scheduler=sched)
        >>> for step in loop:
        ...     loss = ...; loop.log(loss=loss.item())
        ...     save_if_due(loop, step, acc, config, modules=..., optimizer=opt, lr_scheduler=sched)
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
