"""What every training script shares: its config's common fields, their flags and checks, accelerate and the
processes it runs, the LR schedule, the EMA, atomic resumable checkpoints and the step loop (the data streams are
in :mod:`workbench.training.data`).

Each script (``classifier``, ``vae``, ``base``, ``featinv``, ``decoder``) has a config dataclass that extends
:class:`RunConfig`, ``parse_args(argv) -> config`` (one flag per field, built by :func:`config_parser`) and
``main(config)``.

Under ``accelerate launch`` (several processes, one per GPU) every process runs the whole script: each trains on
its own slice of every global batch (``--batch-size`` items per process), draws its own noise, and agrees with the
others on every decision that ends or shapes the loop (the time budget is measured by the main process and
broadcast). Only the main process writes checkpoints, weights, cards and caches; the others wait where they must
read what it wrote.

Checkpoints never pickle code: model weights are safetensors, and optimiser / scheduler / RNG
states are plain tensors and numbers saved with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``. A checkpoint folder is written under a temporary name and
renamed into place, so a kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..errors import ArgumentTypeError, ArgumentValueError
from ..tinyworld import tinyworld_images  # noqa: F401  (the training scripts' image source)
from .data import ImageFolderStream, TensorStream, derived_seed  # noqa: F401  (the scripts' data streams)

CKPT = "checkpoint"
WARMUP_STEPS = 200  # the LR warms up linearly over min(WARMUP_STEPS, steps // 10) steps, then decays (cosine_lr)
EMA_DECAY = 0.999  # the default decay of the EMA weights that the diffusion scripts save
EMA_START_STEP = 200  # up to this step the EMA copies the weights (decay 0) rather than averaging the early ones


# ---------------------------------------------------------------------- config
@dataclass(kw_only=True)
class RunConfig:
    """The fields every training script shares; each script's config extends it (and sets the first three).

    Constructing one checks every value (:meth:`check`): a bad one raises ``ArgumentValueError`` (a ``ValueError``)
    naming the flag, and ``parse_args`` turns that into a usage error before anything loads.
    """

    steps: int  # training steps in total (a resumed run continues to this); each step trains on one batch per
    # process, and the optimiser steps every --grad-accum steps
    batch_size: int  # images per process in each step: under N processes (accelerate launch) a step trains on
    # N x this (the global batch), each process on its own share
    lr: float  # peak learning rate (linear warm-up, then cosine decay to a tenth); not scaled with the processes
    out: str  # run folder for checkpoints and the final weights
    seed: int = 0  # seeds the weights, the data order and every random draw of the loop (each process draws its
    # own noise from it)
    device: str = "auto"  # auto | cpu | cuda (accelerate picks the GPU when 'auto')
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # autocast precision, the same default in
    # every command: 'auto' is bf16 on a GPU that computes it natively and fp32 ('no') on a CPU; reduced precision
    # on a CPU only when asked for (fp16 or bf16)
    grad_accum: int = 1  # gradient accumulation steps
    save_every: int = 500  # steps between checkpoints
    resume: bool = False  # continue from OUT/checkpoint if it exists
    ship: str | None = None  # also write fp16 weights and card into this data folder
    max_minutes: float | None = None  # time budget: after 30 steps the total is cut to what fits (the LR schedule
    # follows)
    progress: bool = True  # progress bars (without them, a log line every 100 steps)

    #: fields naming what a run trains: ``--resume`` refuses a checkpoint whose run had other values
    run_keys: ClassVar[tuple[str, ...]] = ()
    #: fields that must be at least 1 (each script adds its own)
    positive: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "grad_accum", "save_every")
    #: fields that must be at least 0
    non_negative: ClassVar[tuple[str, ...]] = ()
    #: fields that must lie in [0, 1]
    fractions: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Refuse values a run would fail on, or silently misuse, later (``--steps 0`` trains nothing,
        ``--save-every 0`` divides by zero).

        Raises:
            ArgumentValueError: ``"--flag value: what it must be"`` (a ``ValueError``); ArgumentTypeError: a float or
                a string where a whole number goes.
        """
        for name in self.positive:
            check_int(self, name, low=1)
        for name in self.non_negative:
            check_int(self, name, low=0)
        for name in self.fractions:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ArgumentValueError(f"{flag(name)} {value!r}: must be a fraction in [0, 1]")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr >= 0):
            raise ArgumentValueError(f"--lr {self.lr!r}: must be a finite number >= 0")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, (int, float))
                                                 and math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ArgumentValueError(f"--max-minutes {self.max_minutes!r}: must be a number of minutes > 0, or left "
                                     "out")
        check_int(self, "seed", low=0, high=2 ** 64 - 1)  # what torch.Generator.manual_seed tells apart
        images = getattr(self, "train_images", None)  # the tiny world's training set (an image folder has its own)
        if images is not None and getattr(self, "data", "tinyworld") == "tinyworld" and self.batch_size > images:
            raise ArgumentValueError(f"--batch-size {self.batch_size}: more than the {images} images of "
                                     f"--train-images; lower it or raise --train-images")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ArgumentValueError(f"--device {self.device!r}: expected auto, cpu or cuda")

    def run_record(self) -> dict[str, Any]:
        """What this run trains (:attr:`run_keys` and their values), kept in its checkpoints."""
        return {k: getattr(self, k) for k in self.run_keys}


