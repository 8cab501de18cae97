"""Every robustness condition runs on 4 images."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench import robustness as R


@pytest.fixture(scope="module")
def x():
    return wb.TinyWorld("test", size=4, seed=0).images()


@pytest.mark.parametrize("kind", sorted(R.CORRUPTIONS))
def test_corruptions_change_images_more_with_severity(kind, x):
    outs = [R.corrupt(x, kind, s, seed=0) for s in (1, 2, 3)]
    dists = [(o - x).abs().mean().item() for o in outs]
    assert all(o.shape == x.shape and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert 0 < dists[0] <= dists[2], dists
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])   # distinct severities
    assert torch.equal(outs[0], R.corrupt(x, kind, 1, seed=0))          # seeded


def test_bad_corruption_names(x):
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        R.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity is 1, 2 or 3"):
        R.corrupt(x, "jpeg", 4)


def test_pgd_untargeted_and_targeted(cnn, x):
    conds = R.adversarial(cnn, x, eps=16 / 255, steps=5, seed=0)
    assert [c.key for c in conds] == ["pgd-untargeted", "pgd-targeted"]
    for c in conds:
        assert c.images.shape == x.shape and (c.images - x).abs().max() <= 16 / 255 + 1e-5
    assert (conds[1].info["target"] != conds[1].info["clean_pred"]).all()
    assert conds[0].info["attack_success"].any()


def test_ood_inputs():
    pics = R.photos()
    assert pics.shape == (len(R.PHOTOS), 3, 32, 32) and 0 <= pics.min() and pics.max() <= 1
    conds = R.out_of_distribution(4)
    assert [c.key for c in conds] == ["photos", "tinyworld-heldout"] and all(len(c.images) == 4 for c in conds)
    assert (conds[1].info["label"] == wb.tinyworld.CLASSES.index("star")).all()


def test_every_condition_runs_through_the_study(cnn, x):
    torch.manual_seed(0)
    dec = wb.DecoderInverter("tinyworld-cnn", "stages.3", (192, 4, 4), hidden_channels=32)
    conds = R.corruptions(x) + R.adversarial(cnn, x, steps=2) + R.out_of_distribution(4)
    res = R.robustness_study(dec, cnn, conds, clean=x, progress=False)
    assert len(res.summary) == 1 + 7 * 3 + 2 + 2
    assert res.summary.loc["clean", "family"] == "clean"
    assert {"feature_cosine", "cross_cosine", "top1", "frechet_distance"} <= set(res.summary.columns)
    assert res.summary.loc["pgd-targeted", "shows_adversarial"] >= 0
    assert res.reconstructions["jpeg-3"].shape == (4, 1, 3, 32, 32)
    assert res.tables["pgd-targeted"]["target"].notna().all()
