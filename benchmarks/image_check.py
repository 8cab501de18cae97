"""Re-measure the table of ``workbench/image_check.py``: the tiny base's VAE reconstruction error on tiny-world test
images, on three strong corruptions of them and on the 13 ``skimage.data`` photos (about a minute on a CPU).

    .venv/bin/python benchmarks/image_check.py
"""
from __future__ import annotations

import torch

import workbench as wb
from workbench.image_check import THRESHOLD, image_scores
from workbench.robustness import PHOTOS, corrupt, photos


def main() -> None:
    clf = wb.load_classifier("tinyworld-cnn")
    real = wb.TinyWorld("test", size=96, seed=0).images()
    sets = {"tiny-world test": real, "photos": photos()}
    for kind in ("gaussian_blur", "jpeg", "gaussian_noise"):
        sets[f"{kind} (severity 3)"] = corrupt(real[:32], kind, 3)
    for name, x in sets.items():
        s = image_scores(clf, x)
        q = [round(float(v), 3) for v in torch.quantile(s, torch.tensor([0.0, 0.5, 0.95, 1.0]))]
        print(f"{name:>30}: min/median/p95/max {q}, above {THRESHOLD}: {int((s > THRESHOLD).sum())} of {len(s)}")
    print({n: round(float(v), 3) for n, v in zip(PHOTOS, image_scores(clf, photos()))})


if __name__ == "__main__":
    main()
