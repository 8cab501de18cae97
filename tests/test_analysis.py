"""Analysis contracts on the shipped tiny-world models, at small sizes: each study checks a property that
must hold (all-channel ablation gives chance, full PCA reconstructs, class probes beat chance at the last
layer, steering along a class raises its logit) and every bad input gets a clear error."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.analysis import (AnalysisError, ablation, composition, concepts, map_logits, pca, score_inversions, steering,
                                steering_studies)
from workbench.errors import InterventionError
from workbench.hooks import extract_features

N = 96          # images for fitting: enough positions for a full PCA of stages.3, few enough to stay quick


@pytest.fixture(scope="module")
def data():
    ds = wb.TinyWorld("val", size=N, seed=0)
    return ds.images(), ds.labels(), ds.factor_table()


@pytest.fixture(scope="module")
def f3(cnn, data):
    return extract_features(cnn, data[0], "stages.3").float()


@pytest.fixture(scope="module")
def inverter():
    return wb.load_inverter("tinyworld-cnn/stages.3")


# ------------------------------------------------------------------------------------------ shared
def test_map_logits_unedited_equals_forward(cnn, data, f3):
    x = data[0][:8]
    assert torch.allclose(map_logits(cnn, x, "stages.3", f3[:8]), cnn(x).detach(), atol=1e-4)
    with pytest.raises(AnalysisError, match="do not fit layer"):
        map_logits(cnn, x, "stages.2", f3[:8])


# ------------------------------------------------------------------------------------------ PCA
def test_pca_all_components_reconstruct(f3):
    fitted = pca.fit_pca(f3, layer="stages.3")
    assert fitted.n_components == 192
    assert torch.allclose(fitted.reconstruct(f3), f3, atol=1e-3 * f3.abs().max())
    assert abs(float(fitted.explained_variance_ratio.sum()) - 1) < 1e-4
    assert (fitted.reconstruct(f3, 0) - fitted.mean.view(1, -1, 1, 1)).abs().max() < 1e-5   # k=0: the mean map
    rgb = fitted.rgb(f3[:2], size=32)
    assert rgb.shape == (2, 3, 32, 32) and 0 <= rgb.min() and rgb.max() <= 1


def test_components_for_reaches_the_share(f3):
    fitted = pca.fit_pca(f3, layer="stages.3")
    cumulative = fitted.explained_variance_ratio.cumsum(0)
    for share in (0.01, 0.5, 0.9, 0.99):
        k = fitted.components_for(share)
        assert 1 <= k <= fitted.n_components and cumulative[k - 1] >= share
        assert k == 1 or cumulative[k - 2] < share
    assert fitted.components_for(0.5) <= fitted.components_for(0.9)
    assert fitted.components_for(1.0) == fitted.n_components
    with pytest.raises(AnalysisError, match=r"share is a fraction of the variance in \(0, 1\]"):
        fitted.components_for(0)
    few = pca.fit_pca(f3, n_components=2)
    with pytest.raises(AnalysisError, match="the 2 fitted components explain"):
        few.components_for(0.999)


def test_incremental_pca_agrees_with_full(f3):
    full = pca.fit_pca(f3, n_components=8)
    inc = pca.fit_pca(f3, n_components=8, incremental=True, batch_size=256)
    assert torch.allclose(full.explained_variance_ratio[:3], inc.explained_variance_ratio[:3], rtol=0.1)
    cos = (full.components[:3] * inc.components[:3]).sum(1).abs()
    assert (cos > 0.9).all()


def test_pca_bad_input(f3):
    with pytest.raises(AnalysisError, match="n_components=193 but the maps have 192 channels"):
        pca.fit_pca(f3, n_components=193)
    fitted = pca.fit_pca(f3, n_components=4, layer="stages.3")
    with pytest.raises(AnalysisError, match="k=5 but this PCA has 4 components"):
        fitted.reconstruct(f3, 5)
    with pytest.raises(AnalysisError, match="192 channels"):
        fitted.project(torch.zeros(1, 128, 8, 8))


def test_component_inversion_runs(cnn, data, inverter):
    x = data[0][:2]
    fitted = pca.fit_pca(extract_features(cnn, data[0], "stages.3"), layer="stages.3")
    table, samples = pca.component_inversion(cnn, inverter, fitted, x, ks=[1, 192], num_inference_steps=2, progress=False)
    assert list(table.k) == [1, 192] and samples[1].shape == (2, 1, 3, 32, 32)
    assert table.map_cosine.iloc[1] > 0.999 and table.map_agreement.iloc[1] == 1.0
    assert table.map_cosine.iloc[0] < table.map_cosine.iloc[1]


# ------------------------------------------------------------------------------------------ ablation
def test_zero_ablating_every_channel_gives_chance(cnn, data):
    x, y, _ = data
    table = ablation.ablation_table(cnn, x, y, "stages.3", {"all": range(192), "none": []})
    everything, nothing = table.iloc[0], table.iloc[1]
    assert nothing.accuracy == nothing.accuracy_before > 0.85
    # a constant map: one prediction for every image, so accuracy is that class's share (chance level)
    logits = map_logits(cnn, x, "stages.3", torch.zeros(len(x), 192, 4, 4))
    assert logits.argmax(1).unique().numel() == 1
    share = torch.bincount(y, minlength=8).float().max() / len(y)
    assert everything.accuracy <= share + 1e-6 and everything.accuracy < 0.3
    assert everything.map_cosine == 0.0


def test_channel_table_ignores_means_in_zero_mode(cnn, data):
    x, y, _ = data
    plain = ablation.channel_table(cnn, x[:8], y[:8], "stages.3", logit_drop="linear", progress=False)
    given = ablation.channel_table(cnn, x[:8], y[:8], "stages.3", logit_drop="linear", progress=False,
                                   means=torch.ones(192))
    assert plain.equals(given)


def test_channel_ranking(cnn, data):
    x, y, _ = data
    table = ablation.channel_table(cnn, x[:32], y[:32], "stages.3")
    assert len(table) == 192 and set(table.columns) >= {"mean_activation", "selectivity", "logit_drop"}
    assert table.selectivity.between(0, 1).all()
    order = ablation.rank_channels(table, by="logit_drop")
    assert sorted(order) == list(range(192))
    assert table.set_index("channel").logit_drop[order[0]] == table.logit_drop.max()
    # exact drops on a few channels: ablating the top-ranked ones costs more than the bottom-ranked ones
    top, bottom = order[:8], order[-8:]
    effect = ablation.ablation_table(cnn, x, y, "stages.3", {"top": top, "bottom": bottom})
    assert effect.logit_drop.iloc[0] > effect.logit_drop.iloc[1]
    with pytest.raises(AnalysisError, match="logit_drop needs"):
        ablation.rank_channels(table.drop(columns="logit_drop"), by="logit_drop")


def test_ablate_features_modes_and_errors(f3):
    means = f3.mean((0, 2, 3))
    zero = ablation.ablate_features(f3[:2], [0, 5])
    assert zero[:, [0, 5]].abs().max() == 0 and torch.equal(zero[:, 1], f3[:2, 1])
    mean = ablation.ablate_features(f3[:2], [3], mode="mean", means=means)
    assert torch.allclose(mean[:, 3], means[3].expand(2, 4, 4))
    with pytest.raises(InterventionError, match=r"out of range: this map has 192 channels"):
        ablation.ablate_features(f3, [3, 192])
    with pytest.raises(InterventionError, match="needs means"):
        ablation.ablate_features(f3, [3], mode="mean")
    with pytest.raises(InterventionError, match="mode is 'zero' or 'mean'"):
        ablation.ablate_features(f3, [3], mode="max")
    assert torch.equal(ablation.ablate_features(f3[:2], []), f3[:2])


def test_ablation_sweep_with_inversion(cnn, data, inverter):
    x, y, _ = data
    table, samples = ablation.ablation_sweep(cnn, x[:2], y[:2], "stages.3", list(range(192)), [0, 192],
                                             inverter=inverter, num_inference_steps=2, progress=False)
    assert list(table.n) == [0, 192] and samples[192].shape == (2, 1, 3, 32, 32)
    assert table.accuracy.iloc[0] >= table.accuracy.iloc[1]
    assert {"inversion_accuracy", "inversion_cosine"} <= set(table.columns)


# ------------------------------------------------------------------------------------------ composition
def test_splice_interpolate_arithmetic(f3):
    a, b = f3[:2], f3[2:4]
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    s = composition.splice(a, b, left)
    assert torch.equal(s[..., :2], a[..., :2]) and torch.equal(s[..., 2:], b[..., 2:])
    seq = composition.interpolate(a, b, 3)
    assert seq.shape == (2, 3, 192, 4, 4) and torch.allclose(seq[:, 0], a) and torch.allclose(seq[:, -1], b)
    assert torch.allclose(composition.arithmetic(a, b, b), a, atol=1e-5)
    with pytest.raises(InterventionError, match="the map is 4x4"):
        composition.splice(a, b, torch.ones(8, 8))


def test_splice_pairs_region_classifier(cnn):
    a, b, info = composition.make_splice_pairs(8, seed=0)
    assert a.shape == b.shape == (8, 3, 32, 32) and (info["classes_a"] != info["classes_b"]).all()
    pa = composition.region_probabilities(cnn, a, info["mask"]).argmax(1)
    assert (pa == info["classes_a"]).float().mean() >= 0.6    # the region classifier sees the left object


def test_class_probe_beats_chance_at_last_layer(cnn, data):
    x, _, table = data
    probes = composition.factor_probes(cnn, x, table, ["stages.3"], factors=["shape", "x"], progress=False)
    assert probes.loc["stages.3", "shape"] > probes.attrs["chance"]["shape"] + 0.2
    assert list(probes.columns) == ["shape", "x"]


def test_factor_readout_and_preservation(cnn, data):
    x, _, table = data
    readout = composition.fit_factor_readout(cnn, "stages.0", x, table, factors=["x", "background"])
    assert readout.test_scores["x"] > 0.3
    fake = torch.stack([x[:4], x[:4]], 1)                   # "reconstructions" that are the originals
    pres = composition.preservation_table(readout, x[:4], table.iloc[:4], {"copy": fake})
    assert pres.loc["copy"].equals(pres.loc["originals"])
    region = composition.invariance_by_region(torch.stack([x[:4], x[:4].flip(-1)], 1), table.iloc[:4])
    assert region.shape == (4, 2)


# ------------------------------------------------------------------------------------------ concepts
def test_steering_along_class_raises_its_logit(cnn, data, f3):
    x, y, _ = data
    star = concepts.class_concepts(f3, y, layer="stages.3", classifier_name="tinyworld-cnn")["star"]
    logits = steering.steering_logits(cnn, x[:16], star, [0.0, 1.0, 2.0])[..., 3]      # [16, 3]
    assert (logits[:, 1] > logits[:, 0]).all() and (logits[:, 2] > logits[:, 1]).all()
    readout = concepts.concept_readout(cnn, x, star)
    assert readout[y == 3].mean() > readout[y != 3].mean()


def test_cav_and_discovery(f3, data):
    y = data[1]
    c = concepts.cav(f3, y == 3, name="star", layer="stages.3")
    assert abs(float(c.direction.norm()) - 1) < 1e-5 and c.scale > 0
    for method in ("pca", "nmf", "kmeans"):
        found = concepts.discover_concepts(f3, 3, method=method, layer="stages.3", max_positions=600)
        assert 1 <= len(found) <= 3 and all(k.direction.shape == (192,) for k in found)
        assert concepts.concept_map(f3[:2], found[0]).shape == (2, 1, 4, 4)


def test_concept_bad_input(f3, data):
    y = data[1]
    star = concepts.mean_difference(f3, y == 3, name="star", layer="stages.3")
    with pytest.raises(AnalysisError, match="fitted at layer 'stages.3', not 'stages.2'"):
        steering.steer(f3, star, 1.0, layer="stages.2")
    with pytest.raises(AnalysisError, match="has 192 channels"):
        steering.steer(torch.zeros(1, 128, 8, 8), star, 1.0)
    with pytest.raises(InterventionError, match="map is 4x4"):
        steering.steer(f3, star, 1.0, mask=torch.ones(8, 8))
    masked = steering.steer(f3[:1], star, 1.0, mask=torch.eye(4))
    assert torch.equal(masked[..., 0, 1], f3[:1, :, 0, 1]) and not torch.equal(masked[..., 0, 0], f3[:1, :, 0, 0])
    with pytest.raises(AnalysisError, match="both positive and negative"):
        concepts.mean_difference(f3, torch.ones(len(f3)), layer="stages.3")


def test_steering_study_checks_layer_and_scores(cnn, data, f3, inverter):
    x, y, _ = data
    star = concepts.mean_difference(f3, y == 3, name="star", layer="stages.3", classifier_name="tinyworld-cnn")
    table, samples = steering_studies.steering_study(cnn, inverter, x[:1], star, [0.0, 3.0], target_class=3, num_inference_steps=2,
                                             progress=False)
    assert samples.shape == (1, 2, 1, 3, 32, 32) and len(table) == 2
    summary = steering_studies.steering_summary(table)
    assert "spearman_concept" in summary
    wrong = concepts.mean_difference(extract_features(cnn, x, "stages.2"), y == 3, layer="stages.2")
    with pytest.raises(AnalysisError, match="fitted at layer 'stages.2', not 'stages.3'"):
        steering_studies.steering_study(cnn, inverter, x[:1], wrong, [0.0], num_inference_steps=1, progress=False)


def test_score_inversions_shapes(cnn, data, f3):
    x = data[0][:2]
    table = score_inversions(cnn, "stages.3", f3[:2], torch.stack([x, x], 1), reference_logits=cnn(x).detach())
    assert len(table) == 4 and (table.feature_cosine > 0.999).all() and table.agrees.all()


def test_factor_kinds_and_radians_are_shared_by_probes_and_atom_scores():
    import math

    import numpy as np

    from workbench.analysis import factor_kind, factor_radians

    assert [factor_kind(f) for f in ("shape", "hue", "size")] == ["categorical", "circular", "continuous"]
    assert np.allclose(factor_radians([0.0, 0.25, 1.0], "hue"), [0.0, math.pi / 2, 2 * math.pi])
