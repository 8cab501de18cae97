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
    """An input that breaks the image convention: a float ``Tensor[B, 3, H, W]`` in [0, 1], all finite, at the
    classifier's input size."""


class ArgumentTypeError(WorkbenchError, TypeError):
    """An argument of the wrong kind, refused by :mod:`workbench.checks`: a float or a string where an int is
    needed (``num_samples=1.5``, ``seed="7"``), an int where a layer name is needed."""


class ArgumentValueError(WorkbenchError, ValueError):
    """An argument of the right kind out of its range, refused by :mod:`workbench.checks`: a count below 1, a seed
    outside ``[0, 2**64)``, a NaN, infinite or negative scale, a device this machine lacks, a size that cannot fit
    in memory."""


class HookError(WorkbenchError, ValueError):
    """A hook returned something that cannot replace the activation (wrong type or shape), or a named
    layer returns no tensor or did not run."""


class InterventionError(WorkbenchError, ValueError):
    """An edit of a feature map that does not fit it: channel indices that are not ints or are out of
    range, a bad ablation mode or means vector, a direction or mask of the wrong size. Raised by the
    checks in :mod:`workbench.interventions`, whether the edit runs as a hook or on a captured map."""


class UnknownModelError(WorkbenchError, ValueError):
    """A model name that is neither a timm model nor a shipped workbench model."""


class ImageReadError(WorkbenchError, ValueError):
    """A file that could not be read as an image."""


class InverterMismatchError(WorkbenchError, ValueError):
    """An inverter was given features, a classifier or a base it was not trained for."""


class AnalysisError(WorkbenchError, ValueError):
    """An analysis was given arguments that do not fit together (a concept from another layer or
    classifier, more components than channels, tables and images of different lengths). Channels, masks
    and directions that do not fit a map raise :class:`InterventionError` instead."""


class NonFiniteResultError(WorkbenchError, FloatingPointError):
    """A computation returned NaN or infinite values although its inputs were finite: a scale so large that it
    overflows (``guidance_scale=1e30``, ``alpha=1e38``), or a hook that wrote NaN in place. Raised by
    :func:`workbench.checks.check_result`; the message names the input that caused it and the fix."""


class ConcurrentUseError(WorkbenchError, RuntimeError):
    """Two runs want the same thing at once: a second ``train-inverter`` on an ``--out`` folder that another
    running process holds (the message names its pid)."""


class OffDistributionWarning(UserWarning):
    """Maps handed to an inverter lie far from those it was trained on (:mod:`workbench.inverters.feature_distance`):
    most likely another classifier's or layer's maps, or another preprocessing."""
