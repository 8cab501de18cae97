"""FeatInv contracts: the conditioning module, sampling, persistence, mismatches, and the real-scale
(miniSD-shaped) path on a miniature base with random weights, all offline on CPU."""
from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench.diffusion import DiffusionBase
from workbench.errors import WeightsUnavailableError
from workbench.errors import InverterMismatchError
from workbench.inverters.featinv import FeatInv, FeatureConditioning, invariance_map

from helpers import make_condition_matter, miniature_base


@pytest.fixture(scope="module")
def mini():
    return miniature_base()


@pytest.fixture(scope="module")
def resnet():
    return wb.load_classifier("resnet18", pretrained=False, num_classes=10)


# ---------------------------------------------------------------- FeatureConditioning
def test_conditioning_starts_at_zero_and_has_the_controlnet_shape():
    cond = FeatureConditioning(32, 48, (16, 16))
    out = cond(torch.randn(2, 32, 4, 4))
    assert out.shape == (2, 48, 16, 16)
    assert torch.count_nonzero(out) == 0


def test_pooled_conditioning_is_constant_over_space():
    cond = FeatureConditioning(8, 16, (16, 16), pooling="mean")
    torch.nn.init.normal_(cond.zero_out.weight)
    x = torch.randn(1, 8, 4, 4)
    out = cond(x)
    # interior pixels see the same input everywhere (three 3x3 convs: borders differ through zero padding)
    inner = out[..., 3:-3, 3:-3]
    assert torch.allclose(inner, inner[..., :1, :1].expand_as(inner), atol=1e-5)
    # and moving the content around does not change it
    assert torch.allclose(cond(x.flip(-1)), out, atol=1e-5)


def test_conditioning_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="pooling"):
        FeatureConditioning(8, 16, (8, 8), pooling="max")


# ---------------------------------------------------------------- the miniature real-scale path
def test_miniature_base_encodes_and_decodes(mini):
    z = mini.encode(torch.rand(2, 3, 64, 64))
    assert z.shape == (2, *mini.latent_shape) == (2, 4, 8, 8)
    x = mini.decode(z)
    assert x.shape == (2, 3, 64, 64) and x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("pixel", [False, True])
def test_training_steps_move_only_the_controlnet(pixel, resnet):
    base = miniature_base(pixel=pixel)
    images = torch.rand(2, 3, base.image_size, base.image_size)
    feats = wb.metrics.extract_features(resnet, images, "layer3")
    inv = FeatInv(base, "resnet18", "layer3", feats.shape[1:])
    inv.conditioning.set_feature_stats(feats)
    unet_before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    cnet_before = [p.detach().clone() for p in inv.controlnet.parameters()]
    opt = torch.optim.AdamW(inv.controlnet.parameters(), lr=1e-3)
    sched = base.make_scheduler("ddpm")
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        loss = inv.training_loss(base.encode(images), feats, noise_scheduler=sched, generator=g)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(cnet_before, inv.controlnet.parameters()))
    assert all(torch.equal(v, base.unet.state_dict()[k]) for k, v in unet_before.items()), "the base must stay frozen"
    assert all(not p.requires_grad for p in base.unet.parameters())


