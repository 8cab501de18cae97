"""What every inverter is, written down once: the :class:`Inverter` protocol and the helpers of the family's base
class (:class:`~workbench.inverters.base.InverterBase`): the feature check, the feature statistics, the config and
its files.

An inverter turns maps ``Tensor[B, C, h, w]`` that one classifier gives at one layer into images
``Tensor[B, S, 3, H, W]``. FeatInv (:mod:`.featinv`), the decoder baseline (:mod:`.decoder`) and the
optimisation baseline (:mod:`.optimization`) each implement it in their own module, on the one base class.

As in diffusers, the constructor's arguments are the config: :func:`register_to_config` records them when
``__init__`` runs (objects such as the base by name) and hands :func:`inverter_config`'s JSON to diffusers'
``ConfigMixin``, :func:`write_pretrained` writes it as ``config.json`` next to the safetensors weights, and
:func:`init_kwargs` hands it back to the constructor.

Example:
    >>> inv: Inverter = wb.load_inverter("tinyworld-cnn/stages.3-decoder")
    >>> inv.invert(features, num_samples=1, seed=0).shape       # [B, 1, 3, 32, 32]
"""
from __future__ import annotations

import functools
import inspect
import numbers
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import BadInputError, InverterMismatchError, WeightsUnavailableError
from ..weights import read_card, write_card


@runtime_checkable
class Inverter(Protocol):
    """The call and the attributes every inverter has.

    Attributes:
        classifier_name: the classifier the features come from (``"tinyworld-cnn"``, ``"resnet50"``...).
        layer: the inverted layer, as ``model.named_modules()`` names it (``"stages.3"``).
        feature_shape: ``(C, h, w)`` of the maps at that layer.
        image_size: ``H == W`` of the images it returns.
    """

    classifier_name: str
    layer: str
    feature_shape: tuple[int, int, int]
    image_size: int

    def invert(self, features: torch.Tensor, *, num_samples: int = 1, seed: int | None = None,
               generator: torch.Generator | None = None, progress: bool = True, batch_size: int = 64,
               sampler=None, classifier: nn.Module | None = None, **options) -> torch.Tensor:
        """Maps ``Tensor[B, C, h, w]`` -> images ``Tensor[B, S, 3, H, W]`` in [0, 1] on the CPU
        (``S = num_samples``); the same ``seed`` (default 0) or an equally seeded ``generator`` gives the same
        images; ``sampler`` (a :class:`~workbench.inverters.sampler.Sampler`) sets how a sampling kind draws."""
        ...

    def invert_images(self, images: torch.Tensor, classifier: nn.Module | None = None, **kwargs) -> torch.Tensor:
        """Capture ``layer`` of ``images [B, 3, H, W]`` with ``classifier``, then :meth:`invert` them."""
        ...


# ---------------------------------------------------------------------- features
#: Maps further than this many standard deviations of the inverter's training maps (or, for an inverter without
#: feature statistics, larger than this in absolute value) are refused: float32 arithmetic inside the networks
#: (squares in normalisation layers and losses) overflows from about 1e19 and turns every image into NaN.
MAX_FEATURE_SCALE = 1e12