def flag(name: str) -> str:
    """The command-line flag of a config field: ``"save_every"`` -> ``"--save-every"``."""
    return "--" + name.replace("_", "-")


def check_snr_gamma(config) -> None:
    """Refuse a ``--snr-gamma`` that is not > 0 (none is plain MSE)."""
    if config.snr_gamma is not None and not (isinstance(config.snr_gamma, (int, float)) and config.snr_gamma > 0):
        raise ArgumentValueError(f"--snr-gamma {config.snr_gamma!r}: must be > 0 (5 is the paper's choice), or left "
                                 "out for plain MSE")


def check_int(config, name: str, *, low: int, high: int | None = None) -> None:
    """Refuse a field of ``config`` that is not an int in ``[low, high]``, naming its flag and value."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{flag(name)} {value!r}: must be a whole number")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise ArgumentValueError(f"{flag(name)} {value}: must be {bound}")


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

    Types: ``int``, ``float``, ``str``, ``X | None`` (a number's flag also takes ``none``), ``Literal[...]``
    (choices), ``tuple[int, ...]`` (written ``16,32,32``), ``dict`` (JSON); a ``bool`` field is a switch (``--flag``),
    or ``--flag/--no-flag`` when it defaults to true. The script's own fields come first, then :class:`RunConfig`'s.

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
            if type(None) in args and kind is not str:  # --max-grad-norm none: back to None
                kw["type"] = or_none(kw["type"])
                if "none" not in comments.get(f.name, ""):
                    kw["help"] += " (none: unset)"
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    return p


def or_none(convert):
    """``convert`` for a flag of an optional field, which also takes ``none`` (``--max-grad-norm none``)."""
    def parse(text: str):
        return None if text.strip().lower() == "none" else convert(text)
    parse.__name__ = getattr(convert, "__name__", "value")  # what argparse names in 'invalid float value'
    return parse


def parse_config(cls, argv=None, *, prog: str, description: str):
    """``argv`` (default ``sys.argv[1:]``) parsed by :func:`config_parser` into a ``cls`` instance: the body of
    every training script's ``parse_args``. A value the config refuses (:meth:`RunConfig.check`) is a usage error:
    one line naming the flag and the value on stderr, exit status 2."""
    parser = config_parser(cls, prog=prog, description=description)
    try:
        return cls(**vars(parser.parse_args(argv)))
    except (ValueError, ArgumentTypeError) as e:  # a bad value: argparse's usage error (exit 2), before any loading
        parser.error(str(e))


# ---------------------------------------------------------------------- accelerate
def start_run(config):
    """The first step of every script's ``main``: ``(config, accelerator)``, the config with ``'auto'`` precision
    resolved (what the card records), an ``accelerate.Accelerator`` honouring ``device``, ``mixed_precision`` and
    ``grad_accum``, and torch seeded with ``config.seed`` (in every process, so that all build the same weights; the
    loop's random draws then differ per process, see :func:`loop_generator`). Under ``accelerate launch`` the
    launcher's settings win for the device."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # on a machine without a GPU, 'auto' is the CPU: accelerate then runs the processes of `accelerate launch
    # --multi_gpu --num_processes N` on it, with gloo (without cpu=True it would make each a lone process)
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to this process; use --device cpu or auto")
    # accelerate keeps one state per process, refusing a later run's other precision: only its private reset drops it
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state()
    device_type = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    config = dataclasses.replace(config, mixed_precision=resolve_mixed_precision(config.mixed_precision, device_type))
    acc = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum)
    torch.manual_seed(config.seed)
    return config, acc


