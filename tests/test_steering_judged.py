"""Steering graded by independent eyes (issue 28): alpha 0, the random control's noise and norm, judges not the edited
model, score steering, and the factor-matched edits."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench.analysis import concepts, steering
from workbench.analysis.judged_steering import (bootstrap_mean, factor_changes, judged_summary, judged_sweep,
                                                random_control)
from workbench.analysis.matched_edits import conditional_difference, conditional_edit, matched_retrieval_edit
from workbench.analysis.score_steering import score_guided_invert
from workbench.analysis.steering_studies import steering_study
from workbench.errors import AnalysisError, ArgumentValueError
from workbench.tinyworld import CLASSES

STAR = CLASSES.index("star")
FAST = wb.Sampler(num_inference_steps=2, feature_guidance_scale=0)


@pytest.fixture(scope="module")
def world():
    cnn = wb.load_classifier("tinyworld-cnn")
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    bank_world = wb.TinyWorld("train", size=600, seed=2)
    query = wb.TinyWorld("test", size=3, seed=7)
    bank = wb.extract_features(cnn, bank_world.images(), "stages.3")
    direction = concepts.mean_difference(bank, bank_world.labels() == STAR, name="star", layer="stages.3")
    return {"cnn": cnn, "inv": inv, "x": query.images(), "table": query.factor_table(), "bank": bank,
            "bank_table": bank_world.factor_table(), "edit": steering.direction_edit(direction)}


class _AlwaysStar(nn.Module):
    """A head that says "star" whatever it is given."""

    def forward(self, x, pre_logits: bool = False):
        out = torch.full((x.shape[0], len(CLASSES)), -20.0)
        out[:, STAR] = 20.0
        return out


def always_star(cnn):
    star = copy.deepcopy(cnn)
    star.model.head = _AlwaysStar()
    return star


def test_alpha_zero_is_the_unsteered_image(world):
    f = wb.extract_features(world["cnn"], world["x"], "stages.3")
    unsteered = world["inv"].invert(f, sampler=FAST, seed=5, progress=False)
    _, samples = judged_sweep(world["cnn"], world["inv"], world["x"], world["edit"], [0, 2], target_class=STAR,
                              sampler=FAST, seed=5, progress=False)
    assert torch.equal(samples[:, 0, 0], unsteered) and torch.equal(samples[:, 1, 0], unsteered)
    assert not torch.equal(samples[:, 0, 1], unsteered)        # the edit did something at alpha 2
    _, scored = judged_sweep(world["cnn"], world["inv"], world["x"], world["edit"], [0, 2], target_class=STAR,
                             sampler=FAST, seed=5, edit_scale=3.0, progress=False)
    assert torch.allclose(scored[:, 0, 0], unsteered, atol=1e-4)


def test_the_control_has_the_edits_norm_and_noise(world):
    f = wb.extract_features(world["cnn"], world["x"], "stages.3")
    edit, ctrl = world["edit"], random_control(world["edit"], seed=3)
    for a in (0.0, 1.0, 3.0):
        assert torch.allclose((ctrl(f, a) - f).flatten(1).norm(dim=1), (edit(f, a) - f).flatten(1).norm(dim=1),
                              rtol=1e-4, atol=1e-5)
    assert torch.equal(ctrl(f, 2.0), ctrl(f, 2.0))                             # one direction per map, every call
    cos = torch.cosine_similarity((ctrl(f, 2.0) - f).flatten(1), (edit(f, 2.0) - f).flatten(1))
    assert cos.abs().max() < 0.2                                               # and not the edit's direction
    _, samples = judged_sweep(world["cnn"], world["inv"], world["x"], edit, [0, 2], target_class=STAR, sampler=FAST,
                              seed=5, control_seed=3, progress=False)
    control_alone = world["inv"].invert(ctrl(f, 2.0), sampler=FAST, seed=5, progress=False)
    assert torch.equal(samples[:, 1, 1], control_alone)                       # the control: same seed, same noise


def test_an_always_star_edited_model_does_not_change_the_reported_p_target(world):
    star = always_star(world["cnn"])
    assert (star(world["x"]).argmax(1) == STAR).all()
    assert torch.equal(wb.extract_features(star, world["x"], "stages.3"),
                       wb.extract_features(world["cnn"], world["x"], "stages.3"))
    kwargs = dict(target_class=STAR, sampler=FAST, seed=1, progress=False)
    real, _ = judged_sweep(world["cnn"], world["inv"], world["x"], world["edit"], [0, 2], **kwargs)
    fake, _ = judged_sweep(star, world["inv"], world["x"], world["edit"], [0, 2], **kwargs)
    np.testing.assert_array_equal(real.judge_p_target, fake.judge_p_target)
    assert real.judge_p_target.min() < 0.5                                     # not the always-star reading
    own, _ = steering_study(world["cnn"], world["inv"], world["x"], world["edit"], [0, 2], **kwargs)
    faked, _ = steering_study(star, world["inv"], world["x"], world["edit"], [0, 2], **kwargs)
    np.testing.assert_array_equal(own.judge_p_target, faked.judge_p_target)
    assert (faked.p_target > 0.99).all() and not np.array_equal(own.p_target, faked.p_target)


def test_score_steering_follows_the_edit_and_refuses_bad_settings(world):
    f = wb.extract_features(world["cnn"], world["x"], "stages.3")
    edited = world["edit"](f, 3.0)
    plain = world["inv"].invert(edited, sampler=FAST, seed=2, progress=False)
    one = score_guided_invert(world["inv"], f, edited, edit_scale=1.0, sampler=FAST, seed=2, progress=False)
    assert torch.allclose(one, plain, atol=1e-4)                               # w = 1 is FeatInv on the edited map
    far = score_guided_invert(world["inv"], f, edited, edit_scale=4.0, sampler=FAST, seed=2, progress=False)
    assert (far - plain).abs().mean() > 1e-3
    with pytest.raises(ArgumentValueError, match="edit_scale"):
        score_guided_invert(world["inv"], f, edited, edit_scale=float("nan"), sampler=FAST)
    with pytest.raises(ArgumentValueError, match="classifier="):
        score_guided_invert(world["inv"], f, edited, sampler=wb.Sampler(num_inference_steps=2))
    with pytest.raises(AnalysisError, match="pairs each original"):
        score_guided_invert(world["inv"], f, edited[:2], sampler=FAST)


def test_judged_summary_reads_changes_with_intervals(world):
    table, _ = judged_sweep(world["cnn"], world["inv"], world["x"], world["edit"], [0, 2], target_class=STAR,
                            sampler=FAST, progress=False)
    s = judged_summary(table, factor="size", preserve=("x", "y", "background"), n_boot=200)
    assert list(s.index) == [("edit", 0.0), ("edit", 2.0), ("control", 0.0), ("control", 2.0)]
    zero = s.xs(0.0, level="alpha")
    assert (zero[["moved", "drift_x", "drift_y", "drift_background", "max_drift"]] == 0).all().all()
    assert (s.p_target_lo <= s.p_target).all() and (s.p_target <= s.p_target_hi).all()
    assert s.loc[("edit", 0.0), "p_target"] == s.loc[("control", 0.0), "p_target"]
    changes = factor_changes(table.copy(), ["hue"])
    assert changes.change_hue.abs().max() <= 0.5 / (12 ** -0.5) + 1e-6        # hue on the circle
    with pytest.raises(AnalysisError, match="to="):
        judged_summary(table, factor="background")
    mean, lo, hi = bootstrap_mean(np.array([0.0, 1.0, 0.5, 0.5]))
    assert mean == 0.5 and lo < 0.5 < hi
    with pytest.raises(AnalysisError, match="one value per image"):
        bootstrap_mean(np.zeros((2, 2)))


def test_factor_matched_edits(world):
    bank, bt, qt = world["bank"], world["bank_table"], world["table"]
    d = conditional_difference(bank, bt, qt, "shape", "star", k=8)
    assert d.shape == (3, *bank.shape[1:]) and torch.isfinite(d).all()
    # the class difference of an image already a star, matched on its own factors, is zero
    star_row = bt[bt["shape"] == "star"].iloc[:1].reset_index(drop=True)
    assert conditional_difference(bank, bt, star_row, "shape", "star", k=8).abs().max() == 0
    edit = conditional_edit(bank, bt, qt, "size", 1.0, layer="stages.3", same=("shape",), k=8)
    f = wb.extract_features(world["cnn"], world["x"], "stages.3")
    assert torch.equal(edit(f, 0.0), f) and torch.allclose(edit(f, 1.0) - f,
                                                            conditional_difference(bank, bt, qt, "size", 1.0,
                                                                                   same=("shape",), k=8), atol=1e-5)
    with pytest.raises(AnalysisError, match="steer the same images"):
        edit(f[:2], 1.0)
    swap = matched_retrieval_edit(bank, bt, qt, "shape", "star", layer="stages.3")
    target = swap(f, 1.0)
    stars = bank[torch.as_tensor((bt["shape"] == "star").to_numpy().copy())]
    assert any(torch.allclose(target[0], m, atol=1e-5) for m in stars)       # a real star map, swapped in
    with pytest.raises(AnalysisError, match="cannot be steered"):
        conditional_difference(bank, bt, qt, "saturation", 1.0)
    with pytest.raises(AnalysisError, match="real maps to match"):
        conditional_difference(bank[:50], bt.iloc[:50], qt, "shape", "star", k=40)


def test_the_explorer_offers_the_working_edit_and_shows_the_judges(world):
    from workbench.analysis.concepts import class_concepts
    from workbench.widgets import SCORE_SCALE, STEER_METHODS, Explorer

    assert "matched difference + score guidance" in STEER_METHODS
    bank_world = wb.TinyWorld("train", size=600, seed=2)
    found = class_concepts(world["bank"], bank_world.labels(), layer="stages.3", classifier_name="tinyworld-cnn")
    ex = Explorer(world["cnn"], {"stages.3": world["inv"]}, world["x"], concepts=list(found.values()), num_samples=1,
                  sampler=FAST, steer_bank={"stages.3": (world["bank"], world["bank_table"])},
                  image_factors=world["table"], live=False)
    ex.concept.value, ex.method.value, ex.alpha.value, ex.image.value = "star", STEER_METHODS[-1], 1.0, 1
    result = ex.update()
    f = wb.extract_features(world["cnn"], world["x"][1:2], "stages.3")
    edited = conditional_edit(world["bank"], world["bank_table"], world["table"].iloc[1:2].reset_index(drop=True),
                              "shape", "star", layer="stages.3")(f, 1.0)
    assert torch.allclose(result["edited"], edited)
    expected = score_guided_invert(world["inv"], f, edited, edit_scale=SCORE_SCALE, sampler=FAST, seed=0,
                                   progress=False)
    assert torch.allclose(result["samples"], expected, atol=1e-5)
    assert result["judge_probs"].shape == (1, len(CLASSES))
    assert "judges (mean)" in ex.inverted.value and "1: judges " in ex.strip.value
    bare = Explorer(world["cnn"], {"stages.3": world["inv"]}, world["x"], concepts=list(found.values()), live=False)
    bare.concept.value, bare.method.value, bare.alpha.value = "star", "matched difference", 1.0
    bare.update()
    assert "steer_bank=" in bare.status.value                 # the error names what to pass
