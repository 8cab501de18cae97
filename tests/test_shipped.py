"""The shipped tiny-world artefacts: what their cards claim holds on fresh data, and broken files are named."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import workbench as wb
from workbench.weights import read_card
from workbench.errors import WeightsUnavailableError

CARD_FIELDS = {"architecture", "arch_args", "training", "metrics"}


@pytest.mark.parametrize("name", ["tinyworld-cnn", "tinyworld-vit"])
def test_classifier_accuracy_on_a_fresh_test_split(name):
    clf = wb.load_classifier(name)
    ds = wb.TinyWorld("test", size=512, seed=11)   # not the card's split (seed 0)
    with torch.no_grad():
        acc = (clf(ds.images()).argmax(1) == ds.labels()).float().mean().item()
    card = read_card(name)
    assert CARD_FIELDS <= set(card) and {"command", "seed", "steps", "wall_time_s"} <= set(card["training"])
    assert acc >= 0.97, acc  # the tiny world's target for both classifiers
    assert abs(acc - card["metrics"]["test_accuracy"]) < 0.03, (acc, card["metrics"])


def test_shipped_maps_stay_spatial():
    cnn, vit = wb.load_classifier("tinyworld-cnn"), wb.load_classifier("tinyworld-vit")
    x = torch.rand(1, 3, 32, 32)
    _, c = wb.run_with_cache(cnn, x, "stages.3")
    assert c["stages.3"].shape[-2:] == (4, 4)
    _, v = wb.run_with_cache(vit, x, [f"blocks.{i}" for i in range(6)])
    assert all(m.shape[-2:] == (8, 8) for m in v.values()) and v.prefix["blocks.5"].shape[1] == 1


def test_vae_reconstructs_held_out_images():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    base = wb.DiffusionBase.from_pretrained("tinyworld-base")
    x = wb.TinyWorld("val", size=64, seed=5).images()
    with torch.no_grad():
        psnr = peak_signal_noise_ratio(base.decode(base.encode(x)), x, data_range=1.0).item()
    assert psnr >= 28, psnr
    card = json.loads((wb.data_dir() / "tinyworld-base" / "card.json").read_text())
    assert card["vae"]["metrics"]["val_psnr_db"] >= 28
    assert {"confident_fraction", "fd_samples_vs_real", "fd_real_vs_real"} <= set(card["metrics"])


def test_base_sample_quality_matches_its_card():
    """The card's 'CNN confident on X% of unconditional samples' holds on fresh samples (another seed, fewer)."""
    from workbench.card_metrics import base_card_metrics

    base = wb.DiffusionBase.from_pretrained("tinyworld-base")
    card = json.loads((wb.data_dir() / "tinyworld-base" / "card.json").read_text())["metrics"]
    m = base_card_metrics(base, wb.load_classifier("tinyworld-cnn"), wb.load_classifier("tinyworld-vit"),
                          num_images=128, seed=7)
    assert abs(m["confident_fraction"] - card["confident_fraction"]) < 0.12, (m, card)
    assert m["fd_samples_vs_real"] > m["fd_real_vs_real"]  # samples are told apart from real images, as the card says


def test_base_img2img_keeps_the_class_at_low_strength_only():
    """SDEdit with the shipped base: lightly noised images keep their class; at strength 1 the base must invent
    the shape (a better base would keep more at 0.9, so that is not asserted here; notebook 02 plots it)."""
    base = wb.DiffusionBase.from_pretrained("tinyworld-base")
    cnn = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("test", size=64, seed=5)
    x, y = ds.images(), ds.labels()
    kept = {}
    for strength in (0.3, 1.0):
        out = base.img2img(x, strength=strength, num_inference_steps=20, seed=0, progress=False)
        with torch.no_grad():
            kept[strength] = (cnn(out).argmax(1) == y).float().mean().item()
    assert kept[0.3] >= 0.85 and kept[1.0] < kept[0.3] - 0.4, kept


def test_data_stays_small_and_fp16():
    from safetensors import safe_open

    files = [p for p in wb.data_dir().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50 * 2**20          # the project allows 60 MB; we keep 10 spare
    for p in files:
        if p.suffix == ".safetensors" and p.name != "prompt_embeds.safetensors":
            with safe_open(str(p), "pt") as f:
                dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
            assert dtypes <= {"F16", "I64"}, (p, dtypes)


@pytest.fixture()
def data_copy(tmp_path, monkeypatch):
    for name in ("tinyworld-cnn", "tinyworld-vit"):
        for suffix in (".json", ".safetensors"):
            shutil.copy(wb.data_dir() / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    return tmp_path


def test_missing_weights_name_the_file_and_make_weights(data_copy):
    (data_copy / "tinyworld-cnn.safetensors").unlink()
    with pytest.raises(WeightsUnavailableError, match="make weights") as e:
        wb.load_classifier("tinyworld-cnn")
    assert "tinyworld-cnn.safetensors" in str(e.value)


def test_corrupted_weights_name_the_file(data_copy):
    (data_copy / "tinyworld-cnn.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsUnavailableError, match="corrupted") as e:
        wb.load_classifier("tinyworld-cnn")
    assert "tinyworld-cnn.safetensors" in str(e.value) and "make weights" in str(e.value)


def test_card_that_does_not_match_its_weights_is_refused(data_copy):
    card = json.loads((data_copy / "tinyworld-vit.json").read_text())
    card["arch_args"]["depth"] = 4
    (data_copy / "tinyworld-vit.json").write_text(json.dumps(card))
    with pytest.raises(WeightsUnavailableError, match="does not match"):
        wb.load_classifier("tinyworld-vit")


def test_missing_base_names_make_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="make weights"):
        wb.DiffusionBase.from_pretrained("tinyworld-base")
