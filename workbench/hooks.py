"""Named activations: list a model's layers, capture their feature maps, edit them with hooks.

Layers are addressed by the names ``model.named_modules()`` prints (``"layer3"``, ``"stages.2"``,
``"blocks.5"``). Given a :class:`~workbench.models.Classifier`, names resolve inside
``Classifier.model``, so they match timm's names; given any other ``nn.Module`` (a torchvision
model, say) they resolve in the module itself.

Every activation handed to you is a spatial map ``Tensor[B, C, H, W]`` where the architecture has
one. The translation from each architecture's native layout lives in one place, :class:`_Adapter`:

==================================  ==========================================================
native output                        what you get
==================================  ==========================================================
``[B, C, H, W]`` (CNNs, ConvNeXt)    unchanged
ViT tokens ``[B, P + h*w, D]``       ``[B, D, h, w]`` through the patch grid; the ``P`` prefix
                                     tokens (class, registers) go to ``cache.prefix[name]``
Swin / SwinV2 ``[B, H, W, C]``       permuted to ``[B, C, H, W]``
anything else                        unchanged (e.g. pooled ``[B, D]``, attention maps)
==================================  ==========================================================

A hook is ``fn(act, *, name) -> Tensor | None`` in the TransformerLens style. A returned tensor
replaces the activation; it is converted back to the native layout before the forward pass goes on.
All hooks live inside a context manager and are removed in ``finally``. The hook factories
(:func:`~workbench.hook_factories.ablate_channels`, :func:`~workbench.hook_factories.add_direction`) live in
:mod:`workbench.hook_factories` (importable from here too), the layer table in :mod:`workbench.layers`.

Example:
    >>> clf = wb.load_classifier("resnet18", pretrained=False)
    >>> x = torch.rand(2, 3, 224, 224)
    >>> logits, cache = wb.run_with_cache(clf, x, ["layer2", "layer3"])
    >>> cache["layer3"].shape               # torch.Size([2, 256, 14, 14])
    >>> ablated = wb.run_with_hooks(clf, x, {"layer3": wb.ablate_channels([3, 7])})
"""
from __future__ import annotations

import contextlib
import difflib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from .checks import check_images, check_layer, checked_int
from .errors import BadInputError, HookError, LayerNotFoundError
from .hook_factories import ChannelAblation, DirectionAddition, ablate_channels, add_direction  # noqa: F401

Names = Union[str, Sequence[str], Callable[[str], bool]]
"""A layer name, a list of names, or a predicate ``name -> bool`` over ``named_modules()`` names."""

Hook = Callable[..., Union[Tensor, None]]
"""``fn(act: Tensor[B, C, H, W], *, name: str) -> Tensor[B, C, H, W] | None``."""


# ---------------------------------------------------------------------------------------------
# The adapter: the one place that knows how architectures lay out their activations.
# ---------------------------------------------------------------------------------------------

