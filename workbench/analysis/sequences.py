"""Sequences of maps: linear interpolation (:func:`interpolate`) and arithmetic (:func:`arithmetic`, ``A - B + C``),
each step inverted from the same noise and scored along the way (:func:`sequence_study`), and the rank trend of a
score along a sequence (:func:`trend`).

Example:
    >>> table, samples = sequence_study(cnn, inv, interpolate(fa, fb, 5), classes=[3, 0])
    >>> trend(table, "t", "p_3", by="item")
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_allocation, checked_int
from ..errors import AnalysisError
from ..inverters.sampler import Sampler, study_sampler
from . import class_probabilities

def interpolate(features_a: Tensor, features_b: Tensor, num_steps: int | None = None, *,
                n_steps: int | None = None) -> Tensor:
    """Linear interpolation of maps: ``(1 - t) A + t B`` for ``t`` in ``linspace(0, 1, num_steps)``.

    The sweep is built into one buffer (no temporaries of its size); one that cannot fit in free memory is refused
    before anything is allocated, with its size in the message.

    Args:
        features_a, features_b: ``Tensor[B, C, h, w]``.
        num_steps: ``T >= 2``, an int.
        n_steps: the old name of ``num_steps``, still accepted (with a ``DeprecationWarning``).

    Returns:
        ``Tensor[B, T, C, h, w]``.

    Raises:
        AnalysisError: maps of two shapes, or ``num_steps < 2``. ArgumentTypeError: ``num_steps`` is not an int.
        ArgumentValueError: the sweep would not fit in free memory.

    Example:
        >>> seq = interpolate(fa, fb, 5)          # seq[:, 0] == fa, seq[:, -1] == fb
    """
    if features_a.shape != features_b.shape:
        raise AnalysisError(f"cannot interpolate maps of shapes {list(features_a.shape)} and {list(features_b.shape)}")
    if n_steps is not None:
        import warnings

        if num_steps is not None:
            raise AnalysisError("pass num_steps only (n_steps is its old name)")
        warnings.warn("interpolate(n_steps=) is now interpolate(num_steps=)", DeprecationWarning, stacklevel=2)
        num_steps = n_steps
    num_steps = checked_int(num_steps, "num_steps")
    if num_steps < 2:
        raise AnalysisError(f"num_steps must be >= 2, got {num_steps}")
    shape = (features_a.shape[0], num_steps, *features_a.shape[1:])
    check_allocation(shape, features_a.dtype, features_a.device, f"interpolate(num_steps={num_steps})")
    out = torch.empty(shape, dtype=features_a.dtype, device=features_a.device)
    t = torch.linspace(0, 1, num_steps, dtype=features_a.dtype, device=features_a.device)
    view = (1, -1) + (1,) * (features_a.ndim - 1)
    return torch.lerp(features_a[:, None].expand(shape), features_b[:, None].expand(shape), t.view(view), out=out)


def arithmetic(features_a: Tensor, features_b: Tensor, features_c: Tensor) -> Tensor:
    """``A - B + C`` on maps of one shape, ``Tensor[B, C, h, w]`` each (e.g. star - circle + blue circle).

    Example:
        >>> blue_star = arithmetic(f_red_star, f_red_circle, f_blue_circle)
    """
    if not features_a.shape == features_b.shape == features_c.shape:
        raise AnalysisError(f"maps must share one shape, got {list(features_a.shape)}, {list(features_b.shape)}, "
                            f"{list(features_c.shape)}")
    return features_a - features_b + features_c


@torch.no_grad()
def sequence_study(classifier: nn.Module, inverter, sequence: Tensor, *, classes: Sequence[int] | None = None,
                   endpoints: tuple[Tensor, Tensor] | None = None, num_samples: int = 1,
                   num_inference_steps: int | None = None, seed: int = 0, progress: bool = True,
                   sampler: Sampler | None = None):
    """Invert every step of a sequence of maps and score the class probabilities along it.

    The sweep is controlled: each step is inverted from the same noise (one ``inverter.invert`` call per step with
    the same ``seed``), so what changes along a sequence is the maps', not the sampler's.

    Args:
        classifier: the classifier the inverter was trained on.
        inverter: a FeatInv.
        sequence: ``Tensor[B, T, C, h, w]`` (from :func:`interpolate`, or stacked arithmetic results).
        classes: class indices whose probabilities get a column ``p_<k>`` (default: all classes).
        endpoints: ``(classes_start, classes_end)``, each ``Tensor[B]``: per-item classes whose probabilities go in
            columns ``p_start`` and ``p_end`` (e.g. the classes of A and B along an interpolation).
        num_samples, num_inference_steps, seed, progress: passed to ``inverter.invert``.
        sampler: FeatInv's :class:`~workbench.inverters.sampler.Sampler` (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps), passed to ``inverter.invert`` and recorded in
            the table's ``attrs["sampler"]``.

    Returns:
        ``(table, samples)``: one row per (item, step, sample) with ``item``, ``step``, ``t`` (in [0, 1]),
        ``sample``, ``predicted``, ``p_<k>`` (and ``p_start``, ``p_end``), the inverted classifier's readings, and
        the independent judges' consensus ``judge_predicted`` (and ``judge_p_start``, ``judge_p_end``; tiny-world
        images only); ``samples`` is ``Tensor[B, T, S, 3, H, W]``.

    Example:
        >>> table, samples = sequence_study(cnn, inv, interpolate(fa, fb, 5), classes=[3, 0])
    """
    import pandas as pd

    if sequence.ndim != 5:
        raise AnalysisError(f"sequence is Tensor[B, T, C, h, w], got {list(sequence.shape)}")
    b, t = sequence.shape[:2]
    # one call per step with the same seed: every step of an item starts from the same noise (controlled sweep)
    out = torch.stack([inverter.invert(sequence[:, i], num_samples=num_samples, num_inference_steps=num_inference_steps,
                                       sampler=sampler, seed=seed, progress=progress)
                       for i in range(t)], 1)                                                  # [B, T, S, 3, H, W]
    s = out.shape[2]
    probs = class_probabilities(classifier, out.reshape(b * t * s, *out.shape[3:]))
    grid = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(t), torch.arange(s), indexing="ij"), -1).reshape(-1, 3)
    table = pd.DataFrame({"item": grid[:, 0].numpy(), "step": grid[:, 1].numpy(),
                          "t": (grid[:, 1].float() / max(t - 1, 1)).numpy(), "sample": grid[:, 2].numpy(),
                          "predicted": probs.argmax(1).numpy()})
    for k in (range(probs.shape[1]) if classes is None else classes):
        table[f"p_{int(k)}"] = probs[:, int(k)].numpy()
    from ..judges import judge_readings

    judged = judge_readings(out.reshape(b * t * s, *out.shape[3:]), reader=None).get("judge_probs")
    if judged is not None:
        table["judge_predicted"] = judged.argmax(1).numpy()
    if endpoints is not None:
        item = torch.as_tensor(grid[:, 0])
        for col, cls in zip(("p_start", "p_end"), endpoints):
            cls = torch.as_tensor(cls).long().reshape(-1)
            if len(cls) != b:
                raise AnalysisError(f"endpoints hold {len(cls)} classes for {b} sequences")
            table[col] = probs.gather(1, cls[item][:, None])[:, 0].numpy()
            if judged is not None:
                table[f"judge_{col}"] = judged.gather(1, cls[item][:, None])[:, 0].numpy()
    table.attrs["sampler"] = study_sampler(inverter, sampler, {"num_inference_steps": num_inference_steps})[0]
    return table, out


def trend(table, x: str, y: str, by: str | None = None):
    """Spearman correlation of ``y`` with ``x`` (over all rows, or per group of ``by``).

    Returns:
        a float, or a pandas Series indexed by group. NaN where ``y`` is constant.

    Example:
        >>> trend(table, "t", "p_3", by="item")       # p(class 3) rises along each interpolation
    """
    from scipy.stats import spearmanr

    def rho(frame) -> float:
        if frame[y].nunique() < 2 or frame[x].nunique() < 2:
            return float("nan")
        return float(spearmanr(frame[x], frame[y]).statistic)

    if by is None:
        return rho(table)
    import pandas as pd

    return pd.Series({key: rho(group) for key, group in table.groupby(by)}, name=f"spearman({x}, {y})")
