"""A photo given to a tiny-world classifier gets a warning naming cause and remedy; tiny-world images, clean or
mildly corrupted, do not (issue 30, point 4). The photos are scikit-image's (skimage.data), resized to 32 px."""
from __future__ import annotations

import warnings

import pytest
import torch

import workbench as wb
from workbench.errors import OffDistributionWarning
from workbench.image_check import THRESHOLD, image_scores, warn_if_not_tiny_world
from workbench.robustness import corrupt, photos


@pytest.mark.parametrize("name", ["tinyworld-cnn", "tinyworld-vit"])
def test_photos_are_told_apart_from_tiny_world_images(name):
    clf = wb.load_classifier(name)
    real = wb.TinyWorld("test", size=64, seed=0).images()
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffDistributionWarning)
        scores = warn_if_not_tiny_world(clf, real)                     # no warning for its own world
        warn_if_not_tiny_world(clf, corrupt(real[:16], "gaussian_blur", 1))
    assert float(scores.max()) < THRESHOLD
    shots = photos(names=("astronaut", "coffee", "chelsea"))
    with pytest.warns(OffDistributionWarning, match="real-scale classifier and inverter") as caught:
        warn_if_not_tiny_world(clf, shots)
    assert "32 px renderings" in str(caught[0].message) and name in str(caught[0].message)
    assert "3 of 3 look unlike it" in str(caught[0].message)
    rocket = photos(names=("rocket",))                                  # smooth: its VAE error passes (0.070)...
    with pytest.warns(OffDistributionWarning, match="the file is 427x640 px, not a 32x32 rendering"):
        warn_if_not_tiny_world(clf, rocket, source_size=(427, 640))     # ...its file's size does not


def test_other_classifiers_are_not_judged():
    import timm

    from workbench.models import Classifier

    clf = Classifier(timm.create_model("resnet18", pretrained=False, num_classes=3), (0.5,) * 3, (0.5,) * 3,
                     (3, 32, 32), name="resnet18")
    assert image_scores(clf, torch.rand(2, 3, 32, 32)) is None
