"""Run folders: atomic, resumable checkpoints, the cards' provenance and the caches a run keeps beside them.

Checkpoints never pickle code: model weights are safetensors, and optimiser / scheduler / RNG
states are plain tensors and numbers saved with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``. A checkpoint folder is written under a temporary name and
renamed into place, so a kill at any moment leaves the previous checkpoint intact. Only the main process writes;
every process's random state is gathered into the checkpoint (:func:`process_states`).

Example:
    >>> check_resume(config, what="the VAE")                  # before anything loads
    >>> state = resume_run(config, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RunConfig

CKPT = "checkpoint"


def process_states(acc, generator: torch.Generator | None) -> list[dict[str, torch.Tensor]]:
    """Every process's random state (torch's global RNG, the loop's generator), gathered for the checkpoint, in
    rank order. A collective: every process calls it at the same step."""
    mine = {"torch_rng": torch.get_rng_state(),
            "generator": (generator.get_state() if generator is not None else torch.get_rng_state())}
    if acc is None or acc.num_processes == 1:
        return [mine]
    from accelerate.utils import gather_object

    return gather_object([mine])


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
