"""The inverter family's one base class and its registry, after diffusers' ``ConfigMixin`` and timm's registry.

:class:`InverterBase` owns what every inverter shares, so that FeatInv (:mod:`.featinv`), the decoder baseline
(:mod:`.decoder`), the optimisation baseline (:mod:`.optimization`) and the retrieval baseline (:mod:`.retrieval`)
differ only in what they do:

* **config**: the constructor's arguments, recorded when ``__init__`` runs (the ``@register_to_config`` decorator of
  :mod:`.interface`, which records objects such as the base by name) and kept as diffusers keeps them, a frozen
  ``inv.config`` (``ConfigMixin``); :meth:`InverterBase.from_config` rebuilds an inverter from it;
* **files**: :meth:`~InverterBase.save_pretrained` writes ``config.json`` next to safetensors weights and
  :meth:`~InverterBase.from_pretrained` reads them back (any kind, from the base class: the config names it),
  with ``torch_dtype=``; ``push_to_hub`` comes from diffusers' ``PushToHubMixin``;
* **the registry**: ``@register_inverter("featinv")`` files a class under its kind, as timm's ``@register_model``
  does; loading looks the class up there, so a new kind is one decorated class;
* **device and dtype**: ``inv.device``, ``inv.dtype`` and ``nn.Module.to``;
* **the call**: :meth:`~InverterBase.invert` checks what every kind checks once (counts, seed or generator, the
  maps), builds the :class:`~workbench.inverters.sampler.Sampler` of a sampling kind, then calls the subclass's
  ``_sample``; :meth:`~InverterBase.invert_images` captures the layer first.

Example:
    >>> @register_inverter("mine")
    ... class MyInverter(InverterBase):
    ...     @register_to_config
    ...     def __init__(self, classifier_name: str, layer: str, feature_shape, image_size: int = 32): ...
    ...     def _sample(self, features, *, num_samples, generator, progress, batch_size, sampler, classifier): ...
    >>> inverter_class("mine") is MyInverter                      # True
    >>> InverterBase.from_pretrained("runs/mine")                 # a MyInverter, by the "class" its config names
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.utils import PushToHubMixin
from torch import nn

from ..errors import ArgumentValueError
from .interface import check_features, init_kwargs, load_weights, read_config, training_card, write_pretrained
from .sampler import Sampler

#: kind -> class, filled by :func:`register_inverter` when each inverter's module is imported
_REGISTRY: dict[str, type["InverterBase"]] = {}
#: the modules that hold the registered kinds, imported on first lookup
_KIND_MODULES = ("featinv", "distilled", "decoder", "optimization", "retrieval")


def register_inverter(kind: str):
    """File an :class:`InverterBase` subclass under ``kind`` (``"featinv"``), as timm's ``@register_model`` files a
    model: it becomes ``cls.kind``, and :func:`inverter_class` finds the class by kind or by class name.

    Example:
        >>> @register_inverter("decoder")
        ... class DecoderInverter(InverterBase): ...
    """
    def register(cls: type[InverterBase]) -> type[InverterBase]:
        if not (isinstance(cls, type) and issubclass(cls, InverterBase)):
            raise TypeError(f"@register_inverter({kind!r}) decorates InverterBase subclasses, not {cls!r}")
        known = _REGISTRY.get(kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ArgumentValueError(f"the inverter kind {kind!r} is taken by {known.__qualname__}; pass another "
                                     f"kind to @register_inverter for {cls.__qualname__}")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return register


def registered_inverters() -> dict[str, type["InverterBase"]]:
    """Every registered kind and its class: ``{"decoder": DecoderInverter, "featinv": FeatInv, ...}``."""
    import importlib

    for module in _KIND_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return dict(sorted(_REGISTRY.items()))


def inverter_class(name: str) -> type["InverterBase"]:
    """The registered class of a kind (``"featinv"``) or of a class name (``"FeatInv"``, as configs record it).

    Raises:
        WeightsUnavailableError: no registered kind or class has that name (the message lists them).
    """
    from ..errors import WeightsUnavailableError

    kinds = registered_inverters()
    by_name = {cls.__name__: cls for cls in kinds.values()}
    if name in kinds or name in by_name:
        return kinds.get(name) or by_name[name]
    raise WeightsUnavailableError(f"unknown inverter class {name!r}; registered kinds (classes): "
                                  f"{', '.join(f'{k} ({c.__name__})' for k, c in kinds.items())}. A config.json "
                                  "naming another class was written by other code: restore it, or re-save the "
                                  "inverter with save_pretrained")


class InverterBase(nn.Module, ConfigMixin, PushToHubMixin):
    """What every inverter is: it turns maps ``Tensor[B, C, h, w]`` of one classifier at one layer into images
    ``Tensor[B, S, 3, H, W]`` in [0, 1]. A subclass decorates its ``__init__`` with ``@register_to_config`` and
    implements ``_sample``; it may override the hooks below (``_load_objects``, ``_save_weights``,
    ``_load_weights``, ``_default_classifier``, ``_checked_classifier``).

    Class attributes:
        kind: the registry key, set by :func:`register_inverter`.
        derived_config: config keys that are not constructor arguments (values loading checks).
        uses_sampler: whether ``invert`` takes a :class:`~workbench.inverters.sampler.Sampler` (FeatInv); the others
            accept ``sampler=`` and ignore it, so that one harness drives every kind.
        invert_options: keyword arguments of ``invert`` beyond the shared ones (``num_optimizer_steps``).
        weights_name: the safetensors file of the whole module, or None (no weights, or a hook of its own).
    """

    config_name = "config.json"
    kind: ClassVar[str] = ""
    derived_config: ClassVar[tuple[str, ...]] = ()
    uses_sampler: ClassVar[bool] = False
    invert_options: ClassVar[tuple[str, ...]] = ()
    weights_name: ClassVar[str | None] = None
    pooling = "none"
    classifier_name: str
    layer: str
    feature_shape: tuple[int, int, int]
    image_size: int

    # ------------------------------------------------------------------ device and dtype
    @property
    def device(self) -> torch.device:
        """Where the inverter's first parameter lies (every parameter, after ``.to(device)``)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the inverter's first floating-point parameter (``torch.float32`` unless moved)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def invert(self, features: torch.Tensor, *, num_samples: int = 1, seed: int | None = None,
               generator: torch.Generator | None = None, progress: bool = True, batch_size: int = 64,
               sampler: Sampler | None = None, classifier: nn.Module | None = None, **options: Any) -> torch.Tensor:
        """Images whose features at ``self.layer`` match ``features``.

        Steps: 1. the shared checks, once (counts, seed or generator, the maps' shape, finiteness and scale, a
        warning for maps far from the training ones); 2. a sampling kind's :class:`Sampler`: ``sampler`` (default
        ``Sampler()``) with the loose settings among ``options`` put in; 3. the kind's ``_sample``.

        Args:
            features: ``Tensor[B, C, h, w]`` maps from ``self.classifier_name`` at ``self.layer``.
            num_samples: ``S`` images per map.
            seed: the same seed gives the same images (default 0); or pass ``generator``, not both.
            generator: a CPU ``torch.Generator`` to draw from instead of a seed (it advances).
            progress: show a progress bar.
            batch_size: maps inverted at once; bounds the memory.
            sampler: how a sampling kind (FeatInv) draws; the deterministic decoder and the optimisation baseline
                ignore it.
            classifier: the classifier of the features, for kinds that run it while sampling (FeatInv's feature
                guidance); the others ignore it.
            **options: a sampling kind's loose sampler settings (``num_inference_steps=8``...), and the kind's
                ``invert_options`` (the optimisation baseline's ``num_optimizer_steps``).

        Returns:
            ``Tensor[B, S, 3, H, W]`` in [0, 1], float32, on the CPU.

        Example:
            >>> inv.invert(features, num_samples=2, seed=0).shape                     # [B, 2, 3, 32, 32]
            >>> inv.invert(features, sampler=wb.Sampler(num_inference_steps=8), generator=g)
        """
        from ..checks import checked_int
        from .feature_distance import warn_if_off_distribution

        num_samples = checked_int(num_samples, "num_samples", minimum=1)
        batch_size = checked_int(batch_size, "batch_size", minimum=1)
        generator = _generator(seed, generator)
        settings = {k: options.pop(k) for k in Sampler.fields() if k in options}
        if not self.uses_sampler:  # an unset sampler setting (None, a study's default) asks nothing of this kind
            options |= {k: v for k, v in settings.items() if v is not None}
        sampler = Sampler.build(sampler, **settings) if self.uses_sampler else sampler
        unknown = sorted(set(options) - set(self.invert_options))
        if unknown:
            takes = ", ".join(self.invert_options + (Sampler.fields() if self.uses_sampler else ())) or "none"
            raise TypeError(f"{type(self).__name__}.invert takes no {', '.join(unknown)}; its own options are: "
                            f"{takes}. Leave {', '.join(unknown)} out"
                            + ("" if self.uses_sampler else " (it does not sample with a diffusers scheduler)"))
        check_features(self, features)
        warn_if_off_distribution(self, features)
        return self._sample(features, num_samples=num_samples, generator=generator, progress=progress,
                            batch_size=batch_size, sampler=sampler, classifier=classifier, **options)

    def _sample(self, features: torch.Tensor, *, num_samples: int, generator: torch.Generator, progress: bool,
                batch_size: int, sampler: Sampler | None, classifier: nn.Module | None, **options: Any) -> torch.Tensor:
        """The kind's inversion of checked maps ``[B, C, h, w]`` -> ``[B, S, 3, H, W]`` in [0, 1] on the CPU."""
        raise NotImplementedError(f"{type(self).__name__} must implement _sample")

    def invert_images(self, images: torch.Tensor, classifier: nn.Module | None = None, **kwargs: Any) -> torch.Tensor:
        """Capture ``self.layer`` of ``images [B, 3, H, W]`` in [0, 1] with ``classifier`` (default: the kind's,
        e.g. the shipped or timm model named ``self.classifier_name``), resized to its input size first, then
        :meth:`invert` them with ``kwargs`` (and the same classifier) -> ``[B, S, 3, H, W]``.

        Example:
            >>> inv.invert_images(images, cnn, num_samples=2, seed=0).shape         # [B, 2, 3, 32, 32]
        """
        from ..checks import check_images
        from ..hooks import extract_features
        from ..models import classifier_view

        check_images(images, "images")  # before any classifier loads
        classifier = self._default_classifier() if classifier is None else self._checked_classifier(classifier)
        with torch.no_grad():
            features = extract_features(classifier, classifier_view(images, classifier), self.layer)
        return self.invert(features, classifier=classifier, **kwargs)

    def _default_classifier(self) -> nn.Module:
        """The classifier :meth:`invert_images` captures with when none is given: the shipped or timm model named
        ``self.classifier_name``, on the inverter's device."""
        from ..models import load_classifier

        return load_classifier(self.classifier_name, device=self.device)

    def _checked_classifier(self, classifier: nn.Module) -> nn.Module:
        """A given classifier, refused when it cannot have made this inverter's maps (FeatInv checks its input
        size); the base accepts any."""
        return classifier

    # ------------------------------------------------------------------ files
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, return_unused_kwargs: bool = False,
                    **objects: Any) -> "InverterBase":
        """An inverter rebuilt from its config (``inv.config`` or a ``config.json``), with ``objects`` (the base,
        the classifier) in place of their recorded names; from the base class, the config's ``"class"`` picks
        the kind. A key the constructor does not take is refused (:func:`~.interface.init_kwargs`)."""
        if config is None or return_unused_kwargs:
            raise TypeError("InverterBase.from_config(config, **objects) takes a config mapping and returns the "
                            "inverter only (no unused kwargs)")
        target = inverter_class(config.get("class", "FeatInv")) if cls is InverterBase else cls
        return target(**init_kwargs(target, dict(config), **objects))

    def save_pretrained(self, save_directory: str | Path, *, fp16: bool = True, card: dict[str, Any] | None = None,
                        **hub_options: Any) -> None:
        """Write ``config.json`` (:attr:`config`) and the weights as safetensors (fp16 unless ``fp16=False``), plus
        ``card.json`` when a card is given, into the folder ``save_directory``. ``hub_options`` are what diffusers'
        ``push_to_hub`` passes (``safe_serialization``, ``variant``): the weights are always safetensors."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self._save_weights(path, fp16=fp16)
        write_pretrained(self, path, {}, card=card)

    def _save_weights(self, path: Path, *, fp16: bool) -> None:
        """Write the weights into the folder ``path``: the whole module as ``weights_name``, if any."""
        from ..weights import save_state

        if self.weights_name is not None:
            save_state(self, path / self.weights_name, fp16=fp16)

    def _load_weights(self, path: Path) -> None:
        """Read :meth:`_save_weights`' files from the folder ``path`` (every tensor must match)."""
        if self.weights_name is not None:
            load_weights(self, path / self.weights_name)

    @classmethod
    def _load_objects(cls, config: dict[str, Any], path: Path, *, device: str | torch.device,
                      **given: Any) -> dict[str, Any]:
        """The constructor's object arguments for :meth:`from_pretrained` (FeatInv's base, the optimisation
        baseline's classifier): the ``given`` ones, or loaded by their recorded names; the base needs none."""
        return {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, **objects: Any) -> "InverterBase":
        """Rebuild an inverter from :meth:`save_pretrained`'s folder, in eval mode on ``device``, in
        ``torch_dtype`` when given (``torch.float16``, ``torch.bfloat16``; default: float32). From the base class
        (``InverterBase.from_pretrained(folder)``) the config's ``"class"`` picks the kind; from a subclass, a
        config of another class is refused. ``objects``: the base or the classifier to build on (default: loaded
        by the names the config records). For shipped names and checks use :func:`workbench.load_inverter`.

        Example:
            >>> inv = InverterBase.from_pretrained("runs/r50", torch_dtype=torch.float16)
        """
        path = Path(pretrained_model_name_or_path)
        config = read_config(path, None if cls is InverterBase else cls)
        target = inverter_class(config.get("class", "FeatInv")) if cls is InverterBase else cls
        read_config(path, target)  # the keys that rebuilding the kind needs
        inv = target.from_config(config, **target._load_objects(config, path, device=device, **objects))
        inv._load_weights(path)
        inv.card = training_card(path)
        return inv.to(device=device, dtype=torch_dtype).eval()


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The CPU generator every kind draws from: ``generator``, or a fresh one seeded with ``seed`` (default 0)."""
    from ..checks import check_seed
    from ..errors import ArgumentValueError

    if generator is None:
        return torch.Generator("cpu").manual_seed(check_seed(0 if seed is None else seed))
    if seed is not None:
        raise ArgumentValueError(f"seed={seed} and a generator were both given; pass one of them (a generator "
                                 "seeded with torch.Generator().manual_seed(seed) draws the same images)")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ArgumentValueError(f"generator={generator!r}: pass a CPU torch.Generator (noise is drawn on the CPU, "
                                 "so that images do not depend on the device)")
    return generator
