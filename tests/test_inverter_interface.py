"""The inverter contract, run over every inverter kind (FeatInv, decoder, optimisation, retrieval) at tiny size: the
shared call and its defaults, shapes, seeding, mismatches, save -> load, resizing for the classifier, the config and
the repr."""
from __future__ import annotations

import inspect
import json

import pytest
import torch

import workbench as wb
from workbench.errors import InverterMismatchError
from workbench.inverters.decoder import DecoderInverter
from workbench.inverters.featinv import FeatInv, sampler_description
from workbench.inverters.interface import Inverter, init_kwargs
from workbench.inverters.optimization import OptimizationInverter
from workbench.inverters.retrieval import RetrievalInverter

LAYER, SHAPE = "stages.3", (192, 4, 4)
KINDS = ["featinv", "decoder", "optimization", "retrieval"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return wb.DiffusionBase.from_pretrained("tinyworld-base")


def _build(kind: str, cnn, base):
    torch.manual_seed(0)
    if kind == "featinv":
        return FeatInv(base, "tinyworld-cnn", LAYER, SHAPE, hidden_channels=16)
    if kind == "decoder":
        return DecoderInverter("tinyworld-cnn", LAYER, SHAPE, image_size=32, hidden_channels=16, min_channels=8)
    if kind == "retrieval":  # images on the 8-bit grid, which its file keeps exactly
        images = (wb.TinyWorld("train", size=8, seed=0).images() * 255).round() / 255
        return RetrievalInverter.from_bank("tinyworld-cnn", LAYER, wb.extract_features(cnn, images, LAYER), images)
    return OptimizationInverter(cnn, LAYER, num_optimizer_steps=2)


@pytest.fixture(scope="module", params=KINDS)
def inverter(request, cnn, base):
    return _build(request.param, cnn, base)


@pytest.fixture(scope="module")
def features(cnn):
    return wb.extract_features(cnn, wb.TinyWorld("test", size=2, seed=0).images(), LAYER)


FAST = {"featinv": {"num_inference_steps": 2}, "decoder": {}, "optimization": {"num_optimizer_steps": 2},
        "retrieval": {}}


def _invert(inv, features, **kw):
    return inv.invert(features, progress=False, **FAST[inv.kind], **kw)


# ---------------------------------------------------------------- the shared call
def test_every_kind_is_an_inverter_with_the_shared_defaults(cnn, base):
    defaults = set()
    for kind in KINDS:
        inv = _build(kind, cnn, base)
        assert isinstance(inv, Inverter), kind
        params = inspect.signature(inv.invert).parameters
        shared = {k: (params[k].kind, params[k].default) for k in ("num_samples", "seed", "progress", "batch_size")}
        assert all(p == inspect.Parameter.KEYWORD_ONLY for p, _ in shared.values()), kind
        defaults.add(tuple(sorted(shared.items())))
        assert (inv.classifier_name, inv.layer, inv.feature_shape, inv.image_size) == ("tinyworld-cnn", LAYER, SHAPE, 32)
    assert len(defaults) == 1, defaults


def test_output_shape_and_range(inverter, features):
    out = _invert(inverter, features, num_samples=2, seed=0)
    assert out.shape == (2, 2, 3, 32, 32) and out.device.type == "cpu"
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_images(inverter, features):
    a = _invert(inverter, features, num_samples=1, seed=5)
    assert torch.equal(a, _invert(inverter, features, num_samples=1, seed=5))


def test_a_feature_shape_mismatch_is_refused(inverter):
    with pytest.raises(InverterMismatchError, match=r"stages\.3.*\(192, 4, 4\).*\(1, 128, 8, 8\)"):
        _invert(inverter, torch.zeros(1, 128, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        _invert(inverter, torch.full((1, *SHAPE), float("nan")))


def test_save_load_round_trip(inverter, features, base, tmp_path):
    inverter.save_pretrained(tmp_path / "inv", fp16=False)
    saved = json.loads((tmp_path / "inv" / "config.json").read_text())
    assert saved == inverter.config and saved["class"] == type(inverter).__name__
    back = wb.load_inverter(tmp_path / "inv", base=base)
    assert type(back) is type(inverter) and back.config == inverter.config
    for (k, a), b in zip(inverter.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(_invert(back, features, seed=1), _invert(inverter, features, seed=1))


def test_a_saved_inverter_loads_under_the_checks_of_what_it_was_built_for(inverter, base, tmp_path):
    inverter.save_pretrained(tmp_path / "inv", fp16=False)
    back = wb.load_inverter(tmp_path / "inv", base=base, classifier="tinyworld-cnn", layer=LAYER,
                            feature_shape=inverter.feature_shape, image_size=32)
    assert back.config == inverter.config
    with pytest.raises(InverterMismatchError, match="image_size"):
        wb.load_inverter(tmp_path / "inv", base=base, image_size=64)


def test_a_config_key_the_constructor_does_not_take_is_refused(inverter, base, tmp_path):
    inverter.save_pretrained(tmp_path / "inv", fp16=False)
    cfg = json.loads((tmp_path / "inv" / "config.json").read_text())
    (tmp_path / "inv" / "config.json").write_text(json.dumps({**cfg, "steps": 7}))
    with pytest.raises(InverterMismatchError, match="'steps'"):
        wb.load_inverter(tmp_path / "inv", base=base)


def test_invert_images_resizes_for_the_classifier(inverter, cnn):
    """48 px images reach the 32 px classifier at 32 px; unresized they would give 6x6 maps and be refused."""
    images = wb.TinyWorld("test", size=2, seed=1).images()
    big = torch.nn.functional.interpolate(images, size=(48, 48), mode="bilinear", align_corners=False)
    assert wb.extract_features(cnn, big, LAYER).shape[-2:] == (6, 6)
    out = inverter.invert_images(big, cnn, num_samples=1, seed=0, progress=False, **FAST[inverter.kind])
    assert out.shape == (2, 1, 3, 32, 32)


# ---------------------------------------------------------------- config and repr
def test_the_config_is_the_constructor_arguments(inverter, cnn, base):
    cfg = inverter.config
    objects = {"featinv": {"base": base}, "decoder": {}, "optimization": {"classifier": cnn},
               "retrieval": {}}[inverter.kind]
    again = type(inverter)(**init_kwargs(type(inverter), cfg, **objects))
    assert again.config == cfg
    assert cfg["classifier_name"] == "tinyworld-cnn" and cfg["layer"] == LAYER
    if inverter.kind == "featinv":
        assert cfg["hidden_channels"] == 16 and cfg["base"] == "tinyworld-base" and cfg["latent_shape"] == [4, 16, 16]
    if inverter.kind == "optimization":
        assert cfg["num_optimizer_steps"] == 2 and "classifier" not in cfg


@pytest.mark.parametrize("name", wb.list_inverters())
def test_shipped_configs_are_written_back_unchanged(name):
    path = wb.data_dir() / "inverters" / name / "config.json"
    assert json.dumps(wb.load_inverter(name).config, indent=2) + "\n" == path.read_text()


def test_repr_is_short_and_says_what_it_inverts(inverter):
    text = repr(inverter)
    assert len(text.splitlines()) <= 4 and len(text) < 400, text
    assert text.startswith(type(inverter).__name__)
    assert "'tinyworld-cnn'" in text and "'stages.3'" in text and "(192, 4, 4)" in text
    if inverter.kind == "featinv":
        assert "tinyworld-base" in text and sampler_description() in text   # the defaults, feature guidance included
        assert "feature guidance" in text