def _feature_statistics(inverter: Inverter) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(feature_mean, feature_std)`` ``[C]`` each, from the inverter or one of its submodules; None without them."""
    modules = inverter.modules() if isinstance(inverter, nn.Module) else [inverter]
    for module in modules:
        mean, std = getattr(module, "feature_mean", None), getattr(module, "feature_std", None)
        if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
            return mean, std
    return None


def _check_scale(inverter: Inverter, features: torch.Tensor) -> None:
    """Refuse maps scaled so far out (``features * 1e30``) that inverting them would give NaN images."""
    if features.numel() == 0:
        return
    stats = _feature_statistics(inverter)
    f = features.detach().float()
    if stats is None:
        scale, unit = float(f.abs().max()), "in absolute value"
    else:
        mean, std = (t.detach().float().to(f.device).view(1, -1, 1, 1) for t in stats)
        scale, unit = float(((f - mean) / std).abs().max()), "standard deviations from the maps it was trained on"
    if not scale <= MAX_FEATURE_SCALE:
        raise BadInputError(f"these maps reach {scale:.3g} {unit} (largest value {float(f.abs().max()):.3g}); maps that "
                            f"far out (beyond {MAX_FEATURE_SCALE:.0e}) overflow float32 inside the "
                            f"{type(inverter).__name__} and would give NaN images. Were they scaled by mistake? Capture "
                            f"them with wb.run_with_cache(classifier, images, {inverter.layer!r}).")


def check_features(inverter: Inverter, features: torch.Tensor) -> None:
    """Refuse maps the inverter was not built for (:class:`~workbench.errors.InverterMismatchError`), and
    non-finite maps or maps so large that inverting them would give NaN images (:data:`MAX_FEATURE_SCALE`;
    :class:`~workbench.errors.BadInputError`, a ``ValueError``)."""
    if not isinstance(features, torch.Tensor):
        raise BadInputError(f"features are a Tensor[B, C, h, w] of maps, got {type(features).__name__}")
    if features.ndim != 4 or tuple(features.shape[1:]) != tuple(inverter.feature_shape):
        raise InverterMismatchError(
            f"this {type(inverter).__name__} inverts {inverter.classifier_name!r} at {inverter.layer!r}, whose maps "
            f"have shape {tuple(inverter.feature_shape)}, but got features of shape {tuple(features.shape)}. Capture "
            f"them with wb.run_with_cache(classifier, images, {inverter.layer!r}) from {inverter.classifier_name!r}, "
            f"or load the inverter of your classifier and layer (wb.list_inverters()).")
    if not torch.isfinite(features).all():
        raise BadInputError("features contain NaN or Inf; inverting them would give NaN images")
    _check_scale(inverter, features)


def register_feature_statistics(module: nn.Module, channels: int) -> None:
    """Give ``module`` the buffers ``feature_mean`` (zeros) and ``feature_std`` (ones), ``[channels]`` each, that
    normalise its input maps; they are saved with its weights."""
    module.register_buffer("feature_mean", torch.zeros(channels))
    module.register_buffer("feature_std", torch.ones(channels))


@torch.no_grad()
def set_feature_statistics(module: nn.Module, features: torch.Tensor) -> None:
    """Fix ``module``'s normalisation to the per-channel mean and standard deviation of maps ``[N, C, h, w]``,
    once before training (the deviation is kept above 1e-4, so a dead channel does not divide by 0)."""
    features = features.float()
    module.feature_mean.copy_(features.mean((0, 2, 3)))
    module.feature_std.copy_(features.std((0, 2, 3)).clamp_min(1e-4))


def normalize_features(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``(features - mean) / std`` per channel with ``module``'s statistics: ``[B, C, h, w]`` -> the same."""
    return (features - module.feature_mean.view(1, -1, 1, 1)) / module.feature_std.view(1, -1, 1, 1)


def describe(inverter: Inverter, **details: Any) -> str:
    """A short repr: the class with what it inverts, then one line per detail (base, sampler...)."""
    head = (f"{type(inverter).__name__}(classifier={inverter.classifier_name!r}, layer={inverter.layer!r}, "
            f"feature_shape={tuple(inverter.feature_shape)}, image_size={inverter.image_size})")
    return "\n".join([head] + [f"  {key}: {value}" for key, value in details.items()])


# ---------------------------------------------------------------------- config
def register_to_config(init):
    """Decorate an inverter's ``__init__`` so that it records its arguments, defaults included, in
    ``self.init_arguments`` (an ordered dict, parameter order), and once ``__init__`` has run hands
    :func:`inverter_config` to diffusers' ``ConfigMixin.register_to_config``: ``inv.config`` is then that frozen
    JSON dict. diffusers' own decorator is not used: it drops an ignored positional argument (the base) and shifts
    the others onto the wrong names."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        from diffusers.configuration_utils import ConfigMixin

        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.init_arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        ConfigMixin.register_to_config(self, **inverter_config(self))

    return recording_init


def _to_json(name: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, list, torch.Size)):
        return [_to_json(name, v) for v in value]
    raise TypeError(f"constructor argument {name}={type(value).__name__} cannot be written as JSON; record it "
                    f"under a name (interface._RECORDED_AS) or leave it out of the constructor")


def inverter_config(inverter: Inverter) -> dict[str, Any]:
    """The JSON config of an inverter: ``{"class": ..., <constructor arguments>..., <derived values>...}``.

    The constructor arguments come from ``inverter.init_arguments`` (:func:`register_to_config`); the objects
    among them are recorded by name under their key in :data:`_RECORDED_AS` (the base as ``"base": base.name``,
    the classifier as ``"classifier_name"``); then each key of ``type(inverter).derived_config`` not yet written,
    read from the inverter's attribute of that name (``image_size``, ``latent_shape``), which loading checks.
    """
    out: dict[str, Any] = {"class": type(inverter).__name__}
    for name, value in inverter.init_arguments.items():
        if name in _RECORDED_AS:
            out[_RECORDED_AS[name]] = getattr(value, "name", type(value).__name__)
        else:
            out[name] = _to_json(name, value)
    for key in getattr(type(inverter), "derived_config", ()):
        if key not in out:
            out[key] = _to_json(key, getattr(inverter, key))
    return out


def init_kwargs(cls: type, config: Mapping[str, Any], **objects: Any) -> dict[str, Any]:
    """The keyword arguments that rebuild ``cls`` from its ``config``: the keys that are parameters of
    ``cls.__init__`` (missing ones take their defaults), with ``objects`` (the base, the classifier) in place of
    their recorded names. ``cls.derived_config`` names the other keys its config holds (values loading checks,
    such as the image size); any key beyond those and ``class`` is refused, so a misspelt or renamed key cannot
    fall back to a default unnoticed."""
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    derived = getattr(cls, "derived_config", ())
    unknown = sorted(set(config) - params - set(derived) - {"class"})
    if unknown:
        raise InverterMismatchError(f"the config of this {cls.__name__} holds keys its constructor does not take: "
                                    f"{unknown}; expected some of {sorted(params | set(derived))}. Was it written by "
                                    "another version? Re-save it with save_pretrained, or restore it from git.")
    return {k: v for k, v in config.items() if k in params} | objects


# ---------------------------------------------------------------------- files
def write_pretrained(inverter: Inverter, path: str | Path, weights: Mapping[str, nn.Module], *, fp16: bool = True,
                    card: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` (``inverter.config``), each of ``weights`` (file name -> module) as safetensors,
    and ``card.json`` when a card is given, into the folder ``path``."""
    from ..weights import save_state

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, module in weights.items():
        save_state(module, path / name, fp16=fp16)
    write_card("config", inverter.config, path)
    if card is not None:
        write_card("card", card, path)


