"""The layer table: every hookable layer of a model with its class, NCHW shape and stride, from one dry forward
pass through :mod:`workbench.hooks` (``workbench layers MODEL`` prints it).

Example:
    >>> layer_table(wb.load_classifier("tinyworld-cnn"), spatial=True)      # name, module, shape, stride
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BadInputError
from .hooks import _Adapter, _expected_channels, _root


def _default_input_size(model: nn.Module, root: nn.Module) -> tuple[int, int, int]:
    from .models import Classifier
    if isinstance(model, Classifier):
        return model.input_size
    img_size = getattr(getattr(root, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return (_expected_channels(model, root) or 3, *tuple(img_size))
    cfg = getattr(root, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    raise BadInputError(f"cannot tell the input size of {type(root).__name__}; pass input_size=(3, H, W)")


def layer_table(model: nn.Module, input_size: Sequence[int] | None = None, *, spatial: bool = False):
    """Every hookable layer with its class, NCHW shape and stride, from one dry forward pass.

    A layer is hookable when it runs in the forward pass and returns a tensor. The dry pass feeds one
    batch of zeros in eval mode under ``no_grad``; training flags are restored afterwards and every
    hook is removed in ``finally``.

    Args:
        model: a :class:`~workbench.models.Classifier` or any ``nn.Module``.
        input_size: ``(C, H, W)``; defaults to the Classifier's ``input_size`` or the timm config.
        spatial: keep only the layers with a spatial map (a stride), the ones an inverter can take
            (``workbench layers MODEL --spatial``).

    Returns:
        pandas.DataFrame with columns ``name``, ``module`` (class name), ``shape`` (``(C, H, W)`` for
        spatial layers, the per-sample shape otherwise) and ``stride`` (input H / map H, an int when
        integral, ``None`` for non-spatial layers), in ``named_modules()`` order.

    Example:
        >>> wb.layer_table(clf).query("stride == 16")
        >>> wb.layer_table(clf, spatial=True)       # only the maps an inverter can take
    """
    import pandas as pd

    root = _root(model)
    size = tuple(int(v) for v in (input_size or _default_input_size(model, root)))
    if len(size) != 3:
        raise BadInputError(f"input_size is (C, H, W), got {size}")
    adapter = _Adapter(root)
    param = next(iter(model.parameters()), None)
    x = torch.zeros(1, *size, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    seen: dict[str, tuple[str, tuple, Any]] = {}

    def make_hook(name: str) -> Callable:
        def forward_hook(module: nn.Module, args: tuple, out: Any) -> None:
            if not isinstance(out, Tensor):
                return
            layout = adapter.layout(name, module, out, size[1:])
            act, _ = layout.to_nchw(out)
            stride = None
            if layout.spatial and act.shape[-2] > 0:
                ratio = size[1] / act.shape[-2]
                stride = int(ratio) if float(ratio).is_integer() else ratio
            seen[name] = (type(module).__name__, tuple(int(v) for v in act.shape[1:]), stride)
        return forward_hook

    training = {m: m.training for m in model.modules()}
    handles = []
    try:
        for name, module in root.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    rows = [(name, *seen[name]) for name, _ in root.named_modules() if name in seen]
    table = pd.DataFrame(rows, columns=["name", "module", "shape", "stride"])
    table["stride"] = pd.Series([row[3] for row in rows], dtype=object)  # ints and None, not NaN floats
    if spatial:
        table = table[table["stride"].notna()].reset_index(drop=True)
    return table
