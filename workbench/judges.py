"""Judges that no method touches: independent classifiers and the factor reader, grading inversions.

An inverter that follows a classifier's gradients (FeatInv with feature guidance, the optimisation baseline)
cannot be graded by that classifier: part of its match may be carried by changes that only that model reads. The
workbench therefore grades every inversion by models that took no part in making it:

* the **judges** (:data:`~workbench.zoo.JUDGE_CLASSIFIERS`): classifiers of other families and widths, trained
  from other seeds with colour and texture augmentation. Per inversion: does the judge give it the class it gives
  the original (``agree``), and how close are the judge's spatial maps of the two (``cosine``)?
* the **factor reader** (:mod:`workbench.factor_reader`): per inversion, how far each factor it reads lies from
  the original's true factor.
* the **kernel inception distance** (KID, torchmetrics' polynomial-kernel MMD) of the reconstructions against a
  separate set of real images (:func:`real_reference_set`), in a judge's pooled feature space.

Example:
    >>> judges = load_judges()                                    # {"tinyworld-judge-resnet": Classifier, ...}
    >>> cols = judge_columns(judges, originals, reconstructions)  # {"judge_agree[tinyworld-judge-resnet]": Tensor[N], ...}
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor, nn

from .zoo import JUDGE_CLASSIFIERS

if TYPE_CHECKING:
    import pandas as pd

#: The judges :func:`~workbench.evaluate` uses by default: every shipped one.
DEFAULT_JUDGES: tuple[str, ...] = tuple(JUDGE_CLASSIFIERS)

#: The judge whose pooled features the KID is measured in (a ResNet: no inverted model's family).
KID_JUDGE = "tinyworld-judge-resnet"

#: The separate real set of the KID: the test split drawn with its own seed, never one of the evaluated images.
REAL_SET_SEED = 1
REAL_SET_SIZE = 2000


def load_judges(names: Sequence[str] | None = None, *, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """Load judges by name (default: :data:`DEFAULT_JUDGES`), in eval mode.

    Raises:
        UnknownModelError: a name that is not a judge.
    """
    from .errors import UnknownModelError
    from .models import load_classifier

    names = DEFAULT_JUDGES if names is None else tuple(names)
    for n in names:
        if n not in JUDGE_CLASSIFIERS:
            raise UnknownModelError(f"{n!r} is not a judge; the judges are {sorted(JUDGE_CLASSIFIERS)}")
    return {n: load_classifier(n, device=device) for n in names}


def judge_layer(judge: nn.Module) -> str:
    """The spatial map a judge compares an inversion with its original at: a judge's ``judge_layer``
    (``zoo.JUDGE_CLASSIFIERS``), or the last inverted layer of a shipped classifier used as a judge (e.g.
    ``tinyworld-vit`` grading the CNN's inversions, as the old cross-model reference did)."""
    from .zoo import TINY_CLASSIFIERS

    spec = TINY_CLASSIFIERS[judge.name]
    return spec.get("judge_layer", spec["layers"]["last"])


@torch.no_grad()
def _judge_pass(judge: nn.Module, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """``(predictions [N], flattened spatial maps [N, D])`` of a judge over ``images`` ``[N, 3, H, W]``."""
    from .hooks import run_with_cache

    layer, dev = judge_layer(judge), next(judge.parameters()).device
    preds, maps = [], []
    for s in range(0, len(images), batch_size):
        logits, cache = run_with_cache(judge, images[s:s + batch_size].to(dev).float(), [layer])
        preds.append(logits.argmax(1).cpu())
        maps.append(cache[layer].flatten(1).float().cpu())
    return torch.cat(preds), torch.cat(maps)


def judge_columns(judges: Mapping[str, nn.Module], originals: Tensor, reconstructions: Tensor) -> dict[str, Tensor]:
    """Per-row judge metrics of reconstructions against their originals.

    Args:
        judges: name -> judge (:func:`load_judges`).
        originals: ``Tensor[N, 3, H, W]`` in [0, 1], row ``i`` the original of reconstruction ``i``.
        reconstructions: ``Tensor[N, 3, H, W]`` in [0, 1]; non-finite rows give NaN.

    Returns:
        ``judge_agree[<name>]`` (1.0 when the judge gives the reconstruction the class it gives the original) and
        ``judge_cosine[<name>]`` (cosine of the judge's flattened spatial maps), ``Tensor[N]`` float each.
    """
    finite = torch.isfinite(reconstructions.flatten(1)).all(1)
    safe = torch.where(finite[:, None, None, None], reconstructions, originals)
    out: dict[str, Tensor] = {}
    for name, judge in judges.items():
        p_orig, m_orig = _judge_pass(judge, originals)
        p_rec, m_rec = _judge_pass(judge, safe)
        nan = torch.full((len(originals),), float("nan"))
        out[f"judge_agree[{name}]"] = torch.where(finite, (p_orig == p_rec).float(), nan)
        out[f"judge_cosine[{name}]"] = torch.where(finite, torch.cosine_similarity(m_orig, m_rec, dim=1), nan)
    return out


def factor_columns(reader: nn.Module, reconstructions: Tensor, factors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per-row factor recovery: ``factor[<name>]`` for every factor the reader reads, ``Tensor[N]`` each
    (accuracy 1/0 for class-like factors, error in spread units otherwise; NaN for non-finite reconstructions).

    Args:
        reader: the factor reader (:func:`~workbench.factor_reader.load_factor_reader`).
        reconstructions: ``Tensor[N, 3, 32, 32]`` in [0, 1].
        factors: the true factors of each row's original, ``Tensor[N]`` per name.
    """
    from .factor_reader import factor_errors

    finite = torch.isfinite(reconstructions.flatten(1)).all(1)
    dev = next(reader.parameters()).device
    safe = torch.where(finite[:, None, None, None], reconstructions, torch.zeros_like(reconstructions))
    errors = factor_errors(reader.read(safe.to(dev)), factors)
    nan = torch.tensor(float("nan"))
    return {f"factor[{k}]": torch.where(finite, v, nan) for k, v in errors.items()}


def real_reference_set(size: int = REAL_SET_SIZE) -> Tensor:
    """The KID's real images: ``TinyWorld("test", size, seed=REAL_SET_SEED)``, ``Tensor[size, 3, 32, 32]``,
    disjoint from the evaluated images (which come from the test split's seed 0)."""
    from .tinyworld import TinyWorld

    return TinyWorld("test", size=size, seed=REAL_SET_SEED).images()


@torch.no_grad()
def pooled_judge_features(judge: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The judge's pooled pre-logit features ``Tensor[N, D]`` of ``images`` ``[N, 3, H, W]``."""
    dev = next(judge.parameters()).device
    out = []
    for s in range(0, len(images), batch_size):
        x = judge.normalize(images[s:s + batch_size].to(dev).float())
        out.append(judge.model.forward_head(judge.model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out)


def kid(real_features: Tensor, fake_features: Tensor, *, num_subsets: int = 200, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, float]:
    """Kernel inception distance (torchmetrics' polynomial-kernel MMD, unbiased) over random subsets, with the
    spread of the subsets as its 95 % interval.

    As torchmetrics' ``KernelInceptionDistance`` does, each of ``num_subsets`` rounds draws as many real as fake
    features (half the fake ones, at most ``subset_size``), without replacement (resampling with replacement would bias the unbiased MMD
    upward through repeated pairs); the estimate is the mean over rounds, the interval the 2.5 and 97.5 percentiles.

    Args:
        real_features: ``Tensor[R, D]``; fake_features: ``Tensor[F, D]`` (``F >= 4``).

    Returns:
        ``(kid, low, high)``; NaN for fewer than four fake rows.
    """
    from torchmetrics.image.kid import poly_mmd

    if len(fake_features) < 4:
        return float("nan"), float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    m = min(subset_size, len(real_features), len(fake_features) // 2)  # torchmetrics' MMD wants equal sizes
    vals = []
    for _ in range(num_subsets):
        f = fake_features[torch.randperm(len(fake_features), generator=g)[:m]].double()
        r = real_features[torch.randperm(len(real_features), generator=g)[:m]].double()
        vals.append(float(poly_mmd(r, f)))
    v = torch.tensor(vals)
    return float(v.mean()), float(v.quantile(0.025)), float(v.quantile(0.975))


def factor_kept(value: float, ceiling: float, chance: float) -> float:
    """How much of a factor survives inversion, from 0 (no better than another real image) to 1 (as well as the
    original itself): ``(value - chance) / (ceiling - chance)``, for accuracies and errors alike. NaN when the reader
    cannot tell the ceiling from chance."""
    gap = ceiling - chance
    return float("nan") if abs(gap) < 1e-9 else (value - chance) / gap


def layer_factor_table(summaries: Mapping[str, Mapping[str, float]],
                       bounds: Mapping[str, Mapping[str, Mapping[str, float]]]) -> "pd.DataFrame":
    """The layer table: for each inverter, how much of each factor survives inversion (:func:`factor_kept`).

    Args:
        summaries: inverter name -> its evaluation summary (``factor[<name>]`` entries).
        bounds: inverter name -> ``{"ceiling": {...}, "chance": {...}}`` (``table.attrs["factor_bounds"]``).

    Returns:
        ``pandas.DataFrame``, one row per inverter, one column per factor, values about 0 to 1.

    Example:
        >>> layer_factor_table({"cnn stages.3": t.summary()}, {"cnn stages.3": t.attrs["factor_bounds"]})
    """
    import pandas as pd

    from .factor_reader import READ_FACTORS

    rows = {}
    for name, s in summaries.items():
        b = bounds[name]
        rows[name] = {f: factor_kept(s[f"factor[{f}]"], b["ceiling"][f], b["chance"][f]) for f in READ_FACTORS}
    return pd.DataFrame.from_dict(rows, orient="index")


_CACHE: dict[str, tuple[dict[str, nn.Module], nn.Module]] = {}


def shipped_graders(device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], nn.Module]:
    """``(judges, reader)``: every shipped judge and the factor reader on ``device``, loaded once per device (frozen
    models in eval mode; studies call this for each table they grade)."""
    from .factor_reader import load_factor_reader

    key = str(torch.device(device))
    if key not in _CACHE:
        _CACHE[key] = (load_judges(device=device), load_factor_reader(device=device))
    return _CACHE[key]


@torch.no_grad()
def judge_readings(images: Tensor, *, judges: Mapping[str, nn.Module] | str | None = "default",
                   reader: nn.Module | str | None = "default", batch_size: int = 256) -> dict[str, Tensor]:
    """What the independent graders read in images, for the studies' tables.

    Args:
        images: ``Tensor[N, 3, 32, 32]`` in [0, 1] (tiny-world images: the judges and the reader read 32 px).
        judges: name -> judge, ``"default"`` (the shipped ones, for 32 px images; none for images of another size,
            which no tiny-world judge can read) or ``None`` (no judge columns).
        reader: the factor reader, ``"default"`` (likewise) or ``None`` (no factor columns).

    Returns:
        ``judge_probs``: ``Tensor[N, K]``, the judges' softmax probabilities averaged over judges (their consensus);
        ``judge_predicted``: ``Tensor[N]``, its argmax; and ``read_<factor>``: ``Tensor[N]`` per factor the reader
        reads (rotation under the read shape's symmetry).
    """
    out: dict[str, Tensor] = {}
    if tuple(images.shape[-2:]) != (32, 32):  # the defaults read the tiny world only
        judges = None if isinstance(judges, str) else judges
        reader = None if isinstance(reader, str) else reader
    if judges is None and reader is None:
        return out
    defaults = shipped_graders(images.device) if "default" in (judges, reader) else ({}, None)
    judges = defaults[0] if isinstance(judges, str) else judges
    reader = defaults[1] if isinstance(reader, str) else reader
    if judges:
        probs = []
        for judge in judges.values():
            dev = next(judge.parameters()).device
            probs.append(torch.cat([judge(images[s:s + batch_size].to(dev).float()).softmax(-1).cpu()
                                    for s in range(0, len(images), batch_size)]))
        out["judge_probs"] = torch.stack(probs).mean(0)
        out["judge_predicted"] = out["judge_probs"].argmax(1)
    if reader is not None:
        read = reader.read(images.to(next(reader.parameters()).device))
        for name, value in read.items():
            if name == "rotation":
                value = value[torch.arange(len(value)), read["shape"]]
            out[f"read_{name}"] = value.cpu()
    return out


#: The factors :func:`judged_view` shows, in order (all are in the summaries).
VIEW_FACTORS = ("shape", "background", "distractor", "hue", "size", "x", "y", "rotation")


def judged_view(table: "pd.DataFrame", *, intervals: bool = False) -> "pd.DataFrame":
    """A comparison or summary table (rows with the judges' summary columns) as a person reads it.

    Columns: ``uses model gradients``; ``own cosine`` and ``own top-1`` (graded by the inverted model itself);
    ``judge agreement`` (the mean over the shipped judges of top-1 agreement with the original) and ``judge cosine``;
    one
    ``agree <judge>`` per judge; the factor reader's ``shape``, ``background`` and ``distractor`` accuracy and the
    other factors' errors in spreads; ``KID``. With ``intervals``, each judge/factor cell is ``"v [lo, hi]"``.

    Example:
        >>> judged_view(comp.table).round(3)
    """
    import pandas as pd

    def cell(row, key):
        v = row.get(key, float("nan"))
        if intervals and f"{key}_lo" in row:
            return f"{v:.3f} [{row[f'{key}_lo']:.3f}, {row[f'{key}_hi']:.3f}]"
        return v

    rows = {}
    for name, row in table.iterrows():
        agree = [k for k in row.index if k.startswith("judge_agree[") and not k.endswith(("_lo", "_hi"))]
        shipped = [k for k in agree if k[12:-1] in JUDGE_CLASSIFIERS]  # the mean is over the shipped judges
        cos = [k for k in row.index if k.startswith("judge_cosine[") and not k.endswith(("_lo", "_hi"))
               and k[13:-1] in JUDGE_CLASSIFIERS]
        out = {"uses model gradients": row.get("uses_model_gradients"),
               "own cosine": row.get("feature_cosine"), "own top-1": row.get("top1"),
               "judge agreement": float(sum(row[k] for k in shipped) / len(shipped)) if shipped else float("nan"),
               "judge cosine": float(sum(row[k] for k in cos) / len(cos)) if cos else float("nan")}
        out.update({f"agree {k[12:-1].replace('tinyworld-judge-', '')}": cell(row, k) for k in agree})
        out.update({f: cell(row, f"factor[{f}]") for f in VIEW_FACTORS})
        out["KID"] = cell(row, "kid")
        rows[name] = out
    return pd.DataFrame.from_dict(rows, orient="index")
