"""check_claims labels every claim by its source: the FeatInv abstract, or our own hypothesis."""
from __future__ import annotations

import pandas as pd

from workbench.claims import CLAIM_SOURCES, check_claims


def table() -> pd.DataFrame:
    rows = [("featinv", 0.95, 0.97, 0.85, 5.0), ("featinv-pooled", 0.2, 0.3, 0.1, 40.0),
            ("decoder", 0.8, 0.93, 0.15, 60.0), ("optimization", 0.7, 0.93, 0.07, 110.0)]
    return pd.DataFrame([dict(method=m, backbone="tinyworld-cnn", layer="stages.3", feature_cosine=c, top1=t,
                              cross_cosine=x, frechet_distance=fd) for m, c, t, x, fd in rows])


def test_every_claim_names_its_source():
    claims = check_claims(table())
    assert list(claims.columns) == ["claim", "source", "backbone", "layer", "holds", "evidence"]
    assert len(claims) == 4 and set(claims["claim"]) == set(CLAIM_SOURCES)
    by_claim = dict(zip(claims["claim"], claims["source"]))
    assert by_claim["FeatInv stays close in features (within 0.1 of the best)"].startswith("paper abstract")
    assert all(v.startswith("ours") for k, v in by_claim.items() if "stays close" not in k)
    assert claims.set_index("claim")["holds"].to_dict() == {
        "spatial beats pooled": True, "FeatInv has the best Fréchet distance": True,
        "FeatInv stays close in features (within 0.1 of the best)": True,
        "optimisation matches its features but is less natural and worse cross-model": False}
