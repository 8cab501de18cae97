"""A training script's config: the fields every script shares (:class:`RunConfig`), their checks, and the
command-line parser built from the dataclass (one ``--flag`` per field, its help from the field's comment).

Each script (``classifier``, ``vae``, ``base``, ``featinv``, ``decoder``) has a config dataclass that extends
:class:`RunConfig`, and ``parse_args(argv) -> config`` is :func:`parse_config` on it.

Example:
    >>> config_parser(VAEConfig, prog="workbench train-vae", description="").parse_args(["--out", "runs/vae"])
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import ArgumentTypeError, ArgumentValueError


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
            check_int_field(self, name, low=1)
        for name in self.non_negative:
            check_int_field(self, name, low=0)
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
        check_int_field(self, "seed", low=0, high=2 ** 64 - 1)  # what torch.Generator.manual_seed tells apart
        images = getattr(self, "train_images", None)  # the tiny world's training set (an image folder has its own)
        if images is not None:
            check_int_field(self, "train_images", low=1)
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


def check_int_field(config, name: str, *, low: int, high: int | None = None) -> None:
    """Refuse a field of ``config`` that is not an int in ``[low, high]``, naming its flag and value
    (``"--steps 0: must be at least 1"``). Not :func:`workbench.checks.checked_int`, which converts and bounds a
    library argument and names it as a keyword."""
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
