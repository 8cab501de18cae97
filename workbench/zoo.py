"""The tiny world's shipped classifiers: architectures, cards and weight files in ``data/``.

Each shipped classifier is a timm architecture sized for 32 px input, stored as
``data/<name>.safetensors`` (fp16) beside ``data/<name>.json``, its card. The card records the
architecture arguments, the training command, seed, steps, wall time and measured test accuracy,
so the file alone says what it is.

| name            | architecture                                   | inverted layers                     |
|-----------------|------------------------------------------------|-------------------------------------|
| tinyworld-cnn   | timm ConvNeXt, patch-1 stem, 4 stages          | ``stages.2`` (8x8), ``stages.3`` (4x4) |
| tinyworld-vit   | timm VisionTransformer, patch 4 -> 8x8 tokens, class token | ``blocks.2``, ``blocks.5`` (8x8) |
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsUnavailableError
from .models import Classifier
from .paths import data_dir

#: Normalisation used by all tiny-world classifiers (inputs are in [0, 1]).
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.25, 0.25, 0.25)
TINY_INPUT_SIZE = (3, 32, 32)

#: name -> (architecture family, constructor keyword arguments). These are the shipped configs.
SHIPPED_CLASSIFIERS: dict[str, dict[str, Any]] = {
    "tinyworld-cnn": {
        "architecture": "convnext",
        "arch_args": {"depths": [2, 2, 3, 2], "dims": [32, 64, 128, 192], "patch_size": 1, "num_classes": 8},
        "layers": {"last": "stages.3", "mid": "stages.2"},
    },
    "tinyworld-vit": {
        "architecture": "vit",
        "arch_args": {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4,
                      "num_classes": 8, "class_token": True, "global_pool": "token"},
        "layers": {"last": "blocks.5", "mid": "blocks.2"},
    },
}


def build_network(architecture: str, arch_args: dict[str, Any]) -> nn.Module:
    """Build a timm network from a card's ``architecture`` and ``arch_args`` (random weights).

    Args:
        architecture: ``"convnext"`` or ``"vit"``.
        arch_args: keyword arguments of ``timm.models.convnext.ConvNeXt`` or
            ``timm.models.vision_transformer.VisionTransformer``.
    """
    from timm.models.convnext import ConvNeXt
    from timm.models.vision_transformer import VisionTransformer

    args = dict(arch_args)
    if architecture == "convnext":
        args["depths"], args["dims"] = tuple(args["depths"]), tuple(args["dims"])
        return ConvNeXt(**args)
    if architecture == "vit":
        return VisionTransformer(**args)
    raise ValueError(f"unknown architecture {architecture!r}; expected 'convnext' or 'vit'")


def create_classifier(name: str, **overrides: Any) -> Classifier:
    """A freshly initialised tiny-world classifier (random weights), wrapped with its normalisation.

    Args:
        name: a key of :data:`SHIPPED_CLASSIFIERS`.
        **overrides: architecture arguments to change (tests use smaller widths).
    """
    if name not in SHIPPED_CLASSIFIERS:
        raise ValueError(f"unknown tiny-world classifier {name!r}; shipped: {sorted(SHIPPED_CLASSIFIERS)}")
    spec = SHIPPED_CLASSIFIERS[name]
    net = build_network(spec["architecture"], {**spec["arch_args"], **overrides})
    return Classifier(net, TINY_MEAN, TINY_STD, TINY_INPUT_SIZE, name=name)


def card_path(name: str, root: Path | None = None) -> Path:
    return Path(root or data_dir()) / f"{name}.json"


def weights_path(name: str, root: Path | None = None) -> Path:
    return Path(root or data_dir()) / f"{name}.safetensors"


def read_card(name: str, root: Path | None = None) -> dict[str, Any]:
    """The JSON card of a shipped artefact; a clear error if it is missing or unreadable."""
    path = card_path(name, root)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the card of {name!r} is missing: {path} does not exist. Run `make weights` to train the tiny-world "
            f"artefacts, or set WORKBENCH_DATA to a folder that holds them.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsUnavailableError(f"the card {path} is not valid JSON ({e}); restore it from git or run `make weights`.") from e


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file as fp32 tensors; a missing or corrupted file names itself and ``make weights``."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise WeightsUnavailableError(
            f"weight file {path} does not exist. Run `make weights` to train the tiny-world artefacts "
            f"(or `git checkout data/` to restore the shipped ones).")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated / garbled files
        raise WeightsUnavailableError(
            f"weight file {path} is corrupted or not a safetensors file ({type(e).__name__}: {e}). "
            f"Restore it with `git checkout data/` or retrain with `make weights`.") from e
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def save_state(module_or_state: nn.Module | dict[str, torch.Tensor], path: Path, *, fp16: bool = True,
               metadata: dict[str, str] | None = None) -> None:
    """Write weights as (fp16) safetensors, atomically (write to a temporary name, then rename)."""
    from safetensors.torch import save_file

    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    out = {k: (v.detach().half() if fp16 and v.is_floating_point() else v.detach()).contiguous().cpu()
           for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp), metadata=metadata)
    tmp.replace(path)


def write_card(name: str, card: dict[str, Any], root: Path | None = None) -> Path:
    path = card_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def load_shipped_classifier(name: str, *, device: str | torch.device = "cpu", root: Path | None = None) -> Classifier:
    """Load a shipped tiny-world classifier from ``data/`` (or ``root``), in eval mode.

    The card's architecture is rebuilt and the weights are loaded strictly: a card that does not
    match its weights is refused with a message naming both files.
    """
    card = read_card(name, root)
    net = build_network(card["architecture"], card["arch_args"])
    wpath = weights_path(name, root)
    state = load_state(wpath)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailableError(
            f"the card {card_path(name, root)} does not match the weights in {wpath}: {str(e).splitlines()[0]} ... "
            f"Retrain with `make weights` or restore both files with `git checkout data/`.") from e
    clf = Classifier(net, card.get("mean", TINY_MEAN), card.get("std", TINY_STD),
                     card.get("input_size", TINY_INPUT_SIZE), name=name)
    return clf.to(device).eval()


def save_random_weights(root: str | Path) -> None:
    """Write randomly initialised tiny-world classifiers with cards to ``root`` (for testing code paths
    before trained weights exist; point ``WORKBENCH_DATA`` at ``root``)."""
    root = Path(root)
    for name, spec in SHIPPED_CLASSIFIERS.items():
        torch.manual_seed(0)
        clf = create_classifier(name)
        save_state(clf.model, weights_path(name, root))
        write_card(name, {"name": name, "architecture": spec["architecture"], "arch_args": spec["arch_args"],
                          "mean": TINY_MEAN, "std": TINY_STD, "input_size": TINY_INPUT_SIZE,
                          "note": "random weights, for tests only"}, root)
