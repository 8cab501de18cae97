"""What every training script shares in its loop: accelerate and the processes it runs, the LR schedule, the EMA,
the time budget and the step loop. The config (:mod:`workbench.training.config`), the run folder's checkpoints and
caches (:mod:`workbench.training.checkpoint`) and the data streams (:mod:`workbench.training.data`) sit below it;
their names are importable from here too, where the scripts import them.

Each script (``classifier``, ``vae``, ``base``, ``featinv``, ``decoder``) has a config dataclass that extends
:class:`~workbench.training.config.RunConfig`, ``parse_args(argv) -> config`` (one flag per field, built by
:func:`~workbench.training.config.config_parser`) and ``main(config)``.

Under ``accelerate launch`` (several processes, one per GPU) every process runs the whole script: each trains on
its own slice of every global batch (``--batch-size`` items per process), draws its own noise, and agrees with the
others on every decision that ends or shapes the loop (the time budget is measured by the main process and
broadcast). Only the main process writes checkpoints, weights, cards and caches; the others wait where they must
read what it wrote.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..tinyworld import tinyworld_images  # noqa: F401  (the training scripts' image source)
from .checkpoint import (CKPT, cached_tensor, check_resume, checkpoint_folder, init_card,  # noqa: F401
                         load_checkpoint, process_states, removed_on_failure, resume_run, save_checkpoint, save_if_due,
                         state_fingerprint)
from .config import (RunConfig, check_int_field, check_snr_gamma, config_parser, field_comments,  # noqa: F401
                     flag, int_tuple, or_none, parse_config)
from .data import ImageFolderStream, TensorStream, derived_seed  # noqa: F401  (the scripts' data streams)

WARMUP_STEPS = 200  # the LR warms up linearly over min(WARMUP_STEPS, steps // 10) steps, then decays (cosine_lr)
EMA_DECAY = 0.999  # the default decay of the EMA weights that the diffusion scripts save
EMA_START_STEP = 200  # up to this step the EMA copies the weights (decay 0) rather than averaging the early ones


# ---------------------------------------------------------------------- accelerate
def start_run(config):
    """The first step of every script's ``main``: ``(config, accelerator)``, the config with ``'auto'`` precision
    resolved (what the card records), an ``accelerate.Accelerator`` honouring ``device``, ``mixed_precision`` and
    ``grad_accum``, and torch seeded with ``config.seed`` (in every process, so that all build the same weights; the
    loop's random draws then differ per process, see :func:`loop_generator`). Under ``accelerate launch`` the
    launcher's settings win for the device. Before all that, every output folder is checked and ``--out`` claimed
    (:mod:`~workbench.training.outputs`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from .outputs import check_output_folders, claim_out, release_out

    check_output_folders(config)    # --out, --ship, --cache-dir: writable, before any work
    lock = claim_out(config.out)    # one run per --out: a second is refused, naming the first's pid
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
    weakref.finalize(acc, release_out, lock)    # the run is over when its accelerator goes
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
