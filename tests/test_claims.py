"""check_claims labels every claim by its source (the FeatInv abstract, or our own hypothesis) and grades each by the
independent judges and the factor reader, never by the inverted model alone."""
from __future__ import annotations

import pandas as pd

from workbench.claims import CLAIM_SOURCES, check_claims


def table(opt_agree: float = 0.4) -> pd.DataFrame:
    # method, own cosine, judge agreement (two judges), judge cosine, position error, KID
    rows = [("featinv", 0.90, (0.9, 0.8), 0.85, 0.3, 0.01), ("featinv-pooled", 0.2, (0.3, 0.2), 0.3, 1.1, 0.03),
            ("decoder", 0.8, (0.4, 0.5), 0.4, 0.5, 0.20), ("optimization", 0.88, (opt_agree, opt_agree), 0.2, 0.9, 0.5),
            ("retrieval", 0.7, (0.6, 0.7), 0.7, 0.4, 0.0)]
    return pd.DataFrame([{"method": m, "backbone": "tinyworld-cnn", "layer": "stages.3", "feature_cosine": c,
                          "judge_agree[a]": a[0], "judge_agree[b]": a[1], "judge_cosine[a]": jc,
                          "judge_cosine[b]": jc, "factor[x]": x, "kid": k} for m, c, a, jc, x, k in rows])


def test_every_claim_names_its_source_and_is_judged():
    claims = check_claims(table())
    assert list(claims.columns) == ["claim", "source", "backbone", "layer", "holds", "evidence"]
    assert len(claims) == 5 and set(claims["claim"]) == set(CLAIM_SOURCES)
    by_claim = dict(zip(claims["claim"], claims["source"]))
    assert by_claim["FeatInv stays close for the judges (judge cosine within 0.1 of the best)"].startswith(
        "paper abstract")
    assert all(v.startswith("ours") for k, v in by_claim.items() if "stays close" not in k)
    assert claims.set_index("claim")["holds"].all()


def test_a_claim_fails_when_the_judges_say_so():
    """The optimisation row matches its own features (0.88 against 0.90): only the judges can refute it."""
    holds = check_claims(table(opt_agree=0.95)).set_index("claim")["holds"]
    assert not holds["optimisation matches its own features but the judges disagree"]