def resolve_mixed_precision(mode: str, device_type: str) -> str:
    """``'auto'`` -> ``'bf16'`` on a CUDA device that runs bf16 natively, else ``'no'`` (fp32: on a CPU, ``auto``
    never picks reduced precision); other modes pass through.

    Example:
        >>> resolve_mixed_precision("auto", "cpu"), resolve_mixed_precision("bf16", "cpu")
        ('no', 'bf16')
    """
    if mode != "auto":
        return mode
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
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


def adamw_with_schedule(params, config: RunConfig, *, weight_decay: float, warmup: int = WARMUP_STEPS,
                        schedule: Literal["cosine", "constant"] = "cosine"):
    """``(AdamW, LR schedule)`` for ``config.steps`` at ``config.lr``: :func:`cosine_lr` warming up over
    ``min(warmup, steps // 10)``, or with ``schedule="constant"`` the peak LR throughout (the official FeatInv
    training's). Either has ``sched.horizon["total"]``."""
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=weight_decay)
    if schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        sched.horizon = {"total": config.steps}
        return opt, sched
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
    """Cut a run's total steps to fit ``max_minutes``, measured after ``probe`` steps by the main process and
    broadcast to the others (processes whose clocks disagree on the total would hang at the last step's
    all-reduce).

    Usage: ``total = budget.update(step, total)`` once per step, in every process; it returns the (possibly
    lowered) total and lowers the LR schedule's horizon with it, so the cosine decay still ends at the last step.
    """

    clock = staticmethod(time.monotonic)  #: seconds (a test may skew one process's clock)
    probe_steps = 30  #: steps measured before the total is decided

    def __init__(self, max_minutes: float | None, lr_scheduler=None, probe: int | None = None, acc=None):
        self.limit = None if max_minutes is None else max_minutes * 60
        self.sched = lr_scheduler
        self.probe = probe or self.probe_steps
        self.acc = acc
        self.t0 = self.clock()
        self.seen = 0

    def update(self, step: int, total: int) -> int:
        self.seen += 1
        if self.seen == 1:  # the first step may include compilation: the rate is measured after it
            self.t1 = self.clock()
        if self.limit is None or self.seen != self.probe:
            return total
        per_step = (self.clock() - self.t1) / (self.seen - 1)
        fits = step + 1 + int((self.limit - (self.clock() - self.t0)) / per_step)
        new = max(step + 2, fits) if fits < total else total
        new = main_process_decides(self.acc, new)
        if new != total and self.sched is not None:
            self.sched.horizon["total"] = new
        return new


def main_process_decides(acc, value):
    """``value`` as the main process has it, in every process (a broadcast; ``value`` itself with one process).
    Every process must call it at the same point of the loop."""
    if acc is None or acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def process_of(acc) -> tuple[int, int]:
    """``(rank, world)``: this process's index and the number of processes (``(0, 1)`` without ``acc``)."""
    return (0, 1) if acc is None else (acc.process_index, acc.num_processes)


