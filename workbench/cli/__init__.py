"""The ``workbench`` command line: ``workbench COMMAND [--help | ARGS]``.

Each command is a module with ``parse_args(argv)`` and ``main(args)``; the training commands live in
``workbench/training/``, the others here. The library's own errors (and a missing file, a folder in the way, a place
that cannot be written) end a command with ``workbench COMMAND: message`` on stderr (one line, or one per step of a
fix in several steps) and exit status 1. ``workbench --version`` prints the version.
Output paths (``--out``, ``evaluate --json``) and ``--device`` are checked before any command starts its work.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

#: command -> (module with parse_args and main, one-line description)
COMMANDS = {
    "demo": ("workbench.cli.demo", "invert held-out tiny-world images at four layers; write a figure and a table"),
    "layers": ("workbench.cli.layers", "print a model's layer table (names, modules, shapes, strides)"),
    "invert": ("workbench.cli.invert", "invert one of your own image files at a layer and save the figure"),
    "evaluate": ("workbench.cli.evaluate", "measure one inverter on held-out tiny-world images"),
    "train-classifier": ("workbench.training.classifier", "train a tiny-world classifier (CNN or ViT)"),
    "train-vae": ("workbench.training.vae", "train the tiny diffusion base's autoencoder"),
    "train-base": ("workbench.training.base", "train the tiny diffusion base (a UNet on the VAE's latents)"),
    "train-inverter": ("workbench.training.featinv", "train a FeatInv inverter for a classifier's layer"),
    "train-decoder": ("workbench.training.decoder", "train the deterministic decoder baseline for a layer"),
    "distill": ("workbench.training.distill", "distil a FeatInv inverter into a one-step inverter"),
    "convert-official": ("workbench.cli.convert_official", "turn an official FeatInv .ckpt into an inverter folder"),
    "train-factor-reader": ("workbench.training.factor_reader", "train the judge that reads every tiny-world factor"),
}

#: commands whose --out is a folder (a run folder, or the demo's outputs), checked before any slow work
_FOLDER_OUT = {"demo", "train-classifier", "train-vae", "train-base", "train-inverter", "train-decoder",
               "distill", "train-factor-reader", "convert-official"}
#: commands that write a file named by another flag than --out: command -> that argument
_FILE_FLAGS = {"evaluate": "json"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every command's ``--help``: the module docstring as written, and each flag's default after its help."""


def add_common(p: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """The flags every non-training command shares, with one help text: ``--seed``, ``--device`` and (with
    ``progress``) ``--no-progress``."""
    p.add_argument("--seed", type=int, default=0, help="seeds every random draw; the same seed gives the same images")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N; auto: the GPU if there is one, else the CPU")
    if progress:
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def resolved_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; any other value as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return ("usage: workbench COMMAND [ARGS]   (workbench COMMAND --help for a command's arguments;\n"
            "       workbench --version)\n\ncommands:\n"
            + "\n".join(lines))


def check_out(args, *, folder: bool, attr: str = "out") -> None:
    """Refuse an output path that cannot be written, before any slow work: a path below a file, an existing file
    where a folder goes (``folder``), an existing folder where a file goes, or a place this process cannot write.

    Args:
        args: the parsed arguments; ``args.<attr>`` is the path (``None``: nothing to check).
        folder: the path names a folder (a run folder, the demo's outputs) rather than a file.
        attr: the argument holding the path (``"out"``, or ``"json"`` for ``workbench evaluate``).

    Raises:
        NotADirectoryError: naming the file in the way. IsADirectoryError: a folder where a file goes.
        PermissionError: naming the folder that cannot be written.
    """
    out = getattr(args, attr, None)
    if out is None:
        return
    flag, out = f"--{attr.replace('_', '-')}", Path(out)
    for p in ([out] if folder else []) + list(out.parents):
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{flag} {str(out)!r}: {str(p)!r} is a file, not a folder")
    if not folder and out.is_dir():
        raise IsADirectoryError(f"{flag} {str(out)!r} is a folder; name a file in it, e.g. "
                                f"{str(out / ('figure.png' if attr == 'out' else 'summary.json'))!r}")
    _check_writable(flag, out, folder)


def _check_writable(flag: str, out: Path, folder: bool) -> None:
    """Create and remove a file where ``out`` will be written (in the nearest folder that exists), so that a
    read-only place fails now, not after the work; an existing file must itself be writable."""
    import os
    import tempfile

    if out.is_file() and not os.access(out, os.W_OK):
        raise PermissionError(f"{flag} {str(out)!r}: the file exists and cannot be overwritten (permission denied)")
    place = next(p for p in ([out] if folder else []) + list(out.parents) if p.is_dir())
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".workbench-write-check-")
    except OSError as err:
        raise PermissionError(f"{flag} {str(out)!r}: cannot write in {str(place)!r} "
                              f"({err.strerror or type(err).__name__}); choose another place") from None
    os.close(fd)
    os.unlink(probe)


def main(argv=None) -> int:
    """Run ``workbench COMMAND ARGS``; returns the exit status (0: done, 1: a user error, 2: an unknown command).

    Example:
        >>> main(["layers", "tinyworld-cnn", "--spatial"])
    """
    from ..errors import WorkbenchError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"workbench {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        print(f"workbench: unknown command {cmd!r}" + (f"; did you mean {close[0]!r}?" if close else "")
              + f"\ncommands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    args = module.parse_args(rest)  # argparse prints its own usage errors and exits with status 2
    try:
        check_out(args, folder=cmd in _FOLDER_OUT, attr=_FILE_FLAGS.get(cmd, "out"))
        if getattr(args, "device", None) not in (None, "auto"):  # "auto": the GPU if there is one, else the CPU
            from ..checks import check_device

            check_device(args.device, "--device")
        if COMMANDS[cmd][0].startswith("workbench.cli.") and hasattr(args, "device"):  # training keeps "auto"
            args.device = resolved_device(args.device)
        result = module.main(args)
    except (WorkbenchError, OSError) as err:  # OSError: a missing file, a folder in the way, no permission
        return _fail(cmd, str(err))
    except SystemExit as err:  # a command that stops with a message, e.g. SystemExit("--min-timestep 2000: ...")
        if isinstance(err.code, str):
            return _fail(cmd, err.code)
        raise
    return result if isinstance(result, int) else 0


def _fail(cmd: str, message: str) -> int:
    """Print ``workbench CMD: message`` on stderr; each line's spaces are tidied, and a message written on several
    lines (numbered fixes) keeps them, indented under the first."""
    lines = [" ".join(line.split()) for line in message.removeprefix(f"workbench {cmd}: ").splitlines()]
    print(f"workbench {cmd}: " + "\n  ".join(line for line in lines if line), file=sys.stderr)
    return 1
