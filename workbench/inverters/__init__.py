"""Inverters: from a classifier's feature map back to images.

Every inverter derives from one base class, :class:`~workbench.inverters.base.InverterBase` (config, files, the
registry of kinds, device and dtype), and has the same call, ``invert(features, num_samples=..., seed=... or
generator=..., sampler=..., progress=..., batch_size=...) -> Tensor[B, S, 3, H, W]``, and the same attributes:
``classifier_name``, ``layer``, ``feature_shape``, ``pooling``, ``image_size`` (the
:class:`~workbench.inverters.interface.Inverter` protocol). FeatInv's sampling settings are one
:class:`~workbench.inverters.sampler.Sampler`.

Shipped inverters live in ``data/inverters/<classifier>/<layer>[-pooled|-decoder]/`` and are named
``<classifier>/<layer>[-pooled|-decoder]`` by :func:`list_inverters`; ``optimization:<classifier>/<layer>`` names the
optimisation baseline, which has no weights.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Sequence

import torch

from ..checks import check_device, check_layer
from ..errors import WeightsUnavailableError
from ..paths import data_dir
from .base import InverterBase
from .interface import read_config


def list_inverters() -> list[str]:
    """Names of the shipped inverters, e.g. ``["tinyworld-cnn/stages.3", "tinyworld-cnn/stages.3-pooled", ...]``."""
    root = data_dir() / "inverters"
    if not root.is_dir():
        return []
    return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in root.glob("*/*/config.json"))


def load_inverter(name_or_path: str | Path, *, classifier: str | None = None, layer: str | None = None,
                  feature_shape: Sequence[int] | None = None, image_size: int | None = None, base=None,
                  device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None) -> InverterBase:
    """Load a shipped inverter by name (see :func:`list_inverters`), from a folder written by ``save_pretrained``
    or the run folder (``--out``) of ``workbench train-inverter`` (its inverter is in ``OUT/inverter/``), or build the optimisation baseline (it has no weights) from ``"optimization:<classifier>/<layer>"``.

    The optional ``classifier``, ``layer``, ``feature_shape`` and ``image_size`` are checked against what the
    inverter was trained for; a mismatch (say, ViT features for a CNN inverter) is refused with a clear error.

    ``torch_dtype`` (``torch.float16``, ``torch.bfloat16``) loads it in half precision, as diffusers'
    ``from_pretrained`` does; images still come back float32, and feature guidance's gradient runs in float32.

    The kind is looked up in the registry (:func:`~workbench.inverters.base.inverter_class`) by the class its
    ``config.json`` names. Loading leaves the caller's random state as it was (modules draw initial weights before
    theirs load, from a forked generator).

    Example:
        >>> inv = wb.load_inverter("tinyworld-cnn/stages.3")
        >>> opt = wb.load_inverter("optimization:tinyworld-cnn/stages.3")  # an OptimizationInverter
        >>> half = wb.load_inverter("tinyworld-cnn/stages.3", torch_dtype=torch.bfloat16)
        >>> mine = wb.load_inverter("runs/x")    # after `workbench train-inverter ... --out runs/x`
    """
    if layer is not None:
        check_layer(layer)
    check_device(device)
    with torch.random.fork_rng(devices=[]):
        inverter = _load_inverter(name_or_path, classifier=classifier, layer=layer, feature_shape=feature_shape,
                                  image_size=image_size, base=base, device=device)
    return inverter if torch_dtype is None else inverter.to(torch_dtype)


def _load_inverter(name_or_path: str | Path, *, classifier: str | None, layer: str | None,
                   feature_shape: Sequence[int] | None, image_size: int | None, base, device: str | torch.device):
    """:func:`load_inverter` without its guard of the caller's random state (and in float32)."""
    from ..errors import InverterMismatchError

    spec = str(name_or_path)
    baseline = _optimization_baseline(spec, device=device) if spec.startswith("optimization:") else None
    path = inverter_folder(name_or_path)
    if baseline is None and not (path / "config.json").is_file():
        if str(name_or_path) not in list_inverters():
            raise WeightsUnavailableError(_not_an_inverter(path))
        path = data_dir() / "inverters" / str(name_or_path)
    cfg = read_config(path) if baseline is None else baseline.config
    expected = {"classifier_name": classifier, "layer": layer,
                "feature_shape": list(feature_shape) if feature_shape is not None else None, "image_size": image_size}
    for key, want in expected.items():
        if want is not None and cfg.get(key) != want:
            raise InverterMismatchError(f"the inverter {str(name_or_path)!r} was trained for {key}={cfg.get(key)!r}, "
                                        f"not {want!r}; pick the inverter of your classifier and layer from "
                                        f"wb.list_inverters()")
    if baseline is not None:
        return baseline
    return InverterBase.from_pretrained(path, base=base, device=device)


def inverter_folder(name_or_path: str | Path) -> Path:
    """The folder holding an inverter's ``config.json``: ``name_or_path`` itself, or its ``inverter/`` subfolder
    when it is the run folder (``--out``) of ``workbench train-inverter`` or ``train-decoder``."""
    path = Path(name_or_path)
    if not (path / "config.json").is_file() and (path / "inverter" / "config.json").is_file():
        return path / "inverter"
    return path


def _not_an_inverter(path: Path) -> str:
    """Why ``path`` is no inverter, and what to do: for a run folder whose training has not finished, wait or
    resume it; for any other name, the closest shipped names."""
    if path.is_dir() and ((path / "checkpoint").is_dir() or (path / "cache").is_dir()):
        return (f"no inverter in {str(path)!r} yet: it is a training run's folder, and the run writes "
                f"{str(path / 'inverter')!r} only when it finishes. Let it finish, or continue it with "
                f"`workbench train-inverter ... --out {path} --resume`")
    if path.is_dir():
        return (f"no inverter in {str(path)!r}: the folder has no config.json, and no inverter/config.json (what "
                f"`workbench train-inverter --out {path}` writes when it finishes). Pass the folder that "
                "save_pretrained wrote, or a shipped name from wb.list_inverters()")
    shipped = list_inverters()
    close = difflib.get_close_matches(str(path), shipped, n=3, cutoff=0.3)
    return (f"no inverter {str(path)!r}: it is neither a shipped name nor a folder. Closest shipped: "
            f"{close or shipped}. To train your own: `workbench train-inverter --classifier NAME --layer NAME "
            "--out runs/NAME`, then wb.load_inverter('runs/NAME')")


def _optimization_baseline(spec: str, *, device: str | torch.device = "cpu"):
    """The optimisation baseline of ``"optimization:<classifier>/<layer>"``, on that shipped or timm classifier."""
    from ..errors import UnknownModelError
    from ..models import load_classifier
    from .optimization import OptimizationInverter

    clf_name, _, layer = spec.removeprefix("optimization:").rpartition("/")
    if not clf_name or not layer:
        raise UnknownModelError(f"{spec!r}: write optimization:<classifier>/<layer>, e.g. "
                                "optimization:tinyworld-cnn/stages.3")
    return OptimizationInverter(load_classifier(clf_name, device=device), layer)
