"""The explorer builds without a browser, and its callbacks update images, logits and progress."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.errors import InterventionError
from workbench.analysis.concepts import mean_difference
from workbench.hooks import extract_features
from workbench.widgets import Explorer, parse_channels


def test_parse_channels():
    assert parse_channels("0-2, 5", 192) == [0, 1, 2, 5]
    assert parse_channels("", 192) == []
    with pytest.raises(InterventionError, match="out of range"):
        parse_channels("190-193", 192)
    with pytest.raises(InterventionError, match="cannot read channels"):
        parse_channels("a, b", 192)


@pytest.fixture(scope="module")
def explorer():
    cnn = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("val", size=24, seed=0)
    x, y = ds.images(), ds.labels()
    star = mean_difference(extract_features(cnn, x, "stages.3"), y == 3, name="star", layer="stages.3",
                           classifier_name="tinyworld-cnn")
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    return Explorer(cnn, {"stages.3": inv}, x[:4], labels=y[:4], concepts={"star": star}, num_samples=2,
                    num_inference_steps=2)


def test_explorer_builds_and_runs(explorer):
    import ipywidgets

    assert isinstance(explorer.widget, ipywidgets.VBox)
    assert list(explorer.concept.options) == ["(none)", "star"]
    first_strip = explorer.strip.value
    explorer.image.value = 1                                  # callback: shows the new original
    assert explorer.strip.value != first_strip and "original" in explorer.strip.value
    explorer.channels.value = "0-191"
    explorer.run.click()                                      # fires update()
    result = explorer.result
    assert result["samples"].shape == (1, 2, 3, 32, 32)
    assert result["edited"].abs().max() == 0                  # every channel ablated
    assert explorer.progress.value == explorer.progress.max == 2
    assert "classifier on the edited map" in explorer.logits.value and "<table" in explorer.logits.value
    assert "classifier on the inverted image" in explorer.inverted.value
    assert result["image_probs"].shape == (2, 8) and torch.allclose(result["image_probs"].sum(1), torch.ones(2))
    assert explorer.strip.value.count("<img") == 3
    judged = result["judge_probs"]                            # each sample is labelled with the judges' reading
    top = explorer.class_names[int(judged[1].argmax())]
    assert judged.shape == (2, 8) and f"2: judges {top} {float(judged[1].max()):.2f}" in explorer.strip.value
    assert not explorer.run.disabled


def test_explorer_steering_and_errors(explorer):
    explorer.channels.value = ""
    explorer.concept.value = "star"
    explorer.alpha.value = 2.0
    explorer.samples.value = 1
    result = explorer.update()
    assert result["logits_after"][3] > result["logits_before"][3]   # steering towards star raises its logit
    explorer.channels.value = "999"
    explorer.update()
    assert "out of range" in explorer.status.value                   # shown, not raised
    explorer.mode.value = "mean"
    explorer.channels.value = "0-3"
    explorer.concept.value = "(none)"
    out = explorer.update()
    assert torch.allclose(out["edited"][0, :4, 0, 0], explorer._means()[:4])


def test_explorer_concepts_per_layer():
    """Concepts given as a list are offered by name, only for their own layer."""
    cnn = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("val", size=16, seed=0)
    x, y = ds.images(), ds.labels()
    found = [mean_difference(extract_features(cnn, x, layer), y == 3, name="star", layer=layer) for layer in
             ("stages.2", "stages.3")]
    inverters = {layer: wb.load_inverter(f"tinyworld-cnn/{layer}") for layer in ("stages.3", "stages.2")}
    ex = Explorer(cnn, inverters, x[:2], concepts=found)
    assert list(ex.concept.options) == ["(none)", "star"]
    ex.concept.value, ex.alpha.value = "star", 1.0
    assert torch.allclose(ex.edit(extract_features(cnn, x[:1], "stages.3")),
                          wb.analysis.steering.steer(extract_features(cnn, x[:1], "stages.3"), found[1], 1.0))
    ex.layer.value = "stages.2"
    assert list(ex.concept.options) == ["(none)", "star"] and ex.concept.value == "(none)"


def test_explorer_on_the_tiny_world_in_one_line():
    ex = Explorer.tinyworld(n_images=4, n_concept_images=64)
    assert list(ex.inverters) == ["stages.3", "stages.2"] and len(ex.images) == 4
    assert "star" in ex.concept.options and ex._layer_concepts()["star"].layer == "stages.3"
    assert "wb-explorer" in ex.widget._dom_classes
