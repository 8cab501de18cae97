"""The baseline inverters: optimisation (Mahendran & Vedaldi) and decoder (Dosovitskiy & Brox)."""
from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench.errors import InverterMismatchError
from workbench.hooks import extract_features


@pytest.fixture(scope="module")
def x():
    return wb.TinyWorld("test", size=4, seed=0).images()


def test_optimisation_lowers_its_loss_within_10_steps(cnn, x):
    opt = wb.OptimizationInverter(cnn, "stages.3", num_optimizer_steps=10)
    images, losses = opt.fit(extract_features(cnn, x[:2], "stages.3"), seed=0)
    assert len(losses) == 10 and losses[-1] < 0.8 * losses[0], losses
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_optimisation_shares_the_inverter_call_and_is_seeded(cnn, x):
    opt = wb.OptimizationInverter(cnn, "stages.3", num_optimizer_steps=2)
    assert (opt.classifier_name, opt.layer, opt.feature_shape, opt.pooling, opt.image_size) == (
        "tinyworld-cnn", "stages.3", (192, 4, 4), "none", 32)
    f = extract_features(cnn, x[:2], "stages.3")
    a = opt.invert(f, num_samples=2, seed=1, progress=False)
    assert a.shape == (2, 2, 3, 32, 32)
    assert torch.equal(a, opt.invert(f, num_samples=2, seed=1, progress=False))
    assert not torch.equal(a[:, 0], a[:, 1])           # each sample starts from its own noise
    assert not any(p.grad is not None for p in cnn.parameters())
    with pytest.raises(InverterMismatchError, match=r"\(192, 4, 4\)"):
        opt.invert(torch.zeros(1, 128, 8, 8))


def test_decoder_shapes_and_mismatch():
    dec = wb.DecoderInverter("tinyworld-vit", "blocks.5", (128, 8, 8), image_size=32)
    out = dec.invert(torch.randn(3, 128, 8, 8), num_samples=2)
    assert out.shape == (3, 2, 3, 32, 32) and torch.equal(out[:, 0], out[:, 1])
    with pytest.raises(InverterMismatchError, match="blocks.5"):
        dec.invert(torch.randn(1, 192, 4, 4))
    with pytest.raises(ValueError, match="power of 2"):
        wb.DecoderInverter("x", "y", (8, 3, 3), image_size=32)


def test_decoder_trains_for_5_steps_and_round_trips(tmp_path):
    from workbench.training import decoder as train

    args = train.parse_args(["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--steps", "5",
                             "--batch-size", "8", "--feature-loss-images", "4", "--train-images", "64",
                             "--eval-images", "4",
                             "--hidden-channels", "32", "--out", str(tmp_path / "run"), "--ship", str(tmp_path / "data"),
                             "--device", "cpu", "--save-every", "3", "--no-progress"])
    dec, card = train.main(args)
    assert card["training"]["steps"] == 5 and set(card["metrics"]) >= {"feature_cosine", "top1_agreement", "psnr"}
    shipped = tmp_path / "data" / "inverters" / "tinyworld-cnn" / "stages.3-decoder"
    assert json.loads((shipped / "config.json").read_text())["class"] == "DecoderInverter"
    assert (tmp_path / "run" / "checkpoint" / "step.json").is_file()
    back = wb.load_inverter(tmp_path / "run" / "inverter")       # fp32 copy: bit-for-bit
    f = torch.randn(2, 192, 4, 4)
    assert torch.equal(back.invert(f), dec.invert(f))
    # resume: a finished run continues to the same total without new steps
    args.resume = True
    _, card2 = train.main(args)
    assert card2["training"]["steps"] == 5


@pytest.mark.parametrize("name", ["tinyworld-cnn/stages.3-decoder", "tinyworld-vit/blocks.5-decoder"])
def test_shipped_decoders_load_and_are_small(name):
    if name not in wb.list_inverters():
        pytest.fail(f"{name} is not shipped; train it with `workbench train-decoder ... --ship data`")
    dec = wb.load_inverter(name)
    path = wb.data_dir() / "inverters" / name
    assert (path / "decoder.safetensors").stat().st_size < 2_000_000
    card = json.loads((path / "card.json").read_text())
    assert card["training"]["command"].startswith("workbench train-decoder") and "metrics" in card
    assert dec.invert(torch.zeros(1, *dec.feature_shape)).shape == (1, 1, 3, 32, 32)