def loop_generator(config: RunConfig, acc, state: dict[str, Any] | None = None) -> torch.Generator:
    """The generator of a loop's noise and timesteps, on ``acc.device``, and torch's global RNG (dropout, a VAE's
    posterior sample) set up for this process: both seeded from ``config.seed`` and the process's rank (process
    0 keeps ``config.seed`` itself, so a one-process run draws what it always drew), or restored from a
    checkpoint's ``state`` where it saved this process's (a run resumed under the same number of processes
    continues every process's random draws exactly; under another number they are drawn afresh)."""
    rank, world = process_of(acc)
    g = torch.Generator(acc.device if acc is not None else "cpu")
    saved = (state or {}).get("processes")
    if saved is not None and len(saved) == world:
        torch.set_rng_state(saved[rank]["torch_rng"])
        g.set_state(saved[rank]["generator"])
        return g
    start = state["step"] if state else 0
    if rank > 0:
        torch.manual_seed(derived_seed(config.seed, "process", rank, start))
    seed = (config.seed + start) % 2 ** 64 if rank == 0 else derived_seed(config.seed, "noise", rank, start)
    return g.manual_seed(seed)


def process_states(acc, generator: torch.Generator | None) -> list[dict[str, torch.Tensor]]:
    """Every process's random state (torch's global RNG, the loop's generator), gathered for the checkpoint, in
    rank order. A collective: every process calls it at the same step."""
    mine = {"torch_rng": torch.get_rng_state(),
            "generator": (generator.get_state() if generator is not None else torch.get_rng_state())}
    if acc is None or acc.num_processes == 1:
        return [mine]
    from accelerate.utils import gather_object

    return gather_object([mine])


# ---------------------------------------------------------------------- data
@torch.no_grad()
def encode_all(base, images_u8: torch.Tensor, batch_size: int = 1024, *, progress: bool = False) -> torch.Tensor:
    """Scaled latents of every image, batched: ``uint8 [N, 3, H, W]`` -> ``float [N, C, h, w]``; ``progress``
    shows a bar over the images (encoding 50,000 tiny-world images takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(images_u8), desc="VAE encoding", unit="img", disable=not progress) as bar:
        for s in range(0, len(images_u8), batch_size):
            out.append(base.encode(images_u8[s:s + batch_size].float() / 255))
            bar.update(len(out[-1]))
    return torch.cat(out)


def state_fingerprint(*modules: nn.Module, extra: str = "") -> str:
    """A short hash of modules' weights (and ``extra``): the key of a cache computed with them."""
    import hashlib

    h = hashlib.sha256(extra.encode())
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_tensor(cache_dir: str | Path | None, name: str, key: str, compute, *, half: bool = False, acc=None,
                  created: list[Path] | None = None) -> torch.Tensor:
    """``compute()`` once, kept in ``cache_dir/{name}-{key}.safetensors`` for later runs (and ``--resume``).

    ``key`` must change whenever the result would (see :func:`state_fingerprint`). With ``half`` the tensor is
    stored and returned as fp16, unless its values leave fp16's range (then fp32). ``cache_dir=None`` computes
    without writing anything. With several processes (``acc``) the main one computes and writes the file, and the
    others read it once it is there. The path of a file this call wrote is appended to ``created`` (what
    :func:`removed_on_failure` deletes when the run fails)."""
    if acc is None or acc.num_processes == 1:
        return _cached_tensor(cache_dir, name, key, compute, half=half, write=True, created=created)
    with acc.main_process_first():  # the main process computes and writes first; the others then read its file
        return _cached_tensor(cache_dir, name, key, compute, half=half, write=acc.is_main_process, created=created)