def _conv_only(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


def _swinv2_cr_nchw(name: str, module: nn.Module) -> bool:
    # SwinTransformerV2Cr works NHWC inside its stages but hands NCHW between them.
    parts = name.split(".")
    return (isinstance(module, nn.Conv2d) or name in ("patch_embed", "stages")
            or (len(parts) == 2 and parts[0] == "stages" and parts[1].isdigit()))


# Channels-last families: model class name -> which of its modules emit NCHW (the rest emit NHWC).
_CHANNELS_LAST_FAMILIES: dict[str, Callable[[str, nn.Module], bool]] = {
    "SwinTransformer": _conv_only,        # timm swin_*: stages, blocks, norms are [B, H, W, C]
    "SwinTransformerV2": _conv_only,      # timm swinv2_*
    "SwinTransformerV2Cr": _swinv2_cr_nchw,  # timm swinv2_cr_*
}


@dataclass(frozen=True)
class _Layout:
    """How one module's output maps to NCHW.

    ``kind`` is ``"nchw"`` (spatial, as is), ``"nhwc"`` (spatial, channels last), ``"tokens"``
    (``[B, prefix + h*w, D]``) or ``"raw"`` (not spatial, passed through).
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)

    @property
    def spatial(self) -> bool:
        return self.kind != "raw"

    def to_nchw(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Native output -> ``(act, prefix)``; ``act`` is ``Tensor[B, C, H, W]`` when spatial,
        ``prefix`` is ``Tensor[B, P, D]`` for token layouts with prefix tokens, else ``None``."""
        if self.kind == "nhwc":
            return out.permute(0, 3, 1, 2), None
        if self.kind == "tokens":
            b, _, d = out.shape
            grid = out[:, self.prefix:].transpose(1, 2).reshape(b, d, *self.grid)
            return grid, (out[:, :self.prefix] if self.prefix else None)
        return out, None

    def from_nchw(self, new: Tensor, out: Tensor) -> Tensor:
        """A replacement ``Tensor[B, C, H, W]`` -> the module's native layout (``out`` is the original)."""
        if self.kind == "nhwc":
            back = new.permute(0, 2, 3, 1)
            return back.contiguous() if out.is_contiguous() else back
        if self.kind == "tokens":
            tokens = new.flatten(2).transpose(1, 2)
            return torch.cat([out[:, :self.prefix], tokens], dim=1) if self.prefix else tokens.contiguous()
        return new


class _Adapter:
    """Decides, per module output, which :class:`_Layout` applies. Rules, in order:

    1. a 4-D output in a channels-last family (``_CHANNELS_LAST_FAMILIES``) is NHWC unless the
       family's rule says NCHW;
    2. a 4-D output of a module with ``output_fmt == "NHWC"`` (timm's ``PatchEmbed``) is NHWC;
    3. in a ViT-like model (``num_prefix_tokens`` and ``patch_embed.grid_size``), a ``[B, N, D]``
       output with ``N == prefix + h*w`` (or ``N == h*w``) is tokens; other 4-D outputs except
       convolutions are not spatial (attention maps);
    4. any other 4-D output is NCHW; everything else is raw.
    """

    def __init__(self, root: nn.Module):
        classes = [c.__name__ for c in type(root).__mro__]
        self.nchw_rule = next((_CHANNELS_LAST_FAMILIES[c] for c in classes if c in _CHANNELS_LAST_FAMILIES), None)
        patch_embed = getattr(root, "patch_embed", None)
        self.tokens = hasattr(root, "num_prefix_tokens") and hasattr(patch_embed, "grid_size")
        self.root = root

    def grid(self, input_hw: tuple[int, int] | None) -> tuple[int, int]:
        patch_embed = self.root.patch_embed
        if input_hw is not None and getattr(self.root, "dynamic_img_size", False) and hasattr(patch_embed, "dynamic_feat_size"):
            return tuple(int(v) for v in patch_embed.dynamic_feat_size(tuple(input_hw)))
        return tuple(int(v) for v in patch_embed.grid_size)

    def layout(self, name: str, module: nn.Module, out: Tensor, input_hw: tuple[int, int] | None) -> _Layout:
        if out.ndim == 4:
            if self.nchw_rule is not None:
                return _Layout("nchw" if self.nchw_rule(name, module) else "nhwc")
            if getattr(module, "output_fmt", None) == "NHWC":
                return _Layout("nhwc")
            if self.tokens and not isinstance(module, nn.Conv2d):
                return _Layout("raw")
            return _Layout("nchw")
        if out.ndim == 3 and self.tokens:
            gh, gw = self.grid(input_hw)
            prefix = int(self.root.num_prefix_tokens)
            if out.shape[1] == prefix + gh * gw:
                return _Layout("tokens", prefix, (gh, gw))
            if out.shape[1] == gh * gw:
                return _Layout("tokens", 0, (gh, gw))
        return _Layout("raw")


# ---------------------------------------------------------------------------------------------
# Name resolution and input checks
# ---------------------------------------------------------------------------------------------

def _root(model: nn.Module) -> nn.Module:
    """The module whose ``named_modules()`` names the layers: ``Classifier.model`` or the module itself."""
    from .models import Classifier
    return model.model if isinstance(model, Classifier) else model


def _unknown(name: str, candidates: Sequence[str], where: str) -> LayerNotFoundError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Closest names: {close}." if close else ""
    return LayerNotFoundError(f"{where} has no layer {name!r}.{hint} "
                              "Call wb.layer_table(model) to list every layer.")


def _resolve(root: nn.Module, names: Names) -> dict[str, tuple[nn.Module, bool]]:
    """Names -> ``{name: (module, explicit)}``. Predicates pick among ``named_modules()`` (not the root)."""
    modules = dict(root.named_modules())
    modules.pop("", None)
    if callable(names):
        picked = {n: (m, False) for n, m in modules.items() if names(n)}
        if not picked:
            raise LayerNotFoundError(f"the predicate {names!r} matched no layer of {type(root).__name__}. "
                                     "Call wb.layer_table(model) to list every layer.")
        return picked
    if isinstance(names, str):
        names = [names]
    if not hasattr(names, "__iter__"):
        check_layer(names)  # raises: an int or another object that names no layer
    picked = {}
    for name in names:
        check_layer(name, "layer")
        if name not in modules:
            raise _unknown(name, list(modules), type(root).__name__)
        picked[name] = (modules[name], True)
    return picked


def _expected_channels(model: nn.Module, root: nn.Module) -> int | None:
    from .models import Classifier
    if isinstance(model, Classifier):
        return model.input_size[0]
    if isinstance(getattr(root, "in_chans", None), int):
        return root.in_chans
    first_conv = next((m for m in root.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else None


def check_image_batch(x: Any, channels: int | None = 3) -> Tensor:
    """Raise :class:`BadInputError` unless ``x`` is a finite float ``Tensor[B, channels, H, W]``.

    Args:
        x: the candidate batch.
        channels: the channel count expected, or ``None`` to skip that check.

    Returns:
        ``x`` itself.

    Example:
        >>> check_image_batch(torch.rand(2, 3, 32, 32))       # fine
        >>> check_image_batch(torch.rand(3, 32, 32))          # BadInputError: add a batch dimension
    """
    if not isinstance(x, Tensor):
        raise BadInputError(f"expected an image batch Tensor[B, 3, H, W] in [0, 1], got {type(x).__name__}")
    if x.ndim != 4:
        hint = " It looks like one image: add a batch dimension with x[None]." if x.ndim == 3 else ""
        raise BadInputError(f"expected an image batch Tensor[B, 3, H, W], got shape {list(x.shape)}.{hint}")
    if not x.is_floating_point():
        raise BadInputError(f"expected float images in [0, 1], got dtype {x.dtype}. "
                            "Convert 8-bit images with x.float() / 255.")
    if channels is not None and x.shape[1] != channels:
        raise BadInputError(f"expected {channels} channels (RGB) in Tensor[B, {channels}, H, W], "
                            f"got shape {list(x.shape)}. Channels go in dimension 1 (NCHW).")
    if not bool(torch.isfinite(x).all()):
        raise BadInputError(f"the input holds NaN or Inf values ({int((~torch.isfinite(x)).sum())} of {x.numel()}).")
    return x


#: A flexible classifier (a CNN) takes images up to this many times its input size on a side; larger ones are
#: refused before the forward pass, which would run for long and may not fit in memory.
MAX_UPSCALE = 4


def _fixed_size(root: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` for a model that only takes one input size (a timm ViT or Swin with a strict patch embedding),
    else ``None``."""
    patch_embed = getattr(root, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size is None or not getattr(patch_embed, "strict_img_size", False) or getattr(root, "dynamic_img_size", False):
        return None
    return tuple(int(v) for v in size)


def check_input_size(model: nn.Module, x: Tensor) -> None:
    """Raise :class:`BadInputError` when images ``x [B, 3, H, W]`` do not fit ``model``: another size than a ViT or
    Swin takes, or more than :data:`MAX_UPSCALE` times a :class:`~workbench.models.Classifier`'s input size on a
    side. The message points to ``wb.preprocess`` (for files) and ``classifier_view`` (for tensors).

    Example:
        >>> check_input_size(vit, torch.rand(1, 3, 64, 64))     # BadInputError: ... takes 32x32 images
    """
    from .models import Classifier

    root = _root(model)
    hw = tuple(int(v) for v in x.shape[-2:])
    fixed = _fixed_size(root)
    size = tuple(model.input_size[-2:]) if isinstance(model, Classifier) else None
    fix = ("resize them first: wb.preprocess(classifier) for an image file or PIL image, "
           "workbench.models.classifier_view(images, classifier) for a tensor")
    name = getattr(model, "name", type(root).__name__)
    if fixed is not None and hw != fixed:
        raise BadInputError(f"the images are {hw[0]}x{hw[1]}, but {name} takes {fixed[0]}x{fixed[1]} images only; "
                            + fix)
    if size is not None and (hw[0] > MAX_UPSCALE * size[0] or hw[1] > MAX_UPSCALE * size[1]):
        raise BadInputError(f"the images are {hw[0]}x{hw[1]}, more than {MAX_UPSCALE} times the {size[0]}x{size[1]} "
                            f"input size of {name}; " + fix)


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------

class FeatureCache(Mapping):
    """A plain mapping from layer name to activation ``Tensor[B, C, H, W]`` (see the module docstring
    for non-spatial layers), filled by :func:`capture` / :func:`run_with_cache`.

    Attributes:
        prefix: ``{name: Tensor[B, P, D]}``, the prefix tokens (class, registers) of ViT-like layers.

    Example:
        >>> logits, cache = wb.run_with_cache(vit, x, "blocks.5")
        >>> cache                      # FeatureCache(blocks.5: [2, 192, 8, 8] + prefix [2, 1, 192])
        >>> cache["blocks.5"].shape, cache.prefix["blocks.5"].shape
    """

    def __init__(self) -> None:
        self._acts: dict[str, Tensor] = {}
        self.prefix: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._acts:
            raise (_unknown(name, list(self._acts), "this FeatureCache") if self._acts else
                   LayerNotFoundError(f"layer {name!r} was not captured: the cache is empty (did the forward pass run?)"))
        return self._acts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def _store(self, name: str, act: Tensor, prefix: Tensor | None) -> None:
        self._acts[name] = act
        if prefix is not None:
            self.prefix[name] = prefix
        else:
            self.prefix.pop(name, None)

    def __repr__(self) -> str:
        rows = []
        for name, act in self._acts.items():
            row = f"  {name}: {list(act.shape)}"
            if name in self.prefix:
                row += f" + prefix {list(self.prefix[name].shape)}"
            rows.append(row)
        return "FeatureCache(\n" + ",\n".join(rows) + "\n)" if rows else "FeatureCache()"


# ---------------------------------------------------------------------------------------------
# The one implementation behind capture, run_with_cache and run_with_hooks
# ---------------------------------------------------------------------------------------------

def _all_finite(act: Tensor) -> bool:
    return not act.is_floating_point() or bool(torch.isfinite(act).all())


def _check_finite_replacement(name: str, fn: Hook, new: Tensor, was_finite: bool) -> None:
    """A hook's result holds NaN or Inf where the activation (finite: ``was_finite``) had none, whether it returned
    a replacement or wrote into the activation in place and returned ``None``: refuse it, naming the hook."""
    if not was_finite or _all_finite(new):
        return
    bad = int((~torch.isfinite(new)).sum())
    label = getattr(fn, "__qualname__", None) if callable(fn) and hasattr(fn, "__code__") else repr(fn)
    raise HookError(f"the hook {label} on {name!r} returned NaN or infinite values ({bad} of {new.numel()}); every "
                    "logit downstream would be NaN. Check its arguments (a NaN alpha or mean, a division by zero).")


@contextlib.contextmanager
def _hooked(model: nn.Module, names: Names | None, hooks: Mapping[str, Hook] | None,
            cache: FeatureCache | None, detach: bool) -> Iterator[None]:
    root = _root(model)
    adapter = _Adapter(root)
    selected = _resolve(root, names) if names is not None else {}
    edits = dict(hooks or {})
    for name, fn in edits.items():
        if not callable(fn):
            raise TypeError(f"the hook for {name!r} is not callable: {fn!r}")
    targets = dict(_resolve(root, list(edits))) if edits else {}
    for name, entry in selected.items():
        targets.setdefault(name, entry)
    channels = _expected_channels(model, root)
    state: dict[str, Any] = {"input_hw": None}
    from .models import Classifier

    in_range = isinstance(model, Classifier)  # a Classifier's input is [0, 1]; a bare module gets it as is

    def check_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        check_images(x, "x", channels=channels) if in_range else check_image_batch(x, channels)
        check_input_size(model, x)
        state["input_hw"] = tuple(x.shape[-2:])

    def make_hook(name: str, explicit: bool) -> Callable:
        fn = edits.get(name)
        keep = cache is not None and name in selected

        def forward_hook(module: nn.Module, args: tuple, out: Any) -> Tensor | None:
            if not isinstance(out, Tensor):
                if explicit:
                    raise HookError(f"layer {name!r} ({type(module).__name__}) returns {type(out).__name__}, "
                                    "not a tensor, so it cannot be captured or edited; pick one of its children.")
                return None
            layout = adapter.layout(name, module, out, state["input_hw"])
            act, prefix = layout.to_nchw(out)
            replaced = None
            if fn is not None:
                was_finite = _all_finite(act)
                new = fn(act, name=name)
                if new is None or new is act:                   # an edit in place is checked all the same
                    _check_finite_replacement(name, fn, act, was_finite)
                else:
                    if not isinstance(new, Tensor):
                        raise HookError(f"the hook on {name!r} returned {type(new).__name__}; return a Tensor or None")
                    if new.shape != act.shape:
                        raise HookError(f"the hook on {name!r} returned shape {list(new.shape)}, but the layer's "
                                        f"activation is {list(act.shape)}; a replacement must keep the shape")
                    _check_finite_replacement(name, fn, new, was_finite)
                    new = new.to(dtype=act.dtype, device=act.device)
                    replaced = layout.from_nchw(new, out)
                    act = new
            if keep:
                cache._store(name, act.detach() if detach else act,
                             None if prefix is None else (prefix.detach() if detach else prefix))
            return replaced

        return forward_hook

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(check_input, with_kwargs=True))
        for name, (module, explicit) in targets.items():
            handles.append(module.register_forward_hook(make_hook(name, explicit)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture(model: nn.Module, names: Names, *, detach: bool = True) -> Iterator[FeatureCache]:
    """Capture activations of the named layers during every forward pass inside the block.

    A later forward pass overwrites what an earlier one stored; a module called several times in
    one pass (torchvision's shared ``relu``) keeps its last call.

    Args:
        model: a :class:`~workbench.models.Classifier` or any ``nn.Module`` taking ``[B, 3, H, W]``.
        names: a layer name, a list of names, or a predicate ``name -> bool``.
        detach: store detached tensors (default); ``False`` keeps the graph for gradients.

    Yields:
        FeatureCache: name -> ``Tensor[B, C, H, W]``, filled as the forward passes run.

    Raises:
        LayerNotFoundError: a name the model does not have (the message lists the closest names).
        BadInputError: a forward pass inside the block got an input that is not ``[B, 3, H, W]`` finite floats (in
            [0, 1] and of a size it takes, for a Classifier).

    Example:
        >>> with wb.capture(clf, ["layer2", "layer3"]) as cache:
        ...     clf(x)
        >>> cache["layer2"].shape       # [B, 128, 28, 28]
    """
    cache = FeatureCache()
    with _hooked(model, names, None, cache, detach):
        yield cache


def warn_if_unnormalised(model: nn.Module) -> None:
    """Warn once per model when a raw timm model (one whose ``pretrained_cfg`` names a mean and std) is run
    directly: it gets its input as is, without the normalisation that :class:`~workbench.models.Classifier` (what
    ``wb.load_classifier`` returns) applies to images in [0, 1]."""
    import warnings

    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg or model in _WARNED_UNNORMALISED:
        return
    _WARNED_UNNORMALISED.add(model)
    warnings.warn(f"{type(model).__name__} is a raw timm model: it gets the images as they are, without its input "
                  f"normalisation (mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}). For images in [0, 1] wrap "
                  "it: wb.Classifier(model, model.pretrained_cfg['mean'], model.pretrained_cfg['std'], "
                  "model.pretrained_cfg['input_size']), or load it with wb.load_classifier(name)", UserWarning,
                  stacklevel=3)


#: raw timm models already warned about (:func:`warn_if_unnormalised`), held weakly
_WARNED_UNNORMALISED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def run_with_cache(model: nn.Module, x: Tensor, names: Names, *, detach: bool = True) -> tuple[Tensor, FeatureCache]:
    """One forward pass that also returns the named layers' activations.

    Args:
        model: a :class:`~workbench.models.Classifier` or any ``nn.Module``.
        x: ``Tensor[B, 3, H, W]`` float in [0, 1] (for a Classifier; a bare module gets ``x`` as is: a raw timm
            model is then not normalised, and a warning says so once, see :func:`warn_if_unnormalised`).
        names: a layer name, a list of names, or a predicate ``name -> bool``.
        detach: store detached activations and return detached logits (default: nothing keeps the graph alive);
            ``False`` keeps both in the autograd graph, to take gradients through them.

    Returns:
        ``(logits, cache)``: the model output ``Tensor[B, classes]`` and a :class:`FeatureCache` of
        ``Tensor[B, C, H, W]``.

    Raises:
        LayerNotFoundError: unknown layer name. HookError: a named layer did not run, or a hook returned NaN.
        BadInputError: ``x`` is not a finite float ``Tensor[B, 3, H, W]``; for a Classifier, also values outside
            [0, 1] ("divide by 255") or a size it cannot take (:func:`check_input_size`; resize with
            ``wb.preprocess``). ArgumentTypeError: a layer given as an int.

    Example:
        >>> logits, cache = wb.run_with_cache(clf, torch.rand(2, 3, 32, 32), "stages.1")
    """
    warn_if_unnormalised(model)
    with capture(model, names, detach=detach) as cache:
        logits = model(x)
    if not callable(names):
        missing = [n for n in ([names] if isinstance(names, str) else names) if n not in cache]
        if missing:
            raise HookError(f"layers {missing} did not run during the forward pass, so nothing was captured")
    return (logits.detach() if detach and isinstance(logits, Tensor) else logits), cache


def run_with_hooks(model: nn.Module, x: Tensor, hooks: Mapping[str, Hook]) -> Tensor:
    """One forward pass with hooks that may replace activations.

    Each hook is ``fn(act, *, name) -> Tensor | None`` and sees ``act`` as ``Tensor[B, C, H, W]``
    (see the module docstring). A returned tensor of the same shape replaces the activation and is
    converted back to the module's native layout (ViT: prefix tokens re-attached; Swin: NHWC).
    Edit by returning a new tensor, not in place.

    Args:
        model: a :class:`~workbench.models.Classifier` or any ``nn.Module``.
        x: ``Tensor[B, 3, H, W]`` float in [0, 1].
        hooks: ``{layer name: hook}``.

    Returns:
        logits ``Tensor[B, num_classes]``.

    Raises:
        LayerNotFoundError: unknown layer name. HookError: a replacement of the wrong shape or type.

    Example:
        >>> logits = wb.run_with_hooks(clf, x, {"layer3": wb.ablate_channels(range(10))})
    """
    with _hooked(model, None, hooks, None, True):
        return model(x)


# ------------------------------------------------------------------------------------------ feature maps
def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def extract_features(classifier: nn.Module, images: torch.Tensor, layer: str, *, batch_size: int = 256) -> torch.Tensor:
    """The classifier's NCHW map at ``layer`` for each image: ``[N, 3, H, W]`` -> ``Tensor[N, C, h, w]``,
    computed in batches on the classifier's device and returned there.

    Example:
        >>> extract_features(cnn, torch.rand(2, 3, 32, 32), "stages.3").shape   # [2, 192, 4, 4]
    """
    layer = check_layer(layer)
    batch_size = checked_int(batch_size, "batch_size", minimum=1)
    dev = _device(classifier)
    outs = []
    for s in range(0, len(images), batch_size):
        _, cache = run_with_cache(classifier, images[s:s + batch_size].to(dev), [layer])
        outs.append(cache[layer])
    return torch.cat(outs)
