"""Colour and texture augmentation for the judges (``workbench train-classifier --augment``).

A judge must read an image's shape and layout, not its tint: an inversion whose shapes are right but whose colours
or textures drift should still be read as its class. So each training batch is recoloured and retextured with
kornia's augmentations, never moved or reshaped (position, size and rotation are what the judges check):

* ``ColorJiggle``: hue rotated anywhere on the circle, saturation, brightness and contrast jittered;
* ``RandomChannelShuffle`` and ``RandomGrayscale``: colours that no real image has;
* ``RandomGaussianNoise`` and ``RandomGaussianBlur``: grain and softness, the textures a sampler may leave.

Example:
    >>> aug = colour_texture_augmentation()
    >>> x_aug = aug(x)            # Tensor[B, 3, 32, 32] in [0, 1] -> same shape, in [0, 1]
"""
from __future__ import annotations

import torch
from torch import nn


def colour_texture_augmentation() -> nn.Module:
    """The judges' augmentation: ``Tensor[B, 3, H, W]`` in [0, 1] -> the same, recoloured and retextured.

    Its randomness is torch's global RNG, which the training loop seeds (kornia draws its parameters from it).
    """
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.ColorJiggle(brightness=0.25, contrast=0.3, saturation=0.6, hue=0.5, p=0.9),
        K.RandomChannelShuffle(p=0.3),
        K.RandomGrayscale(p=0.15),
        K.RandomGaussianNoise(mean=0.0, std=0.04, p=0.3),
        K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=0.2),
    )


def augment(aug: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Apply ``aug`` to float images in [0, 1] without tracking gradients, clamped back into [0, 1]."""
    with torch.no_grad():
        return aug(images).clamp(0, 1)