def _cached_tensor(cache_dir, name: str, key: str, compute, *, half: bool, write: bool,
                   created: list[Path] | None) -> torch.Tensor:
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
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"value": value.detach().contiguous().cpu()}, str(tmp))
        tmp.replace(path)
        if created is not None:
            created.append(path)
    return value


@contextlib.contextmanager
def removed_on_failure(created: list[Path]):
    """Delete the files listed in ``created`` (and their folders, once empty) when the block raises: a failed run
    leaves no cache behind. A run that is killed cannot clean up; its caches are reused when it is resumed."""
    try:
        yield created
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
        raise


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
                    extra: dict[str, Any] | None = None, processes: list[dict[str, torch.Tensor]] | None = None,
                    run: dict[str, Any] | None = None) -> Path:
    """Write ``out/checkpoint`` atomically: modules as safetensors (fp32), the rest as plain tensors;
    ``processes`` holds every process's random state (:func:`process_states`), ``run`` what the run trains
    (:meth:`RunConfig.run_record`, also in ``step.json``, which ``--resume`` checks before loading anything)."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp, final, old = out / (CKPT + ".tmp"), out / CKPT, out / (CKPT + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in modules.items():
        save_file({k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
                   for k, v in m.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    state = {"step": step, "torch_rng": torch.get_rng_state(), "extra": extra or {}}
    if processes is not None:
        state["processes"] = processes
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if lr_scheduler is not None:
        state["lr_scheduler"] = lr_scheduler.state_dict()
    torch.save(state, tmp / "state.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step, "time": time.time(), "run": run or {},
                                               "processes": len(processes or [None])}))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_folder(out: str | Path) -> Path | None:
    """The checkpoint in ``out``: ``out/checkpoint``, or ``out/checkpoint.old`` where a kill between the two
    renames of :func:`save_checkpoint` left only that; ``None`` when there is none."""
    for ck in (Path(out) / CKPT, Path(out) / (CKPT + ".old")):
        if (ck / "state.pt").is_file():
            return ck
    return None


def load_checkpoint(out: str | Path, *, modules: dict[str, nn.Module], optimizer=None, lr_scheduler=None,
                    map_location="cpu") -> dict[str, Any] | None:
    """Restore ``out/checkpoint`` into the given objects; returns the state (with ``step``) or ``None``."""
    from safetensors.torch import load_file

    ck = checkpoint_folder(out)
    if ck is None:
        return None
    for name, m in modules.items():
        try:
            m.load_state_dict(load_file(str(ck / f"{name}.safetensors")))
        except RuntimeError as e:  # a checkpoint from before step.json recorded the run
            detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
            raise SystemExit(f"--resume {out}: the checkpoint's {name} does not fit this run ({detail}); a run with "
                             "other arguments wrote it: pass that run's arguments, or a new --out") from e
    state = torch.load(ck / "state.pt", map_location=map_location, weights_only=True)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and "lr_scheduler" in state:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def check_resume(config: RunConfig, *, what: str = "") -> None:
    """Before anything loads: with ``--resume``, say in one line when ``config.out`` has no checkpoint yet (the run
    starts from step 0), and refuse a checkpoint of a run that trains something else (another layer, classifier
    or architecture: :attr:`RunConfig.run_keys`), naming both.

    Raises:
        SystemExit: ``"--resume OUT: its checkpoint trains layer=stages.2; this run layer=stages.3 ..."``.
    """
    if not config.resume:
        return
    ck = checkpoint_folder(config.out)
    if ck is None:
        if os.environ.get("RANK", "0") == "0":  # one line, from the main process of a launch
            print(f"--resume: no checkpoint in {config.out} yet; {what or 'the run'} starts from step 0", flush=True)
        return
    try:
        record = json.loads((ck / "step.json").read_text()).get("run") or {}
    except (OSError, json.JSONDecodeError):
        record = {}
    mine = json.loads(json.dumps(config.run_record()))  # tuples as lists, as the file has them
    differ = [k for k in mine if k in record and record[k] != mine[k]]
    if differ:
        theirs = ", ".join(f"{k}={record[k]}" for k in differ)
        ours = ", ".join(f"{k}={mine[k]}" for k in differ)
        raise SystemExit(f"--resume {config.out}: its checkpoint is of a run with {theirs}; this run has {ours}. "
                         "Resume it with its own arguments, or pass a new --out")


def resume_run(config: RunConfig, *, modules: dict[str, nn.Module], optimizer, lr_scheduler,
               stream=None, acc=None) -> dict[str, Any] | None:
    """With ``config.resume``, restore ``config.out``'s checkpoint into the modules, optimiser, LR schedule and
    ``stream`` (its position, which the main process saved for all processes); returns its state
    (``state["step"]``: where to start) or ``None`` (no resume, or no checkpoint)."""
    if not config.resume:
        return None
    state = load_checkpoint(config.out, modules=modules, optimizer=optimizer, lr_scheduler=lr_scheduler)
    if state is None:
        return None
    if acc is None or acc.is_main_process:
        print(f"resumed from step {state['step']} of {config.out}", flush=True)
    if stream is not None and "stream" in state["extra"]:
        stream.load_state_dict(state["extra"]["stream"])
    return state


def save_if_due(loop: "Steps", step: int, acc, config: RunConfig, *, modules: dict[str, nn.Module], optimizer,
                lr_scheduler, extra: dict[str, Any] | None = None, generator: torch.Generator | None = None) -> None:
    """Write a checkpoint after ``step`` every ``config.save_every`` steps and at the last one: every process's
    random state is gathered (every process calls this at every step), and the main process writes."""
    if loop.should_save(step, config.save_every):
        processes = process_states(acc, generator)
        if acc.is_main_process:
            save_checkpoint(config.out, step=step + 1, modules=modules, optimizer=optimizer, lr_scheduler=lr_scheduler,
                            extra=extra, processes=processes, run=config.run_record())


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
    that :class:`StepBudget` may lower to fit ``--max-minutes`` (decided by the main process, the same in all).

    Example:
        >>> loop = Steps(start, config.steps, desc="vae", max_minutes=config.max_minutes, lr_scheduler=sched, acc=acc)
        >>> for step in loop:
        ...     loss = ...; loop.log(loss=loss.item())
        ...     save_if_due(loop, step, acc, config, modules=..., optimizer=opt, lr_scheduler=sched)
    """

    def __init__(self, start: int, total: int, *, desc: str, max_minutes: float | None = None, lr_scheduler=None,
                 progress: bool = True, log_every: int = 100, acc=None):
        from tqdm.auto import tqdm

        self.rank, self.world = process_of(acc)
        self.step, self.total = start, total
        self.desc, self.progress, self.log_every = desc, progress, log_every
        self.start, self.t0, self.values = start, time.time(), {}
        self.budget = StepBudget(max_minutes, lr_scheduler, acc=acc)
        self.bar = tqdm(initial=start, total=total, desc=desc, disable=not progress or self.rank > 0)

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
        if self.world > 1:  # one line per process: they must all end at the same step
            print(f"{self.desc}: process {self.rank} of {self.world} ended at step {self.step}", flush=True)

    def should_save(self, step: int, every: int) -> bool:
        return (step + 1) % every == 0 or step + 1 == self.total

    def log(self, **values: float) -> None:
        """Show ``values`` on the bar; without a bar (``--no-progress``, e.g. under nohup) print a line every
        ``log_every`` steps instead (the main process only)."""
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
        if not self.progress and self.rank == 0 and self.log_every and (self.step + 1) % self.log_every == 0:
            rate = (time.time() - self.t0) / max(1, self.step + 1 - self.start)
            vals = " ".join(f"{k}={v:.4f}" for k, v in values.items())
            print(f"{self.desc}: step {self.step + 1}/{self.total} {vals} {rate:.2f} s/step", flush=True)
