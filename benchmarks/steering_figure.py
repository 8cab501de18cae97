"""Draw docs/img/steering-stages.{2,3}-star.png from the steering benchmark's saved tables.

    .venv/bin/python benchmarks/steering_figure.py

No measuring: it plots benchmarks/results/steering-stages.{2,3}.json (written by benchmarks/steering.py) with
:func:`workbench.plot.steering_figure`, the star rows only.
"""
import json

import pandas as pd
import workbench as wb

for stage in ("2", "3"):
    t = pd.DataFrame(json.load(open(f"benchmarks/results/steering-stages.{stage}.json"))["table"])
    t = t[t.method.str.contains("| star |", regex=False)].copy()
    t["method"] = t.method.str.split(" | ", regex=False).str[-1]
    fig = wb.plot.steering_figure(t.set_index(["method", "alpha"]),
                                  title=f"stages.{stage}: hearts, crescents, crosses steered towards star")
    fig.savefig(f"docs/img/steering-stages.{stage}-star.png", dpi=80)
