"""Weights and cards on disk: fp16 safetensors files beside JSON cards, written atomically.

Every artefact in ``data/`` (classifiers, the diffusion base's prompt embeddings, inverters, decoders) is stored
through these functions, so a missing or corrupted file always fails the same way: a
:class:`~workbench.errors.WeightsUnavailableError` that names the file and the fix.

Example:
    >>> save_state(model, Path("out/model.safetensors"))          # fp16, atomic
    >>> model.load_state_dict(load_state(Path("out/model.safetensors")))
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsUnavailableError
from .paths import data_dir


def card_path(name: str, root: Path | None = None) -> Path:
    """``<root or data/>/<name>.json``: where the card of artefact ``name`` lives."""
    return Path(root or data_dir()) / f"{name}.json"


def weights_path(name: str, root: Path | None = None) -> Path:
    """``<root or data/>/<name>.safetensors``: where the weights of artefact ``name`` live."""
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


#: The last name parts of the integer tensors a weight file may hold (batch norm's step counter, a retrieval bank's
#: uint8 pixels); every other tensor must be floating point.
INTEGER_KEYS = ("num_batches_tracked", "bank_images")

#: The fix every refused weight file's message ends with.
_RESTORE = "Restore it with `git checkout data/` or retrain with `make weights`."


def check_weight_file(path: Path) -> None:
    """The one dtype check of every weight file loaded, from its header alone (nothing is read into memory): each
    tensor floating point, except :data:`INTEGER_KEYS`. An int32 copy of fp16 weights would load, cast, and give
    noise or NaN images; it is refused naming the file and the tensor.

    Raises:
        WeightsUnavailableError: the file is missing, not a safetensors file, or holds integer weights.
    """
    from safetensors import safe_open

    if not Path(path).is_file():
        raise WeightsUnavailableError(
            f"weight file {path} does not exist. Run `make weights` to train the tiny-world artefacts "
            f"(or `git checkout data/` to restore the shipped ones).")
    try:
        with safe_open(str(path), "pt") as f:
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated / garbled files
        raise WeightsUnavailableError(
            f"weight file {path} is corrupted or not a safetensors file ({type(e).__name__}: {e}). {_RESTORE}") from e
    for key, dtype in dtypes.items():
        if not dtype.startswith(("F", "BF")) and key.rsplit(".", 1)[-1] not in INTEGER_KEYS:
            raise WeightsUnavailableError(f"weight file {path} holds {key!r} as {dtype}, not as floating point "
                                          f"(fp16 or fp32): it was re-saved with another dtype. {_RESTORE}")


def check_finite_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The value check of every weight file loaded: no NaN or infinite weight; returns ``state``."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise WeightsUnavailableError(f"weight file {path} holds NaN or infinite values in {key!r} ({bad} of "
                                          f"{value.numel()}). {_RESTORE}")
    return state


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file as fp32 tensors, after :func:`check_weight_file` and :func:`check_finite_state`: a
    missing, corrupted, integer or non-finite file names itself and ``make weights``."""
    from safetensors.torch import load_file

    check_weight_file(path)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated / garbled files
        raise WeightsUnavailableError(
            f"weight file {path} is corrupted or not a safetensors file ({type(e).__name__}: {e}). {_RESTORE}") from e
    return check_finite_state({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)


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
    normal_mode(tmp)
    tmp.replace(path)


def normal_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would (``0o666`` less the umask, 0644 under the usual 022):
    safetensors writes its files 0600, which other users of a shared checkout could not read."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_card(name: str, card: dict[str, Any], root: Path | None = None) -> Path:
    """Write the JSON card of artefact ``name`` atomically; returns its path."""
    path = card_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
