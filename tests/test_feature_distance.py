"""The guard against inverting the wrong maps: maps far from an inverter's training maps get a warning.

The CNN's ``stages.2`` and the ViT's ``blocks.0`` both give 128x8x8 maps, so a shape check cannot tell them apart;
:func:`~workbench.inverters.feature_distance.feature_distance` can.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import workbench as wb
from workbench.errors import OffDistributionWarning
from workbench.inverters.feature_distance import OFF_DISTRIBUTION_THRESHOLD, feature_distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def maps():
    x = wb.TinyWorld("test", size=16, seed=0).images()
    cnn, vit = wb.load_classifier("tinyworld-cnn"), wb.load_classifier("tinyworld-vit")
    return {"cnn": wb.extract_features(cnn, x, "stages.2"), "vit": wb.extract_features(vit, x, "blocks.0")}


FAST = dict(num_inference_steps=1, feature_guidance_scale=0, progress=False)


def test_the_vits_maps_into_the_cnns_inverter_warn(maps):
    inv = wb.load_inverter("tinyworld-cnn/stages.2")
    assert maps["vit"].shape == maps["cnn"].shape              # the shape check alone lets them through
    own, other = feature_distance(inv, maps["cnn"]), feature_distance(inv, maps["vit"])
    assert own.shape == (16,) and float(own.median()) < 1.2 < OFF_DISTRIBUTION_THRESHOLD < float(other.median())
    with pytest.warns(OffDistributionWarning, match=r"tinyworld-cnn/stages.2.*distance \d\.\d\d.*another classifier") as seen:
        inv.invert(maps["vit"][:4], **FAST)
    assert seen[0].filename == __file__                     # it points at the caller's line, not at the library


def test_own_steered_and_ablated_maps_do_not_warn(maps):
    inv = wb.load_inverter("tinyworld-cnn/stages.2")
    f = maps["cnn"]
    direction = torch.randn(f.shape[1])
    steered = f + 6 * f.std() * (direction / direction.norm()).view(1, -1, 1, 1)  # shifted everywhere
    ablated = f.clone()
    ablated[:, :64] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffDistributionWarning)
        for m in (f, steered, ablated):
            inv.invert(m[:4], **FAST)


def test_evaluate_reports_the_distance():
    inv, clf = wb.load_inverter("tinyworld-cnn/stages.3-decoder"), wb.load_classifier("tinyworld-cnn")
    table = wb.evaluate(inv, clf, num_images=8, progress=False)
    assert "feature_distance" in table and (table["feature_distance"] > 0).all()
    assert table.summary()["feature_distance"] < OFF_DISTRIBUTION_THRESHOLD


def test_an_inverter_without_statistics_has_no_distance(maps):
    opt = wb.load_inverter("optimization:tinyworld-cnn/stages.2")
    assert feature_distance(opt, maps["cnn"]) is None


def test_an_untrained_inverter_has_no_distance(maps):
    """Statistics still at their initial zeros and ones say nothing about the training maps: no distance, no warning."""
    from workbench.inverters.decoder import DecoderInverter

    fresh = DecoderInverter("tinyworld-cnn", "stages.2", (128, 8, 8))
    assert feature_distance(fresh, maps["cnn"] * 100) is None
