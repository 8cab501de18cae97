"""Exceptions with messages that name the bad value and the fix."""
from __future__ import annotations


class WorkbenchError(Exception):
    """Base class for workbench errors."""


class WeightsUnavailableError(WorkbenchError, RuntimeError):
    """Pretrained weights could not be loaded (no network, no cache, missing or corrupted file)."""


class LayerNotFoundError(WorkbenchError, KeyError):
    """A layer name that the model does not have. The message lists the closest real names."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


class BadInputError(WorkbenchError, ValueError):
    """An input that breaks the image convention: a float ``Tensor[B, 3, H, W]`` in [0, 1], all finite."""


class HookError(WorkbenchError, ValueError):
    """A hook returned something that cannot replace the activation (wrong type or shape), or an
    intervention was configured for channels or a mask size the layer does not have."""


class UnknownModelError(WorkbenchError, ValueError):
    """A model name that is neither a timm model nor a shipped workbench model."""


class ImageReadError(WorkbenchError, ValueError):
    """A file that could not be read as an image."""


class InverterMismatchError(WorkbenchError, ValueError):
    """An inverter was given features, a classifier or a base it was not trained for."""


class AnalysisError(WorkbenchError, ValueError):
    """An analysis was given arguments that do not fit together (a concept from another layer, a mask
    of the wrong size, channel indices out of range, more components than channels)."""
