"""workbench.models: loading classifiers (offline only), checkpoints, preprocessing and image files."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

import workbench as wb
from workbench.errors import ImageReadError, UnknownModelError, WeightsUnavailableError


@pytest.fixture(scope="module")
def small():
    """A small random timm classifier (ConvNeXt-atto, 10 classes)."""
    torch.manual_seed(0)
    return wb.load_classifier("convnext_atto", pretrained=False, num_classes=10)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline mode with an empty Hugging Face cache in ``tmp_path``; returns the hub cache folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    # huggingface_hub reads these at import; patch its constants too
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return cache


# ---- the Classifier convention ---------------------------------------------------------------

def test_classifier_takes_unit_range_images(small):
    assert not small.training
    assert small.input_size == (3, 224, 224)
    assert torch.allclose(small.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(small.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = small.model((x - small.mean) / small.std)
        assert torch.equal(small(x), expected)
    assert small.name == "convnext_atto" and small.num_classes == 10
    # layer names are the timm names
    assert "stages.2" in set(wb.layer_table(small, input_size=(3, 64, 64)).name)


def test_img_size_override_sets_input_size():
    clf = wb.load_classifier("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=3)
    assert clf.input_size == (3, 64, 64)
    assert clf(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="resnet50"):
        wb.load_classifier("resnet5O", pretrained=False)


# ---- weights ---------------------------------------------------------------------------------

def test_unreachable_hub_raises_quickly(offline):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        wb.load_classifier("resnet18", pretrained=True)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 30, elapsed
    assert "'resnet18'" in message and "checkpoint_path" in message and "HF_HUB_OFFLINE=1" in message


def test_prefilled_cache_works_offline(offline):
    """The second remedy: a Hugging Face cache filled elsewhere, read with HF_HUB_OFFLINE=1."""
    import timm
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    snapshot = offline / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (offline / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (offline / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(1)
    reference = timm.create_model("resnet10t", pretrained=False)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    start = time.monotonic()
    clf = wb.load_classifier("resnet10t", pretrained=True)
    assert time.monotonic() - start < 30
    for key, value in reference.state_dict().items():
        assert torch.equal(clf.model.state_dict()[key], value), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip(small, tmp_path, suffix):
    from safetensors.torch import save_file

    path = tmp_path / f"weights{suffix}"
    state = small.model.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = wb.load_classifier("convnext_atto", checkpoint_path=path, num_classes=10)
    assert isinstance(loaded, wb.Classifier) and not loaded.training
    for key, value in state.items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_checkpoint_of_a_saved_classifier(small, tmp_path):
    path = tmp_path / "clf.pth"
    torch.save({"state_dict": small.state_dict()}, path)  # keys "model.*", wrapped
    loaded = wb.load_classifier("convnext_atto", checkpoint_path=path, num_classes=10)
    assert torch.equal(loaded.model.stem[0].weight, small.model.stem[0].weight)


def test_checkpoint_errors(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        wb.load_classifier("convnext_atto", checkpoint_path=tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="garbage.safetensors"):
        wb.load_classifier("convnext_atto", checkpoint_path=garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save(small.model.state_dict(), wrong)
    with pytest.raises(WeightsUnavailableError, match="does not fit 'resnet18'"):
        wb.load_classifier("resnet18", checkpoint_path=wrong)


def test_pth_is_read_with_weights_only(tmp_path):
    """A pickle that is not plain tensors is refused, never executed."""
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": _Pickled()}, evil)
    with pytest.raises(WeightsUnavailableError, match="evil.pth"):
        wb.load_classifier("convnext_atto", checkpoint_path=evil)


class _Pickled:
    pass


# ---- images ----------------------------------------------------------------------------------

def _check(x, size):
    assert x.shape == (1, 3, *size) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_preprocess_is_not_normalised(small):
    tf = wb.preprocess(small)
    img = Image.fromarray(np.full((300, 400, 3), 255, dtype=np.uint8))
    x = tf(img)
    assert x.shape == (3, 224, 224) and torch.allclose(x, torch.ones_like(x))


def test_load_image_modes(small, tmp_path):
    size = small.input_size[1:]
    # RGBA, fully transparent red -> white
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = wb.load_image(tmp_path / "rgba.png", small)
    _check(x, size)
    assert torch.allclose(x, torch.ones_like(x))
    # RGBA, opaque red stays red
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "red.png")
    x = wb.load_image(tmp_path / "red.png", small)
    assert torch.allclose(x[0, :, 5, 5], torch.tensor([1.0, 0.0, 0.0]))
    # grayscale -> three equal channels
    Image.fromarray(np.full((30, 30), 128, dtype=np.uint8), "L").save(tmp_path / "gray.png")
    x = wb.load_image(tmp_path / "gray.png", small)
    _check(x, size)
    assert torch.allclose(x, torch.full_like(x, 128 / 255), atol=1e-4)
    # 16-bit grayscale: 32768 / 65535 ~ 0.5, not clipped to 1
    Image.fromarray(np.full((30, 30), 32768, dtype=np.uint16)).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    x = wb.load_image(tmp_path / "gray16.png", small)
    _check(x, size)
    assert torch.allclose(x, torch.full_like(x, 32768 / 65535), atol=1e-4)
    # palette, one green colour
    pal = Image.fromarray(np.zeros((30, 30), dtype=np.uint8), "P")
    pal.putpalette([0, 255, 0] * 256)
    pal.save(tmp_path / "pal.png")
    x = wb.load_image(tmp_path / "pal.png", small)
    _check(x, size)
    assert torch.allclose(x[0, :, 3, 3], torch.tensor([0.0, 1.0, 0.0]))
    # palette with a transparent index -> white
    pal.save(tmp_path / "pal_t.png", transparency=0)
    x = wb.load_image(tmp_path / "pal_t.png", small)
    assert torch.allclose(x, torch.ones_like(x))


def test_load_image_center_crops_by_shorter_side(small, tmp_path):
    img = np.zeros((100, 300, 3), dtype=np.uint8)
    img[:, :100] = 255  # left third white; the centre crop drops it
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = wb.load_image(tmp_path / "wide.png", small)
    _check(x, small.input_size[1:])
    assert float(x.max()) < 0.05


def test_load_image_errors(small, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.txt"):
        wb.load_image(text, small)
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        wb.load_image(tmp_path / "nowhere.png", small)


# ---- shipped models --------------------------------------------------------------------------

def test_shipped_models_are_plainly_resized():

    tf = wb.preprocess(wb.models.create_classifier("tinyworld-cnn"))
    assert "CenterCrop" not in repr(tf)
    assert tf(Image.fromarray(np.zeros((40, 60, 3), np.uint8))).shape == (3, 32, 32)


def test_shipped_name_loads_through_the_zoo(tmp_path, monkeypatch):

    wb.models.save_random_weights(tmp_path)
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    clf = wb.load_classifier("tinyworld-vit")
    assert isinstance(clf, wb.Classifier) and clf.name == "tinyworld-vit" and not clf.training
    assert clf.input_size == (3, 32, 32)
    with pytest.raises(ValueError, match="shipped"):
        wb.load_classifier("tinyworld-vit", checkpoint_path=tmp_path / "other.pth")