def test_miniature_sampling_save_load_roundtrip(mini, resnet, tmp_path):
    feats = wb.metrics.extract_features(resnet, torch.rand(2, 3, 64, 64), "layer4")
    inv = FeatInv(mini, "resnet18", "layer4", feats.shape[1:])
    make_condition_matter(inv)
    out = inv.invert(feats, num_samples=1, num_inference_steps=2, progress=False, feature_guidance_scale=0)
    assert out.shape == (2, 1, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 1
    inv.save_pretrained(tmp_path / "inv", fp16=False)
    cfg = json.loads((tmp_path / "inv" / "config.json").read_text())
    assert cfg["classifier_name"] == "resnet18" and cfg["layer"] == "layer4" and cfg["base"] == "miniature-sd"
    assert not any(p.name.startswith("unet") for p in (tmp_path / "inv").iterdir()), "the base is referenced, not copied"
    again = FeatInv.from_pretrained(tmp_path / "inv", base=mini)
    for (k, a), b in zip(inv.controlnet.state_dict().items(), again.controlnet.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(again.invert(feats, num_samples=1, num_inference_steps=2, progress=False,
                                   feature_guidance_scale=0), out)


def test_base_save_load_roundtrip(mini, tmp_path):
    mini.save_pretrained(tmp_path / "base", fp16=False)
    again = DiffusionBase.from_pretrained(tmp_path / "base")
    assert again.latent_shape == mini.latent_shape and again.image_size == 64
    assert torch.equal(again.prompt_embeds, mini.prompt_embeds)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(again.encode(x), mini.encode(x), atol=1e-6)

    import shutil

    shutil.rmtree(tmp_path / "base" / "vae")  # a latent base without its VAE: refused, not read as a pixel base
    with pytest.raises(WeightsUnavailableError, match=r"vae is missing.*4-channel latents"):
        DiffusionBase.from_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="takes 4 input channels, but the base denoises 3"):
        DiffusionBase(mini.unet, mini.scheduler_config, mini.prompt_embeds, mini.null_embeds, None, image_size=64)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_base_img2img_runs_from_reconstruction_to_fresh_sample(mini, scheduler):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        rec = mini.decode(mini.encode(x))
    none = mini.img2img(x, strength=0.0, num_inference_steps=4, scheduler=scheduler, progress=False)
    assert torch.allclose(none, rec, atol=1e-6)  # strength 0: no noise, no UNet pass
    half = mini.img2img(x, strength=0.5, num_inference_steps=4, scheduler=scheduler, seed=1, progress=False)
    assert half.shape == x.shape and torch.isfinite(half).all() and (half - rec).abs().max() > 1e-3
    again = mini.img2img(x, strength=0.5, num_inference_steps=4, scheduler=scheduler, seed=1, progress=False,
                         batch_size=1)
    assert torch.allclose(half[:1], again[:1], atol=1e-5)  # seeded; the first batch sees the same noise


def test_base_img2img_rejects_bad_input(mini):
    with pytest.raises(ValueError, match="strength=1.5"):
        mini.img2img(torch.rand(1, 3, 64, 64), strength=1.5, progress=False)
    with pytest.raises(ValueError, match=r"shape \(1, 3, 32, 32\).*\[B, 3, 64, 64\]"):
        mini.img2img(torch.rand(1, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        mini.img2img(torch.rand(1, 3, 64, 64), num_inference_steps=0, progress=False)


def test_base_sample_guidance_contrasts_prompt_and_null():
    base = miniature_base(pixel=True)
    plain = base.sample(2, num_inference_steps=2, scheduler="ddim", seed=0, progress=False)
    assert plain.shape == (2, 3, 16, 16) and torch.isfinite(plain).all()
    guided = base.sample(2, num_inference_steps=2, scheduler="ddim", seed=0, guidance_scale=3.0, progress=False)
    assert (guided - plain).abs().max() > 1e-4  # the null prompt differs, so guidance moves the samples
    base.null_embeds.copy_(base.prompt_embeds)  # with null == prompt, guidance is the identity
    same = base.sample(2, num_inference_steps=2, scheduler="ddim", seed=0, guidance_scale=3.0, progress=False)
    assert torch.allclose(same, plain, atol=1e-5)
    with pytest.raises(ValueError, match="guidance_scale=0.5"):
        base.sample(1, num_inference_steps=2, guidance_scale=0.5, progress=False)
    with pytest.raises(ValueError, match="num_images=0"):
        base.sample(0, num_inference_steps=2, progress=False)


def test_prompt_embedding_is_computed_once_from_a_clip_text_encoder(mini, tmp_path):
    transformers = pytest.importorskip("transformers")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    mini.save_pretrained(tmp_path / "sd", fp16=False)
    (tmp_path / "sd" / "prompt_embeds.safetensors").unlink()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "photo</w>": 3, "!": 4}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=8)
    tok.save_pretrained(tmp_path / "sd" / "tokenizer")
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=5, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=8))
    enc.save_pretrained(tmp_path / "sd" / "text_encoder")
    base = DiffusionBase.from_pretrained(tmp_path / "sd", prompt="a photo")
    assert base.prompt_embeds.shape == (1, 8, 32)
    assert not torch.equal(base.prompt_embeds, base.null_embeds)


