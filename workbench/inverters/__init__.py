"""Inverters: from a classifier's feature map back to images.

Every inverter has the same call, ``invert(features, num_samples=..., seed=..., progress=..., batch_size=...)
-> Tensor[B, S, 3, H, W]``, and the same attributes: ``classifier_name``, ``layer``, ``feature_shape``, ``pooling``,
``image_size`` (the :class:`~workbench.inverters.interface.Inverter` protocol).

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
from .interface import read_config


def list_inverters() -> list[str]:
    """Names of the shipped inverters, e.g. ``["tinyworld-cnn/stages.3", "tinyworld-cnn/stages.3-pooled", ...]``."""
    root = data_dir() / "inverters"
    if not root.is_dir():
        return []
    return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in root.glob("*/*/config.json"))


def load_inverter(name_or_path: str | Path, *, classifier: str | None = None, layer: str | None = None,
                  feature_shape: Sequence[int] | None = None, image_size: int | None = None, base=None,
                  device: str | torch.device = "cpu"):
    """Load a shipped inverter by name (see :func:`list_inverters`), from a folder written by ``save_pretrained``,
    or build the optimisation baseline (it has no weights) from ``"optimization:<classifier>/<layer>"``.

    The optional ``classifier``, ``layer``, ``feature_shape`` and ``image_size`` are checked against what the
    inverter was trained for; a mismatch (say, ViT features for a CNN inverter) is refused with a clear error.

    Loading leaves the caller's random state as it was (modules draw initial weights before theirs load, from a
    forked generator).

    Example:
        >>> inv = wb.load_inverter("tinyworld-cnn/stages.3")
        >>> opt = wb.load_inverter("optimization:tinyworld-cnn/stages.3")  # an OptimizationInverter
    """
    if layer is not None:
        check_layer(layer)
    check_device(device)
    with torch.random.fork_rng(devices=[]):
        return _load_inverter(name_or_path, classifier=classifier, layer=layer, feature_shape=feature_shape,
                              image_size=image_size, base=base, device=device)


def _load_inverter(name_or_path: str | Path, *, classifier: str | None, layer: str | None,
                   feature_shape: Sequence[int] | None, image_size: int | None, base, device: str | torch.device):
    """:func:`load_inverter` without its guard of the caller's random state."""
    from ..errors import InverterMismatchError
    from .featinv import FeatInv

    spec = str(name_or_path)
    baseline = _optimization_baseline(spec, device=device) if spec.startswith("optimization:") else None
    path = Path(name_or_path)
    if baseline is None and not (path / "config.json").is_file():
        shipped = list_inverters()
        if str(name_or_path) not in shipped:
            close = difflib.get_close_matches(str(name_or_path), shipped, n=3, cutoff=0.3)
            raise WeightsUnavailableError(
                f"no inverter {str(name_or_path)!r}: it is neither a shipped name nor a folder with config.json. "
                f"Closest shipped: {close or shipped}. Train one with `workbench train-inverter` or run `make weights`.")
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
    kind = cfg.get("class", "FeatInv")
    if kind == "FeatInv":
        return FeatInv.from_pretrained(path, base=base, device=device)
    if kind == "DecoderInverter":
        from .decoder import DecoderInverter

        return DecoderInverter.from_pretrained(path, device=device)
    if kind == "OptimizationInverter":
        from .optimization import OptimizationInverter

        return OptimizationInverter.from_pretrained(path, device=device)
    raise WeightsUnavailableError(f"{path / 'config.json'} names an unknown inverter class {kind!r} (expected FeatInv, "
                                  "DecoderInverter or OptimizationInverter); restore the file from git or re-save "
                                  "the inverter with save_pretrained")


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
