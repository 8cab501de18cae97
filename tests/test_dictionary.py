"""Concept dictionaries: every method fits, codes and decodes with the right shapes, is deterministic at a
seed and beats the empty dictionary; the factor table finds known answers on features built from known
factors; atoms steer as concepts; every bad input gets an error naming the fix."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.analysis import atoms, concepts, dictionary, steering
from workbench.analysis.atoms import atom_factor_table, compare_dictionaries, coverage, monosemanticity, top_activating
from workbench.analysis.dictionary import DICTIONARY_METHODS, fit_dictionary, reconstruction_quality
from workbench.errors import AnalysisError

FAST = dict(steps=150, batch_size=128, lr=5e-3, progress=False)


def _maps(n: int = 48, c: int = 12, seed: int = 0) -> torch.Tensor:
    """Maps with a few sparse non-negative parts plus noise: ``Tensor[n, c, 4, 4]``."""
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(6, c, generator=g)
    codes = torch.relu(torch.randn(n, 4, 4, 6, generator=g) - 0.5)
    return (codes @ parts + 0.05 * torch.randn(n, 4, 4, c, generator=g)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def maps():
    return _maps()


@pytest.mark.parametrize("method", DICTIONARY_METHODS)
def test_fit_encode_decode_shapes_and_beat_the_empty_dictionary(maps, method):
    k = maps.shape[1] if method == "channels" else 8
    d = fit_dictionary(maps, k, method=method, seed=0, layer="stages.3", top_k=3, **FAST)
    assert d.atoms.shape == (k, 12) and d.mean.shape == (12,) and d.atom_scale.shape == (k,)
    codes = d.encode(maps[:5])
    assert codes.shape == (5, k, 4, 4)
    assert d.decode(codes).shape == (5, 12, 4, 4)
    quality = reconstruction_quality(d, maps)
    empty = d.decode(torch.zeros_like(d.encode(maps)))                     # every position -> the mean
    x = maps.permute(0, 2, 3, 1).reshape(-1, 12)
    sse = lambda rec: float((rec.permute(0, 2, 3, 1).reshape(-1, 12) - x).pow(2).sum())   # noqa: E731
    assert sse(d.reconstruct(maps)) < sse(empty), method
    assert quality.r2 > 0.2 and 0 <= quality.dead < k, (method, quality)
    if method in ("topk", "archetypal"):
        assert quality.l0 <= 3 + 1e-6
    if method in ("pca", "channels"):
        assert quality.r2 > 0.99 or method == "pca"
    assert repr(d).startswith(f"Dictionary({method!r}")


@pytest.mark.parametrize("method", ["topk", "batchtopk", "jumprelu", "archetypal", "kmeans", "nmf"])
def test_deterministic_at_a_seed_and_leaves_the_global_rng_alone(maps, method):
    state = torch.get_rng_state()
    a = fit_dictionary(maps, 8, method=method, seed=3, top_k=3, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_dictionary(maps, 8, method=method, seed=3, top_k=3, **FAST)
    assert torch.equal(a.atoms, b.atoms) and torch.equal(a.encode(maps), b.encode(maps))
    if method in dictionary.SAE_METHODS:
        c = fit_dictionary(maps, 8, method=method, seed=4, top_k=3, **FAST)
        assert not torch.equal(a.atoms, c.atoms)


# ------------------------------------------------------------------------------------------ ground truth
@pytest.fixture(scope="module")
def known():
    """Channels built from known factors: 0 = star, 1 = size, 2 = cos(hue - 0.3 turns), 3 = noise,
    4 = how much of each grid cell the object covers."""
    from workbench.analysis.composition import object_masks

    table = wb.TinyWorld("val", size=240, seed=0).factor_table()
    n = len(table)
    g = torch.Generator().manual_seed(0)
    star = torch.as_tensor((table["shape"] == "star").to_numpy(dtype=float), dtype=torch.float32)
    size = torch.as_tensor(table["size"].to_numpy().copy(), dtype=torch.float32)
    hue = torch.as_tensor(np.cos(2 * math.pi * (table["hue"].to_numpy() - 0.3)), dtype=torch.float32)
    cover = torch.nn.functional.adaptive_avg_pool2d(object_masks(table).float(), (4, 4))[:, 0]
    f = torch.zeros(n, 5, 4, 4)
    f[:, 0] = star.view(n, 1, 1)
    f[:, 1] = size.view(n, 1, 1)
    f[:, 2] = hue.view(n, 1, 1)
    f[:, 3] = torch.randn(n, 4, 4, generator=g)
    f[:, 4] = cover
    f[:, :3] += 0.01 * torch.randn(n, 3, 4, 4, generator=g)
    return f, table


def test_factor_table_finds_the_factors_each_channel_was_built_from(known):
    f, table = known
    raw = fit_dictionary(f, 5, method="channels", layer="L")
    scores = atom_factor_table(raw, f, table, factors=["shape", "size", "hue", "x", "background"], seed=0)
    assert list(scores.columns) == ["shape", "size", "hue", "x", "background", "position"]
    assert scores.loc[0, "shape"] > 0.95 and scores.attrs["targets"]["shape"][0] == "star"
    assert scores.loc[1, "size"] > 0.95 and scores.attrs["targets"]["size"][1] == 1
    assert scores.loc[2, "hue"] > 0.95
    phase = scores.attrs["targets"]["hue"][2]
    assert abs(math.remainder(phase - 2 * math.pi * 0.3, 2 * math.pi)) < 0.2
    assert scores.loc[3].abs().max() < 0.3                                       # noise encodes nothing
    assert scores.loc[4, "position"] > 0.8 and abs(scores.loc[0, "position"]) < 0.3
    mono = monosemanticity(scores)
    assert list(mono.loc[[0, 1, 2], "best_factor"]) == ["shape", "size", "hue"]
    assert (mono.loc[[0, 1, 2], "monosemanticity"] > 0.7).all() and mono.loc[3, "monosemanticity"] < 0.3
    cov = coverage(scores)
    assert cov.covered.to_dict() == {"shape": True, "size": True, "hue": True, "x": False, "background": False}


def test_atoms_that_never_fire_get_nan_rows(known):
    f, table = known
    g = f.clone()
    g[:, 3] = 0
    scores = atom_factor_table(fit_dictionary(g, 5, method="channels"), g, table, factors=["size"])
    assert scores.loc[3].isna().all() and not scores.loc[1].isna().any()
    assert np.isnan(monosemanticity(scores).loc[3, "monosemanticity"])


def test_compare_dictionaries_puts_methods_side_by_side(known):
    f, table = known
    dicts = {"channels": fit_dictionary(f, 5, method="channels"), "pca": fit_dictionary(f, 3, method="pca")}
    summary, tables = compare_dictionaries(dicts, f, table, factors=["shape", "size", "hue"], progress=False)
    assert list(summary.index) == ["channels", "pca"] and set(tables) == {"channels", "pca"}
    assert summary.loc["channels", "r2"] > 0.999 and summary.loc["channels", "covered"] == 3
    assert {"monosemanticity", "top_monosemanticity", "alive", "l0"} <= set(summary.columns)


# ------------------------------------------------------------------------------------------ concepts and bad input
def test_atoms_are_concepts(maps):
    d = fit_dictionary(maps, 8, method="topk", layer="stages.3", classifier_name="tinyworld-cnn", top_k=3, **FAST)
    atom = d.alive[0]
    c = d.concept(atom)
    assert isinstance(c, concepts.Concept) and c.layer == "stages.3" and c.method == "topk"
    assert abs(float(c.direction.norm()) - 1) < 1e-5 and c.scale == pytest.approx(float(d.atom_scale[atom]))
    moved = steering.steer(maps[:2], c, 1.0, layer="stages.3")
    assert torch.allclose(moved - maps[:2], (c.scale * c.direction).view(1, -1, 1, 1).expand_as(moved), atol=1e-5)
    with pytest.raises(AnalysisError, match="fitted at layer 'stages.3', not 'stages.2'"):
        steering.steer(maps[:2], c, 1.0, layer="stages.2")
    idx, amaps = top_activating(d, maps, atom, n=3)
    assert idx.shape == (3,) and amaps.shape == (3, 4, 4)
    assert len(d.concepts()) == len(d.alive)


def test_bad_input_gets_a_clear_error(maps, known):
    with pytest.raises(AnalysisError, match="n_atoms is the dictionary size, an int >= 1"):
        fit_dictionary(maps, 0, method="topk")
    with pytest.raises(AnalysisError, match=r"Tensor\[N, C, h, w\].*got \[48, 12\]"):
        fit_dictionary(maps.mean((2, 3)), 4)
    with pytest.raises(AnalysisError, match="come from overcomplete"):
        fit_dictionary(maps, 4, method="mp-sae")
    with pytest.raises(AnalysisError, match="'channels' has one atom per channel: pass n_atoms=12"):
        fit_dictionary(maps, 4, method="channels")
    with pytest.raises(AnalysisError, match="at most as many atoms as channels"):
        fit_dictionary(maps, 13, method="pca")
    d = fit_dictionary(maps, 4, method="pca", layer="stages.3")
    with pytest.raises(AnalysisError, match="fitted at layer 'stages.3', not 'stages.2'"):
        d.encode(maps, layer="stages.2")
    with pytest.raises(AnalysisError, match="has 12 channels"):
        d.encode(torch.zeros(1, 7, 4, 4))
    with pytest.raises(AnalysisError, match=r"Tensor\[B, C, h, w\]"):
        d.encode(maps[0])
    with pytest.raises(AnalysisError, match=r"codes are Tensor\[B, 4, h, w\]"):
        d.decode(torch.zeros(1, 5, 4, 4))
    with pytest.raises(AnalysisError, match="atom is an int in 0..3"):
        d.concept(4)
    f, table = known
    raw = fit_dictionary(f, 5, method="channels")
    with pytest.raises(AnalysisError, match=r"\['colour'\] are not in the factor table"):
        atom_factor_table(raw, f, table, factors=["colour"])
    with pytest.raises(AnalysisError, match="240 rows for 10 maps"):
        atom_factor_table(raw, f[:10], table)
    with pytest.raises(AnalysisError, match="no layer"):
        raw.concept(0)
    dead = fit_dictionary(torch.zeros(4, 3, 2, 2), 3, method="channels", layer="L")
    with pytest.raises(AnalysisError, match="never fired"):
        dead.concept(0)


# ------------------------------------------------------------------------------------------ on the shipped models
@pytest.mark.slow
def test_on_the_cnn_channels_explain_every_logit_and_atoms_steer_through_featinv():
    from workbench.analysis import composition

    cnn = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("val", size=64, seed=0)
    x, table = ds.images(), ds.factor_table()
    f = wb.extract_features(cnn, x, "stages.3").float()
    raw = fit_dictionary(f, 192, method="channels", layer="stages.3", classifier_name="tinyworld-cnn")
    assert reconstruction_quality(raw, f, classifier=cnn, images=x).logit_explained == pytest.approx(1.0, abs=1e-4)
    sae = fit_dictionary(f, 32, method="topk", layer="stages.3", classifier_name="tinyworld-cnn", **FAST)
    q = reconstruction_quality(sae, f, classifier=cnn, images=x)
    assert q.logit_explained < 1 and q.r2 > 0
    scores = atom_factor_table(sae, f, table, factors=["shape", "size"])
    readout = composition.fit_factor_readout(cnn, "stages.1", x, table, factors=["shape", "size"])
    atom = sae.alive[0]
    inverter = wb.load_inverter("tinyworld-cnn/stages.3")
    out, samples, summary = atoms.atom_steering_study(cnn, inverter, x[:1], sae, atom, [0.0, 2.0], scores=scores,
                                                           readout=readout, where=(1, 2), num_samples=1,
                                                           progress=False)
    assert samples.shape == (1, 2, 1, 3, 32, 32) and "target" in out
    assert summary.factor in ("shape", "size") and summary.atom == atom
    assert {"control_spearman_target", "control_target_last"} <= set(summary.index)
    _, at_object, _ = atoms.atom_steering_study(cnn, inverter, x[:1], sae, atom, [0.0, 2.0], scores=scores,
                                                     readout=readout, where="object", control=False, num_samples=1,
                                                     progress=False)
    assert torch.equal(at_object[:, 0], samples[:, 0])             # alpha 0 is the unsteered inversion, same noise
    with pytest.raises(AnalysisError, match="off the 4x4 map grid"):
        atoms.atom_steering_study(cnn, inverter, x[:1], sae, atom, [0.0], scores=scores, readout=readout,
                                       where=(4, 0), progress=False)
    with pytest.raises(AnalysisError, match="does not read 'hue'"):
        atoms.atom_steering_study(cnn, inverter, x[:1], sae, atom, [0.0], scores=scores, readout=readout,
                                       factor="hue", progress=False)


@pytest.mark.slow
def test_the_atom_browser_shows_top_images_and_steers():
    import ipywidgets

    from workbench.widgets import AtomBrowser

    cnn = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("val", size=48, seed=0)
    x, table = ds.images(), ds.factor_table()
    f = wb.extract_features(cnn, x, "stages.3").float()
    sae = fit_dictionary(f, 32, method="topk", layer="stages.3", classifier_name="tinyworld-cnn", **FAST)
    scores = atom_factor_table(sae, f, table, factors=["shape", "size"])
    browser = AtomBrowser(cnn, wb.load_inverter("tinyworld-cnn/stages.3"), sae, x, scores=scores, alphas=[0.0, 2.0],
                          n_top=3, num_inference_steps=2)
    assert isinstance(browser.widget, ipywidgets.VBox)
    assert [a for _, a in browser.atom.options] and set(a for _, a in browser.atom.options) <= set(sae.alive)
    assert browser.top.value.count("<img") == 3
    browser.atom.value = browser.atom.options[-1][1]                # callback: the new atom's top images
    browser.run.click()
    assert browser.result["samples"].shape == (2, 3, 32, 32) and browser.steered.value.count("<img") == 3
    assert browser.progress.value == 2 and "alpha=2" in browser.steered.value
    with pytest.raises(AnalysisError, match="load the inverter of 'stages.3'"):
        AtomBrowser(cnn, wb.load_inverter("tinyworld-cnn/stages.2"), sae, x)


def test_atom_steering_effect_reports_the_judges_and_the_factor_reader():
    """The atom study's summary carries the independent graders' readings of the same inversions beside the
    inverted classifier's own: the judges' p(shape) and the factor reader's agreement with the atom's shape."""
    import pandas as pd

    from workbench.tinyworld import CLASSES

    star = CLASSES.index("star")
    table = pd.DataFrame({"image": [0, 0, 1, 1], "alpha": [0.0, 4.0, 0.0, 4.0],
                          "readout_shape": ["circle", "star", "circle", "circle"],
                          "p_target": [0.1, 0.9, 0.1, 0.8], "p_target_map": [0.1, 1.0, 0.1, 1.0],
                          "judge_p_target": [0.0, 0.5, 0.1, 0.1],
                          "read_shape": [0, star, star, star]})
    out = atoms._steering_effect(table, "shape", "star")
    assert out["p_class_last"] == pytest.approx(0.85)                 # the inverted classifier's own
    assert out["judge_p_class_first"] == pytest.approx(0.05) and out["judge_p_class_last"] == pytest.approx(0.3)
    assert out["reader_target_first"] == 0.5 and out["reader_target_last"] == 1.0
    assert (table.reader_target.to_numpy() == [0.0, 1.0, 1.0, 1.0]).all()
    negated = atoms._steering_effect(table.drop(columns="reader_target"), "shape", "not star")
    assert negated["reader_target_last"] == 0.0
    # a factor the reader does not read (bg_value) gets no reader columns; hue is read in its own units
    assert atoms._reader_agreement(table.assign(read_bg_value=0.3), "bg_value", 1.0) is None
    hue = atoms._reader_agreement(pd.DataFrame({"read_hue": [0.0, 0.5]}), "hue", 0.0)
    assert hue == pytest.approx([1.0, -1.0])