def test_hub_failure_names_the_local_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="local folder") as e:
        DiffusionBase.from_pretrained("lambdalabs/miniSD-diffusers")
    assert "HF_HUB_OFFLINE=1" in str(e.value)


# ---------------------------------------------------------------- sampling contracts on the miniature
@pytest.fixture(scope="module")
def mini_inv(mini, resnet):
    feats = wb.metrics.extract_features(resnet, torch.rand(3, 3, 64, 64), "layer4")
    inv = make_condition_matter(FeatInv(mini, "resnet18", "layer4", feats.shape[1:]))
    return inv, feats


def test_same_seed_same_images_whatever_the_batch_size(mini_inv):
    inv, feats = mini_inv
    a = inv.invert(feats, num_samples=2, num_inference_steps=2, seed=3, progress=False, feature_guidance_scale=0, batch_size=64)
    b = inv.invert(feats, num_samples=2, num_inference_steps=2, seed=3, progress=False, feature_guidance_scale=0, batch_size=2)
    c = inv.invert(feats, num_samples=2, num_inference_steps=2, seed=4, progress=False, feature_guidance_scale=0)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
@pytest.mark.parametrize("mode", ["features", "prompt"])
def test_schedulers_and_guidance_modes(mini_inv, scheduler, mode):
    inv, feats = mini_inv
    out = inv.invert(feats[:1], num_samples=1, num_inference_steps=2, scheduler=scheduler, guidance_mode=mode,
                     feature_guidance_scale=0,
                     progress=False)
    assert out.shape == (1, 1, 3, 64, 64) and torch.isfinite(out).all()


def test_guidance_modes_differ(mini_inv):
    inv, feats = mini_inv
    kw = dict(num_samples=1, num_inference_steps=2, guidance_scale=3.0, progress=False, feature_guidance_scale=0)
    a = inv.invert(feats[:1], guidance_mode="features", **kw)
    b = inv.invert(feats[:1], guidance_mode="prompt", **kw)
    assert not torch.allclose(a, b)


