"""The retrieval baseline: the nearest real training image by feature distance at the same layer.

The natural rival of any generative inverter: if the map of a held-out image is best "inverted" by looking up the
training image whose map is closest, a generative inverter has to beat that to show it draws what the map says rather
than a memory of the data. Nothing is trained: a bank of training images is passed through the classifier once and
its maps kept. Sample ``s`` of a map is its ``s``-th nearest bank image (cosine distance of the flattened maps), so
samples differ and ``num_samples`` is at most the bank's size.

Example:
    >>> ret = RetrievalInverter.from_dataset(cnn, "stages.3", wb.TinyWorld("train", size=20_000))
    >>> images = ret.invert(features, num_samples=1)             # Tensor[B, 1, 3, 32, 32], real training images
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ArgumentValueError


class RetrievalInverter(nn.Module):
    """Nearest-neighbour inversion of one classifier layer over a bank of real images.

    Args:
        classifier_name: the classifier the maps come from.
        layer: the layer.
        bank_features: ``Tensor[N, C, h, w]``, the bank images' maps at ``layer``.
        bank_images: ``Tensor[N, 3, H, W]`` in [0, 1], the bank images.

    Example:
        >>> ret = RetrievalInverter("tinyworld-cnn", "stages.3", feats, images)
        >>> ret.invert(feats[:2], num_samples=2)[:, 0].equal(images[:2])   # each map finds its own image
    """

    kind = "retrieval"
    pooling = "none"

    def __init__(self, classifier_name: str, layer: str, bank_features: torch.Tensor, bank_images: torch.Tensor):
        super().__init__()
        if bank_features.ndim != 4 or bank_images.ndim != 4 or len(bank_features) != len(bank_images):
            raise ArgumentValueError(f"a retrieval bank is maps [N, C, h, w] and images [N, 3, H, W] of one N; got "
                                     f"{tuple(bank_features.shape)} and {tuple(bank_images.shape)}")
        self.classifier_name, self.layer = classifier_name, layer
        self.feature_shape = tuple(bank_features.shape[1:])
        self.image_size = int(bank_images.shape[-1])
        unit = nn.functional.normalize(bank_features.flatten(1).float(), dim=1)
        self.register_buffer("bank_unit", unit, persistent=False)
        self.register_buffer("bank_images", bank_images.float(), persistent=False)

    @classmethod
    def from_dataset(cls, classifier: nn.Module, layer: str, dataset, *, batch_size: int = 256) -> "RetrievalInverter":
        """A bank of every image of ``dataset`` (a :class:`~workbench.TinyWorld` or ``Tensor[N, 3, H, W]``) with its
        maps from ``classifier`` at ``layer``."""
        from ..hooks import extract_features

        images = dataset.float() if isinstance(dataset, torch.Tensor) else dataset.images()
        feats = extract_features(classifier, images, layer, batch_size=batch_size)
        return cls(getattr(classifier, "name", "custom"), layer, feats.cpu(), images.cpu())

    @torch.no_grad()
    def invert(self, features: torch.Tensor, *, num_samples: int = 1, seed: int | None = None,
               progress: bool = False, batch_size: int = 256, **_: Any) -> torch.Tensor:
        """The ``num_samples`` nearest bank images of each map.

        Args:
            features: ``Tensor[B, C, h, w]`` maps at ``self.layer``.
            num_samples: ``S``, neighbours per map (nearest first), at most the bank's size.
            seed, progress: accepted for the shared call; retrieval draws nothing.

        Returns:
            ``Tensor[B, S, 3, H, W]`` in [0, 1].
        """
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ArgumentValueError(f"maps of shape {tuple(features.shape[1:])} do not fit this bank's "
                                     f"{self.feature_shape} ({self.classifier_name} at {self.layer})")
        if not 1 <= int(num_samples) <= len(self.bank_images):
            raise ArgumentValueError(f"num_samples={num_samples}: retrieval returns between 1 and the bank's "
                                     f"{len(self.bank_images)} neighbours")
        out = []
        for s in range(0, len(features), batch_size):
            q = nn.functional.normalize(features[s:s + batch_size].flatten(1).float().to(self.bank_unit.device), dim=1)
            idx = (q @ self.bank_unit.T).topk(int(num_samples), dim=1).indices  # [b, S]
            out.append(self.bank_images[idx])
        return torch.cat(out)
