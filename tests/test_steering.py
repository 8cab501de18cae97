"""Concept steering contracts (issue 17): sweeps share one noise draw per image across their steps, every edit
method returns maps of the right shape and rejects what does not fit, the on-manifold edit lowers its penalty,
and the table and goal summarise sweeps as documented."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.analysis import (AnalysisError, ablation, composition, concepts, invert_edited, map_logits, steering,
                                steering_studies)
from workbench.errors import InterventionError

LAYER = "stages.3"
STAR = 3


@pytest.fixture(scope="module")
def data():
    ds = wb.TinyWorld("val", size=128, seed=0)
    return ds.images(), ds.labels()


@pytest.fixture(scope="module")
def feats(cnn, data):
    return wb.extract_features(cnn, data[0], LAYER).float()


@pytest.fixture(scope="module")
def inverter():
    return wb.load_inverter(f"tinyworld-cnn/{LAYER}")


@pytest.fixture(scope="module")
def star(feats, data):
    return concepts.mean_difference(feats, data[1] == STAR, name="star", layer=LAYER, classifier_name="tinyworld-cnn")


# ------------------------------------------------------------------------------------------ shared noise
def test_steering_sweep_shares_noise_and_starts_at_the_unsteered_inversion(cnn, data, feats, inverter, star):
    x = data[0][:2]
    kw = dict(num_samples=2, num_inference_steps=2, seed=5, progress=False)
    table, samples = steering_studies.steering_study(cnn, inverter, x, star, [0.0, 0.0, 3.0], target_class=STAR, **kw)
    assert samples.shape == (2, 3, 2, 3, 32, 32) and len(table) == 12
    f = wb.extract_features(cnn, x, LAYER)                                   # as the study extracts them
    assert torch.equal(samples[:, 0], inverter.invert(f, **kw))              # alpha 0 is the unsteered inversion
    assert torch.equal(samples[:, 0], samples[:, 1])                         # one noise draw across alphas
    assert not torch.equal(samples[:, 0], samples[:, 2])                     # and the edit changes the images
    _, again = steering_studies.steering_study(cnn, inverter, x, star, [0.0, 0.0, 3.0], **kw)
    assert torch.equal(again, samples)                                       # same seed, same sequence
    assert {"p_target", "p_target_map", "concept"} <= set(table.columns)
    on_map = table.groupby(["alpha", "image"]).p_target_map.mean()
    assert (on_map[3.0] > on_map[0.0]).all()                                 # the head sees the edit


def test_studies_report_how_far_their_edits_went_instead_of_warning(cnn, data, inverter, star):
    """A deliberate edit far off the training maps is a column of the study's table, not an OffDistributionWarning;
    maps of the wrong classifier still warn."""
    import warnings

    from workbench.errors import OffDistributionWarning
    from workbench.inverters.feature_distance import OFF_DISTRIBUTION_THRESHOLD

    x, kw = data[0][:2], dict(num_samples=2, num_inference_steps=1, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffDistributionWarning)
        half = torch.zeros(4, 4)
        half[:, :2] = 1                                       # a local edit: the distance ignores uniform shifts
        table, _ = steering_studies.steering_study(cnn, inverter, x, star, [0.0, 20.0], mask=half, **kw)
        ablated, _ = ablation.ablation_sweep(cnn, x, data[1][:2], LAYER, list(range(192)), [0, 192],
                                             mode="zero", inverter=inverter, **kw)
    far = table.groupby("alpha").feature_distance.median()
    assert far[0.0] < 1.2 < OFF_DISTRIBUTION_THRESHOLD < far[20.0], far          # the edit went far, silently
    assert len(table.feature_distance) == 8 and ablated.feature_distance.notna().all()
    vit_maps = wb.extract_features(wb.load_classifier("tinyworld-vit"), data[0][:32], "blocks.0")  # 128x8x8
    with pytest.warns(OffDistributionWarning, match="another classifier or layer"):   # the originals are checked
        invert_edited(wb.load_inverter("tinyworld-cnn/stages.2"), vit_maps, vit_maps[:1], num_inference_steps=1,
                      feature_guidance_scale=0, progress=False)


def test_sequence_and_ablation_sweeps_share_noise(cnn, data, feats, inverter):
    kw = dict(num_inference_steps=2, seed=1, progress=False)
    constant = torch.stack([feats[:2]] * 3, 1)                               # [2, 3, C, h, w], one map per item
    _, samples = composition.sequence_study(cnn, inverter, constant, classes=[STAR], **kw)
    assert samples.shape == (2, 3, 1, 3, 32, 32)
    assert torch.equal(samples[:, 0], samples[:, 1]) and torch.equal(samples[:, 0], samples[:, 2])
    _, ablated = ablation.ablation_sweep(cnn, data[0][:2], data[1][:2], LAYER, [0, 1], [0, 2], inverter=inverter, **kw)
    assert torch.equal(ablated[0], inverter.invert(wb.extract_features(cnn, data[0][:2], LAYER), **kw))


# ------------------------------------------------------------------------------------------ edits
def test_object_mask_prototype_and_transplant(feats, data):
    m = steering.object_mask(feats[:4])
    assert m.shape == (4, 1, 4, 4) and set(m.unique().tolist()) <= {0.0, 1.0} and (m.sum((1, 2, 3)) >= 1).all()
    assert steering.object_mask(feats[:4], threshold=0.0).all()
    vector = steering.prototype(feats, data[1] == STAR)
    assert vector.shape == (192,)
    assert torch.equal(steering.transplant(feats[:2], vector, 0.0, m[:2]), feats[:2])
    full = steering.transplant(feats[:2], vector, 1.0, torch.ones(4, 4))
    assert torch.allclose(full, vector.view(1, -1, 1, 1).expand_as(full), atol=1e-5)
    with pytest.raises(InterventionError):
        steering.transplant(feats[:2], vector, 1.0, torch.ones(8, 8))                    # mask of another size
    with pytest.raises(InterventionError):
        steering.transplant(feats[:2], torch.zeros(128), 1.0, m[:2])                     # vector of another layer
    with pytest.raises(AnalysisError, match="threshold"):
        steering.object_mask(feats, threshold=2.0)
    with pytest.raises(AnalysisError, match="at least one True"):
        steering.prototype(feats, torch.zeros(len(feats), dtype=torch.bool))


def test_edits_keep_shape_and_identity_at_zero(cnn, data, feats, star):
    f = feats[:3]
    bank = feats[data[1] == STAR]
    edits = [steering.direction_edit(star), steering.direction_edit(star, where="object"),
             steering.direction_edit(star, where=torch.eye(4)),
             steering.transplant_edit(steering.prototype(feats, data[1] == STAR), layer=LAYER),
             steering.retrieval_edit(bank, layer=LAYER), steering.retrieval_edit(bank, layer=LAYER, where="object"),
             steering.towards_edit(feats[3:6], layer=LAYER)]
    for edit in edits:
        assert edit.layer == LAYER and edit.name in repr(edit)
        assert edit(f, 1.0).shape == f.shape and torch.equal(edit(f, 0.0), f)
    at_object = steering.direction_edit(star, where="object")(f, 2.0)
    outside = steering.object_mask(f) == 0
    assert torch.equal(at_object.masked_select(outside), f.masked_select(outside))
    nearest = steering.retrieval_edit(bank, layer=LAYER)(f, 1.0)
    assert all(any(torch.allclose(n, b, atol=1e-5) for b in bank) for n in nearest)     # a real star map
    with pytest.raises(AnalysisError, match="where"):
        steering.direction_edit(star, where="left")
    with pytest.raises(AnalysisError, match="steer the same images"):
        steering.towards_edit(feats[:2], layer=LAYER)(f, 1.0)
    with pytest.raises(AnalysisError, match="k <= len"):
        steering.nearest_maps(f, bank, k=len(bank) + 1)


def test_steering_study_rejects_edits_of_another_layer(cnn, data, inverter):
    x, y = data
    f2 = wb.extract_features(cnn, x, "stages.2")
    edit = steering.transplant_edit(steering.prototype(f2, y == STAR), layer="stages.2")
    with pytest.raises(AnalysisError, match="edits 'stages.2' maps but the inverter inverts 'stages.3'"):
        steering_studies.steering_study(cnn, inverter, x[:1], edit, [0.0], num_inference_steps=1, progress=False)
    with pytest.raises(AnalysisError, match="mask= goes with a Concept"):
        steering_studies.steering_study(cnn, inverter, x[:1], edit, [0.0], mask=torch.ones(4, 4), progress=False)


# ------------------------------------------------------------------------------------------ on-manifold edit
def test_on_manifold_edit_lowers_its_penalty(cnn, data, feats):
    x = data[0][:4]
    f = wb.extract_features(cnn, x, LAYER)                                   # as manifold_edit extracts them
    prior = steering.fit_map_prior(feats, layer=LAYER, n_components=16)
    assert 0.2 < float(prior.penalty(feats).mean()) < 1.0                   # about 0.5 on real maps
    assert prior.project(feats[:2]).shape == (2, 192, 4, 4)
    kw = dict(layer=LAYER, num_steps=30)
    free = steering.optimise_map(cnn, x, f, STAR, **kw)
    held = steering.optimise_map(cnn, x, f, STAR, prior=prior, prior_weight=1.0, **kw)
    assert (prior.penalty(held) < prior.penalty(free)).all()
    p = lambda f: map_logits(cnn, x, LAYER, f).softmax(-1)[:, STAR]          # noqa: E731
    assert (p(held) > p(f)).all()
    edit = steering.manifold_edit(cnn, x, STAR, prior, num_steps=30)
    assert torch.allclose(edit(f, 1.0), held, atol=1e-5) and edit.name == "on-manifold"
    with pytest.raises(AnalysisError, match="fitted at 'stages.3', not 'stages.2'"):
        steering.optimise_map(cnn, x, f, STAR, layer="stages.2", prior=prior)
    with pytest.raises(AnalysisError, match="shape"):
        prior.penalty(torch.zeros(1, 128, 8, 8))
    with pytest.raises(AnalysisError, match="n_components"):
        steering.fit_map_prior(feats[:4], layer=LAYER, n_components=16)


# ------------------------------------------------------------------------------------------ table and goal
def _study(p_image, p_map, x_shift):
    rows = []
    for alpha, pi, pm, dx in zip([0.0, 1.0], p_image, p_map, [0.0, x_shift]):
        for image in range(2):
            rows.append({"image": image, "alpha": alpha, "sample": 0, "predicted": 0, "p_target": pi,
                         "p_target_map": pm, "readout_x": 0.5 + dx, "readout_background": "flat"})
    return pd.DataFrame(rows)


def test_steering_table_and_goal():
    studies = {"moves": _study([0.0, 0.8], [0.0, 0.9], 0.05), "flips the head": _study([0.0, 0.1], [0.0, 1.0], 0.0),
               "moves it away": _study([0.0, 0.9], [0.0, 0.9], 0.5)}
    table = steering_studies.steering_table(studies, factors=["x", "background"], factor_scale={"x": 0.1})
    assert table.loc[("flips the head", 1.0), "off_manifold_gap"] == pytest.approx(0.9)
    assert table.loc[("moves", 1.0), "drift_x"] == pytest.approx(0.5)
    assert table.loc[("moves it away", 1.0), "drift_x"] == pytest.approx(5.0)
    assert table.drift_background.max() == 0.0 and table.loc[("moves", 1.0), "hit_rate"] == 1.0
    goal = steering_studies.steering_goal(table, preserve=["x"])
    assert list(goal.index) == ["moves", "flips the head", "moves it away"]
    assert goal.loc["moves", "reached"] and not goal.loc["flips the head", "reached"]
    assert goal.loc["moves it away", "alpha"] == 0.0 and not goal.loc["moves it away", "reached"]
    with pytest.raises(AnalysisError, match="alpha = 0"):
        steering_studies.steering_table({"late": _study([0.0, 1.0], [0.0, 1.0], 0.0).assign(alpha=lambda t: t.alpha + 1)})
    with pytest.raises(AnalysisError, match="drift_size"):
        steering_studies.steering_goal(table)


# ------------------------------------------------------------------------------------------ explorer
def test_explorer_offers_the_edit_methods(cnn, data, feats, inverter, star):
    from workbench.widgets import STEER_METHODS, Explorer

    x, y = data
    ex = Explorer(cnn, {LAYER: inverter}, x[:2], concepts={"star": star}, real_maps={"star": feats[y == STAR]})
    assert list(ex.method.options) == list(STEER_METHODS)
    f = wb.extract_features(cnn, x[:1], LAYER)
    ex.concept.value, ex.alpha.value = "star", 1.0
    for method in STEER_METHODS:
        ex.method.value = method
        if method.startswith("matched"):   # needs steer_bank= and image_factors= (tests/test_steering_judged.py)
            with pytest.raises(AnalysisError, match="steer_bank"):
                ex.edit(f)
            continue
        assert ex.edit(f).shape == f.shape and not torch.equal(ex.edit(f), f)
    ex.method.value = "nearest real map"
    assert torch.allclose(ex.edit(f), steering.nearest_maps(f, feats[y == STAR]), atol=1e-5)
    bare = Explorer(cnn, {LAYER: inverter}, x[:2], concepts={"star": star})
    bare.concept.value, bare.alpha.value, bare.method.value = "star", 1.0, "nearest real map"
    with pytest.raises(AnalysisError, match="needs real maps"):
        bare.edit(f)