def read_config(path: str | Path, cls: type | None = None) -> dict[str, Any]:
    """``path/config.json`` (a clear error when it is missing or not JSON), refused unless it holds a ``cls``
    when one is given (a config without ``"class"`` is a FeatInv's)."""
    file = Path(path) / "config.json"
    cfg = read_card("config", Path(path))
    if not isinstance(cfg, dict):
        raise WeightsUnavailableError(f"{file} holds a JSON {type(cfg).__name__}, not a config object; {_RESTORE}")
    if cls is not None and cfg.get("class", "FeatInv") != cls.__name__:
        raise InverterMismatchError(f"{file} holds a {cfg.get('class')!r}, not a {cls.__name__}; load it with "
                                    f"wb.load_inverter({str(path)!r})")
    if cls is not None:
        missing = [key for key in required_config(cls) if key not in cfg]
        if missing:
            raise WeightsUnavailableError(f"{file} is incomplete: it lacks {missing}, which a {cls.__name__} needs; "
                                          f"{_RESTORE}")
    return cfg


#: How to restore a broken inverter folder, for the messages that name a broken file.
_RESTORE = ("restore the folder with `git checkout data/` (a shipped inverter), re-save it with save_pretrained, or "
            "retrain it with `workbench train-inverter` / `make weights`")

#: Constructor arguments that configs record under another key (the object's name).
_RECORDED_AS = {"base": "base", "classifier": "classifier_name"}


def required_config(cls: type) -> list[str]:
    """The config keys that rebuilding ``cls`` needs: its constructor arguments without a default (objects under
    the key they are recorded as) and the derived keys loading checks (``cls.derived_config``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    keys = [_RECORDED_AS.get(p.name, p.name) for p in params
            if p.name != "self" and p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return list(dict.fromkeys(keys + list(getattr(cls, "derived_config", ()))))


def load_weights(module: nn.Module, file: Path, *, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Load a safetensors file into ``module``; every tensor must match (no missing or unexpected key, no other
    shape: a :class:`~workbench.errors.WeightsUnavailableError` names the file, its config and how to restore them).
    ``state``: the tensors already read (from ``file`` and its companions), instead of reading ``file``."""
    from ..weights import load_state

    try:
        missing, unexpected = module.load_state_dict(load_state(file) if state is None else state, strict=False)
    except RuntimeError as err:  # a tensor of another shape: config.json and the weights disagree
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                     str(err).splitlines()[0])
        raise WeightsUnavailableError(f"{file} does not match {file.parent / 'config.json'} ({first}); one of the "
                                      f"two is broken or from another inverter: {_RESTORE}") from None
    if missing or unexpected:
        raise InverterMismatchError(f"{file} does not match its config.json "
                                    f"(missing {missing[:3]}, unexpected {unexpected[:3]}); {_RESTORE}")
    check_config_against_card(file.parent)


#: Config keys that weights alone cannot tell apart (a FeatInv's weights fit any map size), checked against the
#: config recorded in card.json when the weights were trained.
RECORDED_KEYS = ("classifier_name", "layer", "feature_shape", "pooling")


def check_config_against_card(path: Path) -> None:
    """Refuse a ``config.json`` edited after training: where ``card.json`` recorded the config the weights were
    trained with, each of :data:`RECORDED_KEYS` must agree (an edited ``feature_shape`` would load, and the later
    error would blame the caller's maps)."""
    if not (path / "card.json").is_file() or not (path / "config.json").is_file():
        return
    config, recorded = read_card("config", path), training_card(path).get("config")
    if not isinstance(config, dict) or not isinstance(recorded, dict):
        return
    for key in RECORDED_KEYS:
        if key in config and key in recorded and config[key] != recorded[key]:
            raise WeightsUnavailableError(f"{path / 'config.json'} says {key}={config[key]!r}, but the weights in "
                                          f"{path} were trained with {key}={recorded[key]!r} ({path / 'card.json'}); "
                                          f"{_RESTORE}")


def training_card(path: str | Path) -> dict[str, Any]:
    """``path/card.json`` (the training record and metrics), or ``{}`` when there is none."""
    return read_card("card", Path(path)) if (Path(path) / "card.json").is_file() else {}
