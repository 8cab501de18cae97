"""The evaluation harness over every shipped inverter, its CLI, and bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

import workbench as wb
from workbench.evaluation import METRICS, compare, evaluate_reconstructions


@pytest.fixture(scope="module")
def classifiers():
    return {"tinyworld-cnn": wb.load_classifier("tinyworld-cnn"), "tinyworld-vit": wb.load_classifier("tinyworld-vit")}


@pytest.fixture(scope="module")
def dataset():
    return wb.TinyWorld("test", size=32, seed=0)


def _fast(inv) -> dict:
    return {"num_inference_steps": 1, "guidance_scale": 1.0} if getattr(inv, "kind", "") == "featinv" else {}


@pytest.mark.parametrize("name", wb.list_inverters())
def test_harness_table_for_every_shipped_inverter(name, classifiers, dataset):
    inv = wb.load_inverter(name)
    clf = classifiers[inv.classifier_name]
    table = wb.evaluate(inv, clf, inv.layer, dataset, num_images=4, seed=0, num_samples=1, progress=False, **_fast(inv))
    assert table.shape[0] == 4 and set(METRICS) <= set(table.columns)
    assert table["image"].is_unique and table["finite"].all()
    s = table.summary()
    assert s["n_images"] == 4 and s["nonfinite"] == 0 and s["seconds_per_image"] > 0
    assert -1 <= s["feature_cosine"] <= 1 and math.isfinite(s["frechet_distance"])


def test_optimisation_in_the_harness_with_samples(classifiers, dataset):
    cnn = classifiers["tinyworld-cnn"]
    opt = wb.OptimizationInverter(cnn, "stages.3", num_optimizer_steps=2)
    table, x, rec = wb.evaluate(opt, cnn, "stages.3", dataset, num_images=3, num_samples=2, progress=False,
                                return_reconstructions=True)
    assert table.shape[0] == 6 and list(table["sample"]) == [0, 1] * 3
    assert x.shape == (3, 3, 32, 32) and rec.shape == (3, 2, 3, 32, 32)
    assert table.summary()["num_samples"] == 2 and table.attrs["inverter"] == "optimization tinyworld-cnn/stages.3"


def test_identity_reconstructions_are_perfect(classifiers, dataset):
    x = dataset.images()[:6]
    s = evaluate_reconstructions(classifiers["tinyworld-vit"], "blocks.5", x, x).summary()
    assert s["feature_cosine"] == pytest.approx(1, abs=1e-5) and s["top1"] == 1 and s["cross_cosine"] == pytest.approx(1, abs=1e-5)
    assert s["frechet_distance"] == pytest.approx(0, abs=1e-2)


class _NaNInverter(torch.nn.Module):
    """Returns a NaN image for the second map: the harness must count it, not average it in."""

    classifier_name, layer, feature_shape, pooling, image_size, kind = "tinyworld-cnn", "stages.3", (192, 4, 4), "none", 32, "nan"

    def invert(self, features, *, num_samples=1, seed=0, progress=False):
        out = torch.full((len(features), num_samples, 3, 32, 32), 0.5)
        out[1] = float("nan")
        return out


def test_nan_reconstructions_are_counted(classifiers, dataset):
    table = wb.evaluate(_NaNInverter(), classifiers["tinyworld-cnn"], "stages.3", dataset, num_images=4, progress=False)
    s = table.summary()
    assert s["nonfinite"] == 1 and not table["finite"].iloc[1]
    assert math.isnan(table["feature_cosine"].iloc[1]) and math.isfinite(s["feature_cosine"])
    assert math.isfinite(s["frechet_distance"])


def test_bad_input_is_a_clear_error(classifiers, dataset):
    dec = wb.DecoderInverter("tinyworld-cnn", "stages.3", (192, 4, 4))
    cnn = classifiers["tinyworld-cnn"]
    with pytest.raises(ValueError, match="num_images=33 .* dataset has 32"):
        wb.evaluate(dec, cnn, "stages.3", dataset, num_images=33)
    with pytest.raises(ValueError, match="inverts 'stages.3', not 'stages.2'"):
        wb.evaluate(dec, cnn, "stages.2", dataset, num_images=2)
    with pytest.raises(ValueError, match="built for 'tinyworld-cnn'"):
        wb.evaluate(dec, classifiers["tinyworld-vit"], "stages.3", dataset, num_images=2)
    x = dataset.images()[:2]
    with pytest.raises(ValueError, match="do not match originals"):
        evaluate_reconstructions(cnn, "stages.3", x, x[:, :, :16])


def test_compare_and_callable_module(classifiers, dataset):
    import workbench.evaluation  # binds the submodule to wb.evaluate; the call must still work

    dec = wb.DecoderInverter("tinyworld-cnn", "stages.3", (192, 4, 4))
    t = wb.evaluate(dec, classifiers["tinyworld-cnn"], "stages.3", dataset, num_images=2, progress=False)
    table = compare({"a": t, "b": t})
    assert list(table.index) == ["a", "b"] and "frechet_distance" in table


def test_cli_writes_json(tmp_path):
    from workbench.cli import main

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--inverter", "optimization:tinyworld-cnn/stages.3", "--num-images", "2",
                 "--num-inference-steps", "1", "--json", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["summary"]["n_images"] == 2 and len(data["rows"]) == 2
