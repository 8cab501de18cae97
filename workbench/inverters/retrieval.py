"""The retrieval baseline: the nearest real training image by feature distance at the same layer.

The natural rival of any generative inverter: if the map of a held-out image is best "inverted" by looking up the
training image whose map is closest, a generative inverter has to beat that to show it draws what the map says rather
than a memory of the data. Nothing is trained: a bank of training images is passed through the classifier once and
its maps kept. Sample ``s`` of a map is its ``s``-th nearest bank image (cosine distance of the flattened maps), so
samples differ and ``num_samples`` is at most the bank's size.

It is an :class:`~workbench.inverters.base.InverterBase` of kind ``"retrieval"``: its config is the bank's shape,
and :meth:`~workbench.inverters.base.InverterBase.save_pretrained` writes the bank to ``bank.safetensors`` (the maps,
unit-normalised and flattened, in float32 whatever ``fp16`` says, so that the ranking is unchanged; the images as
uint8), so a bank is built once and loaded with ``wb.load_inverter(folder)``.

Example:
    >>> ret = RetrievalInverter.from_dataset(cnn, "stages.3", wb.TinyWorld("train", size=20_000))
    >>> images = ret.invert(features, num_samples=1)             # Tensor[B, 1, 3, 32, 32], real training images
    >>> ret.save_pretrained("runs/retrieval-cnn")                 # config.json + bank.safetensors
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import ArgumentTypeError, ArgumentValueError
from .base import InverterBase, register_inverter
from .interface import describe, load_weights, register_to_config


@register_inverter("retrieval")
class RetrievalInverter(InverterBase):
    """Nearest-neighbour inversion of one classifier layer over a bank of real images.

    Args:
        classifier_name: the classifier the maps come from.
        layer: the layer.
        feature_shape: ``(C, h, w)`` of one map at ``layer``.
        image_size: ``H == W`` of the bank's images.
        bank_size: ``N``, the number of bank images.

    The constructor arguments are the config (:attr:`config`); the constructor gives an empty (all-zero) bank of that
    shape, which :meth:`from_bank`, :meth:`from_dataset` or loading fill. Buffers: ``bank_unit``
    ``Tensor[N, C*h*w]`` (the bank's maps, flattened and scaled to unit length) and ``bank_images``
    ``Tensor[N, 3, H, W]`` in [0, 1]. Being deterministic, it ignores ``invert``'s ``sampler``, ``seed`` and
    ``generator``.

    Example:
        >>> ret = RetrievalInverter.from_bank("tinyworld-cnn", "stages.3", feats, images)
        >>> ret.invert(feats[:2], num_samples=2)[:, 0].equal(images[:2])   # each map finds its own image
    """

    weights_name = "bank.safetensors"

    @register_to_config
    def __init__(self, classifier_name: str, layer: str, feature_shape: Sequence[int], image_size: int = 32, *,
                 bank_size: int = 1):
        super().__init__()
        if isinstance(feature_shape, torch.Tensor) or isinstance(image_size, torch.Tensor):
            raise ArgumentTypeError(
                "RetrievalInverter(classifier_name, layer, feature_shape, image_size, bank_size=N) takes the bank's "
                "shape, got tensors; build a bank from maps [N, C, h, w] and images [N, 3, H, W] with "
                "RetrievalInverter.from_bank(classifier_name, layer, maps, images)")
        if len(feature_shape) != 3 or int(bank_size) < 1 or int(image_size) < 1:
            raise ArgumentValueError(f"got feature_shape={tuple(feature_shape)}, image_size={image_size}, "
                                     f"bank_size={bank_size}; pass a map shape (C, h, w) and sizes >= 1")
        self.classifier_name, self.layer = classifier_name, layer
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.image_size, self.bank_size = int(image_size), int(bank_size)
        self.register_buffer("bank_unit", torch.zeros(self.bank_size, math.prod(self.feature_shape)))
        self.register_buffer("bank_images", torch.zeros(self.bank_size, 3, self.image_size, self.image_size))

    def __repr__(self) -> str:
        return describe(self, bank=f"{self.bank_size} images")

    @property
    def device(self) -> torch.device:
        """Where the bank lies (the inverter has buffers, no parameters)."""
        return self.bank_unit.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the bank's maps (``torch.float32`` unless moved)."""
        return self.bank_unit.dtype

    # ------------------------------------------------------------------ building a bank
    @classmethod
    def from_bank(cls, classifier_name: str, layer: str, bank_features: torch.Tensor,
                  bank_images: torch.Tensor) -> "RetrievalInverter":
        """A retrieval inverter over given maps ``bank_features: Tensor[N, C, h, w]`` (of ``classifier_name`` at
        ``layer``) and their images ``bank_images: Tensor[N, 3, H, W]`` in [0, 1], ``H == W``."""
        if (bank_features.ndim != 4 or bank_images.ndim != 4 or len(bank_features) != len(bank_images)
                or len(bank_features) == 0 or bank_images.shape[1] != 3
                or bank_images.shape[2] != bank_images.shape[3]):
            raise ArgumentValueError(f"a retrieval bank is maps [N, C, h, w] and square images [N, 3, H, H] of one "
                                     f"N >= 1; got {tuple(bank_features.shape)} and {tuple(bank_images.shape)}. Pass "
                                     "one map per image, captured at the inverted layer")
        inv = cls(classifier_name, layer, tuple(bank_features.shape[1:]), int(bank_images.shape[-1]),
                  bank_size=len(bank_features))
        inv.bank_unit = nn.functional.normalize(bank_features.flatten(1).float(), dim=1)
        inv.bank_images = bank_images.float()
        return inv

    @classmethod
    def from_dataset(cls, classifier: nn.Module, layer: str, dataset, *, batch_size: int = 256) -> "RetrievalInverter":
        """A bank of every image of ``dataset`` (a :class:`~workbench.TinyWorld` or ``Tensor[N, 3, H, W]``) with its
        maps from ``classifier`` at ``layer``; the bank lies on the CPU."""
        from ..hooks import extract_features

        images = dataset.float() if isinstance(dataset, torch.Tensor) else dataset.images()
        feats = extract_features(classifier, images, layer, batch_size=batch_size)
        return cls.from_bank(getattr(classifier, "name", "custom"), layer, feats.cpu(), images.cpu())

    # ------------------------------------------------------------------ the lookup
    @torch.no_grad()
    def _sample(self, features: torch.Tensor, *, num_samples: int, generator: torch.Generator, progress: bool,
                batch_size: int, sampler, classifier: nn.Module | None) -> torch.Tensor:
        """The ``num_samples`` nearest bank images (nearest first) of each checked map ``[B, C, h, w]``, in chunks
        of ``batch_size`` maps -> ``Tensor[B, S, 3, H, W]`` in [0, 1], float32 on the CPU. ``generator``,
        ``sampler`` and ``classifier`` are unused (accepted so one harness drives every kind)."""
        from tqdm.auto import tqdm

        if num_samples > self.bank_size:
            raise ArgumentValueError(f"num_samples={num_samples}: retrieval returns between 1 and the bank's "
                                     f"{self.bank_size} neighbours; ask for fewer, or build a larger bank")
        out = []
        for s in tqdm(range(0, len(features), batch_size), desc="retrieval", disable=not progress):
            q = nn.functional.normalize(features[s:s + batch_size].flatten(1).float().to(self.device), dim=1)
            idx = (q.to(self.dtype) @ self.bank_unit.T).topk(num_samples, dim=1).indices  # [b, S]
            out.append(self.bank_images[idx].float().cpu())
        return torch.cat(out) if out else torch.empty(0, num_samples, 3, self.image_size, self.image_size)

    # ------------------------------------------------------------------ files
    def _save_weights(self, path: Path, *, fp16: bool) -> None:
        """Write ``bank.safetensors`` into the folder ``path``: ``bank_unit`` ``[N, C*h*w]`` in float32 (``fp16``
        is ignored: half precision would reorder near neighbours) and ``bank_images`` ``[N, 3, H, W]`` as uint8
        (``round(255 * x)``: a loaded bank's images lie within 1/510 of the given ones)."""
        from ..weights import save_state

        images = (self.bank_images.float() * 255).round().clamp(0, 255).to(torch.uint8)
        save_state({"bank_unit": self.bank_unit.float(), "bank_images": images}, path / self.weights_name, fp16=False)

    def _load_weights(self, path: Path) -> None:
        """Read :meth:`_save_weights`' file from the folder ``path`` (every tensor must match the config)."""
        from ..weights import load_state

        state = load_state(path / self.weights_name)
        if "bank_images" in state and state["bank_images"].dtype == torch.uint8:
            state["bank_images"] = state["bank_images"].float() / 255
        load_weights(self, path / self.weights_name, state=state)
