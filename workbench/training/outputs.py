"""A run's output folders, before any work: each one writable (``--out``, ``--ship``, ``--cache-dir``), and
``--out`` claimed by one process at a time.

Two ``train-inverter`` runs on one ``--out`` used to train side by side and collide at the end, in
``checkpoint.tmp``. The first now writes ``<out>/run.lock`` with its pid and command line; a second process is
refused at start with :class:`~workbench.errors.ConcurrentUseError`, naming the first. The lock goes when the run
ends (its accelerator is freed) or its process exits; a lock whose process has died is taken over, and a process
may claim again a folder it holds (a notebook that trains twice into one folder).

Example:
    >>> check_output_folders(config)      # --out, --ship and --cache-dir, before anything loads
    >>> lock = claim_out(config.out)      # <out>/run.lock, until release_out(lock) or the process ends
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ArgumentValueError, ConcurrentUseError

#: The file that names the process writing into a run's ``--out``.
LOCK_NAME = "run.lock"


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse ``path`` as an output folder unless it is one, or can be made one, that this process can write in:
    not a file, not below a file, and its closest existing folder writable.

    Raises:
        ArgumentValueError: naming ``flag``, the path and what is in the way.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArgumentValueError(f"{flag} {path}: is a file, not a folder; pass a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ArgumentValueError(f"{flag} {path}: {existing} is a file, not a folder")
    try:        # a file made and removed: os.access says yes to root on a read-only mount
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".workbench-write-check-")
    except OSError as err:
        raise ArgumentValueError(f"{flag} {path}: cannot write in {existing} ({err.strerror or type(err).__name__}); "
                                 "pick a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_output_folders(config: Any) -> None:
    """Every output folder of a run's ``config``, before any work: ``out``, and ``ship`` and ``cache_dir`` where the
    command has them (``cache_dir="none"`` keeps no cache)."""
    check_writable_folder(config.out, "--out")
    if getattr(config, "ship", None):
        check_writable_folder(config.ship, "--ship")
    cache_dir = getattr(config, "cache_dir", None)
    if cache_dir and cache_dir != "none":
        check_writable_folder(cache_dir, "--cache-dir")


def _holder(lock: Path) -> dict[str, Any] | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # another user's process: alive
        return True
    return True


def claim_out(out: str | os.PathLike) -> Path:
    """Write ``<out>/run.lock`` naming this process (pid, start time, command line), removed by
    :func:`release_out` when the run ends or the process exits; returns its path. Under ``accelerate launch`` only
    the main process (``RANK`` 0) claims it.

    Raises:
        ConcurrentUseError: another living process holds ``out``; the message names its pid and command.
    """
    lock = Path(out) / LOCK_NAME
    if os.environ.get("RANK", "0") != "0":
        return lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(lock)
            if holder is None and lock.exists() and time.time() - lock.stat().st_mtime < 5:
                time.sleep(0.2)     # another process is writing its lock right now
                continue
            pid = (holder or {}).get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
                raise ConcurrentUseError(
                    f"--out {out}: another run (pid {pid}, started {holder.get('started')}: {holder.get('command')}) "
                    f"is writing there; wait for it to end, or pass another --out (if no run is, delete {lock})"
                ) from None
            lock.unlink(missing_ok=True)    # ours already, or its process died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(release_out, lock)
        return lock
    raise ConcurrentUseError(f"--out {out}: could not claim {lock}; another run keeps taking it")


def release_out(lock: Path) -> None:
    """Remove a lock of :func:`claim_out` if this process holds it (at the end of a run, or when the process ends)."""
    if (_holder(lock) or {}).get("pid") == os.getpid():
        Path(lock).unlink(missing_ok=True)