def test_wrong_features_are_refused(mini_inv):
    inv, feats = mini_inv
    with pytest.raises(InverterMismatchError, match="layer4"):
        inv.invert(torch.randn(1, 7, 2, 2), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        inv.invert(torch.full_like(feats[:1], float("nan")), progress=False)
    with pytest.raises(ValueError, match="guidance_mode"):
        inv.invert(feats[:1], guidance_mode="both", progress=False)


def test_invariance_map():
    s = torch.rand(2, 3, 3, 8, 8)
    m = invariance_map(s)
    assert m.shape == (2, 1, 8, 8) and (m >= 0).all()
    assert invariance_map(s[:, :1].expand(-1, 3, -1, -1, -1)).abs().max() == 0
    with pytest.raises(ValueError, match="S >= 2"):
        invariance_map(s[:, :1])


# ---------------------------------------------------------------- shipped inverters
SHIPPED = ["tinyworld-cnn/stages.3", "tinyworld-cnn/stages.2", "tinyworld-cnn/stages.3-pooled",
           "tinyworld-vit/blocks.5", "tinyworld-vit/blocks.2"]


def test_shipped_inverters_are_listed_and_load_with_their_config():
    names = wb.list_inverters()
    for name in SHIPPED:
        assert name in names
    inv = wb.load_inverter("tinyworld-vit/blocks.5")
    assert (inv.classifier_name, inv.layer, inv.feature_shape, inv.pooling, inv.image_size) == (
        "tinyworld-vit", "blocks.5", (128, 8, 8), "none", 32)
    assert wb.load_inverter("tinyworld-cnn/stages.3-pooled").pooling == "mean"


def test_loading_refuses_a_mismatch():
    with pytest.raises(InverterMismatchError, match="classifier_name"):
        wb.load_inverter("tinyworld-cnn/stages.3", classifier="tinyworld-vit")
    with pytest.raises(InverterMismatchError, match="feature_shape"):
        wb.load_inverter("tinyworld-cnn/stages.3", feature_shape=(128, 8, 8))
    with pytest.raises(WeightsUnavailableError, match="tinyworld-cnn/stages.3"):
        wb.load_inverter("tinyworld-cnn/stage3")
    vit_feats = torch.randn(1, 128, 8, 8)
    with pytest.raises(InverterMismatchError, match="tinyworld-cnn"):
        wb.load_inverter("tinyworld-cnn/stages.3").invert(vit_feats, progress=False)


@pytest.mark.parametrize("name", ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"])
def test_shipped_last_layer_inverters_match_features(name):
    """On 24 fresh test images, one sample each: the reconstruction's features are close to the original's."""
    inv = wb.load_inverter(name)
    clf = wb.load_classifier(inv.classifier_name)
    x = wb.TinyWorld("test", size=24, seed=7).images()
    rec = inv.invert_images(x, clf, num_samples=1, progress=False)[:, 0]
    cos = wb.metrics.feature_cosine(clf, inv.layer, x, rec)
    shuffled = wb.metrics.feature_cosine(clf, inv.layer, x, x.roll(1, 0))
    assert cos.mean() > 0.8, cos.mean()
    assert cos.mean() > shuffled.mean() + 0.3
    card = json.loads((wb.data_dir() / "inverters" / name / "card.json").read_text())
    assert card["metrics"]["test_images"] >= 256


# ---------------------------------------------------------------- what training recorded
def test_inverter_records_the_classifier_input_size_and_prompt(tmp_path, monkeypatch):
    """An inverter trained with the classifier at another size (the official recipe: 288 px) or another prompt
    records both; loading by name applies them, and a classifier at another size is refused, not run."""
    base = DiffusionBase.from_pretrained("tinyworld-base")
    clf = wb.load_classifier("tinyworld-cnn")
    clf.input_size = (3, 64, 64)
    images = wb.TinyWorld("test", size=2, seed=0).images()
    feats = wb.extract_features(clf, wb.models.classifier_view(images, clf), "stages.3")
    assert feats.shape[1:] == (192, 8, 8)
    inv = FeatInv(base, "tinyworld-cnn", "stages.3", feats.shape[1:], classifier_input_size=(3, 64, 64),
                  prompt="a shape")
    inv.save_pretrained(tmp_path / "inv", fp16=False)
    cfg = json.loads((tmp_path / "inv" / "config.json").read_text())
    assert cfg["classifier_input_size"] == [3, 64, 64] and cfg["prompt"] == "a shape"
    seen = {}
    real = DiffusionBase.from_pretrained.__func__

    def recording(cls, name, **kw):
        seen.update(kw)
        return real(cls, name, **kw)

    monkeypatch.setattr(DiffusionBase, "from_pretrained", classmethod(recording))
    again = FeatInv.from_pretrained(tmp_path / "inv")
    assert seen["prompt"] == "a shape", "the base is loaded with the training prompt"
    assert again.classifier_input_size == (3, 64, 64) and "classifier_input_size: (3, 64, 64)" in repr(again)
    # loaded by name at the recorded size: the maps fit, with and without feature guidance
    assert again.invert_images(images, num_inference_steps=2, progress=False).shape == (2, 1, 3, 32, 32)
    assert again.invert(feats, num_inference_steps=2, progress=False).shape == (2, 1, 3, 32, 32)
    # a classifier at its default 32 px would give 4x4 maps: refused with the fix
    with pytest.raises(InverterMismatchError, match=r"input_size = \(3, 64, 64\)"):
        again.invert(feats, num_inference_steps=2, progress=False, classifier=wb.load_classifier("tinyworld-cnn"))
    with pytest.raises(InverterMismatchError, match="64"):
        again.invert_images(images, classifier=wb.load_classifier("tinyworld-cnn"), progress=False)
