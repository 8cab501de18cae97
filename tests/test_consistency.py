"""The steerable student's training pieces (issue 28's lever): class-steered maps and the feature-consistency loss."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.training.consistency import edited_maps, feature_consistency


@pytest.fixture(scope="module")
def world():
    cnn = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("train", size=64, seed=0)
    x, y = ds.images(), ds.labels()
    return cnn, x, y, wb.extract_features(cnn, x, "stages.3")


def test_edited_maps_steer_a_share_of_rows_towards_other_classes(world):
    from workbench.training.distill import class_directions

    cnn, x, y, maps = world
    concepts = class_directions(maps, y, "stages.3")
    g = torch.Generator().manual_seed(0)
    out, edited = edited_maps(maps[:8], y[:8], concepts, fraction=0.5, alpha_range=(2.0, 2.0), generator=g)
    assert edited.sum() == 4 and torch.equal(out[~edited], maps[:8][~edited])
    assert (out[edited] - maps[:8][edited]).flatten(1).norm(dim=1).min() > 0
    unchanged, none = edited_maps(maps[:8], y[:8], concepts, fraction=0.0, alpha_range=(1, 4), generator=g)
    assert not none.any() and torch.equal(unchanged, maps[:8])
    # each edited row moved along the direction of a class other than its own: its own class's logit does not rise
    from workbench.analysis import map_logits

    before = map_logits(cnn, x[:8], "stages.3", maps[:8]).argmax(1)
    after = map_logits(cnn, x[:8], "stages.3", out).argmax(1)
    assert (after[edited] != y[:8][edited]).float().mean() >= 0.5 and torch.equal(before[~edited], after[~edited])


def test_feature_consistency_is_zero_for_the_image_itself_and_has_gradients(world):
    cnn, x, y, maps = world
    images = x[:4].clone().requires_grad_(True)
    own = feature_consistency(cnn, "stages.3", images, maps[:4])
    assert own.shape == (4,) and own.abs().max() < 1e-4
    other = feature_consistency(cnn, "stages.3", images, maps[4:8])
    assert (other > 0.05).all()
    other.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_edit_flags_are_checked():
    from workbench.training import distill

    base = ["--teacher", "tinyworld-cnn/stages.3", "--out", "x"]
    with pytest.raises(SystemExit):
        distill.parse_args(base + ["--edit-fraction", "0.5"])             # no consistency loss for edited rows
    with pytest.raises(SystemExit):
        distill.parse_args(base + ["--consistency-weight", "1", "--edit-alpha", "4,1"])
    config = distill.parse_args(base + ["--consistency-weight", "1", "--edit-fraction", "0.5"])
    assert config.edit_fraction == 0.5 and config.variant == "distilled"
