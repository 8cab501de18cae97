"""Claims about FeatInv and its baselines, each tested on a comparison table and labelled by its source.

What we attribute to the FeatInv paper is in its abstract; every other claim is our own hypothesis and says so
(:data:`CLAIM_SOURCES`). The table comes from :func:`workbench.evaluation.compare_inverters`.

Example:
    >>> check_claims(comp.table)[["claim", "source", "holds"]]
"""
from __future__ import annotations

import pandas as pd


#: Where each claim of :func:`check_claims` comes from. Of the FeatInv paper we cite its abstract only ("excellent
#: reconstruction capabilities" from spatially resolved feature maps, where "existing approaches often rely on crude
#: approximations"); the baselines and their ordering are our hypotheses from the literature.
CLAIM_SOURCES = {
    "spatial beats pooled": "ours, from the abstract's emphasis on spatially resolved maps",
    "FeatInv has the best Fréchet distance": "ours, from the abstract's 'crude approximations' of other approaches",
    "FeatInv stays close in features (within 0.1 of the best)": "paper abstract: 'excellent reconstruction "
                                                                "capabilities'",
    "optimisation matches its features but is less natural and worse cross-model": "ours, from Mahendran & Vedaldi "
                                                                                    "2015",
}


def check_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Claims about FeatInv and its baselines, tested on a :func:`compare_inverters` table (``method``,
    ``backbone``, ``layer`` columns), each labelled by its source (:data:`CLAIM_SOURCES`): the FeatInv abstract or
    our own hypothesis.

    Claims (each per backbone where the rows exist):

    1. *spatial beats pooled* (ours): FeatInv's feature cosine and top-1 agreement beat the pooled FeatInv's (same
       layer).
    2. *FeatInv is the most natural* (ours): FeatInv's Fréchet distance is the lowest of the methods at its layer.
    3. *FeatInv stays close in features* (the abstract's "excellent reconstruction"): its feature cosine is within
       0.1 of the best method at its layer.
    4. *optimisation games its own features* (ours, Mahendran & Vedaldi 2015): the optimisation baseline's feature
       cosine is at least FeatInv's minus 0.05, but its Fréchet distance is higher and its cross-model cosine lower
       than FeatInv's.

    Returns:
        one row per tested claim: ``claim``, ``source``, ``backbone``, ``layer``, ``holds`` (bool) and ``evidence``
        (the numbers).

    Example:
        >>> check_claims(comp.table)[["claim", "holds"]]
    """
    t = table[table["method"] != "real images"]
    out = []

    def row(method, backbone, layer):
        m = t[(t["method"] == method) & (t["backbone"] == backbone) & (t["layer"] == layer)]
        return None if m.empty else m.iloc[0]

    for (backbone, layer), part in t.groupby(["backbone", "layer"], sort=False):
        fi, pooled, opt = row("featinv", backbone, layer), row("featinv-pooled", backbone, layer), \
            row("optimization", backbone, layer)
        if fi is None:
            continue
        if pooled is not None:
            out.append(("spatial beats pooled", backbone, layer,
                        fi.feature_cosine > pooled.feature_cosine and fi.top1 >= pooled.top1,
                        f"cosine {fi.feature_cosine:.3f} vs {pooled.feature_cosine:.3f}, top-1 {fi.top1:.3f} vs "
                        f"{pooled.top1:.3f}"))
        if len(part) > 1:
            best_fd = part["frechet_distance"].min()
            out.append(("FeatInv has the best Fréchet distance", backbone, layer,
                        fi.frechet_distance <= best_fd,
                        ", ".join(f"{m} {v:.2f}" for m, v in zip(part["method"], part["frechet_distance"]))))
            best_cos = part["feature_cosine"].max()
            out.append(("FeatInv stays close in features (within 0.1 of the best)", backbone, layer,
                        fi.feature_cosine >= best_cos - 0.1,
                        ", ".join(f"{m} {v:.3f}" for m, v in zip(part["method"], part["feature_cosine"]))))
        if opt is not None:
            out.append(("optimisation matches its features but is less natural and worse cross-model",
                        backbone, layer,
                        opt.feature_cosine >= fi.feature_cosine - 0.05 and opt.frechet_distance > fi.frechet_distance
                        and opt.cross_cosine < fi.cross_cosine,
                        f"cosine {opt.feature_cosine:.3f} vs FeatInv {fi.feature_cosine:.3f}; FD {opt.frechet_distance:.2f} "
                        f"vs {fi.frechet_distance:.2f}; cross {opt.cross_cosine:.3f} vs {fi.cross_cosine:.3f}"))
    claims = pd.DataFrame(out, columns=["claim", "backbone", "layer", "holds", "evidence"])
    claims.insert(1, "source", [CLAIM_SOURCES[c] for c in claims["claim"]])
    return claims
