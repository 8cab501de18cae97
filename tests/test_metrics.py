"""Metrics on hand-made cases whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench import metrics as M
from workbench.errors import WeightsUnavailableError


@pytest.fixture(scope="module")
def vit():
    return wb.load_classifier("tinyworld-vit")


@pytest.fixture(scope="module")
def images():
    return wb.TinyWorld("test", size=16, seed=0).images()


def test_identical_inputs_give_perfect_scores(cnn, vit, images):
    assert torch.allclose(M.feature_cosine(cnn, "stages.3", images, images), torch.ones(16), atol=1e-5)
    assert torch.allclose(M.cross_model_cosine(vit, images, images), torch.ones(16), atol=1e-5)
    assert torch.allclose(M.ssim(images, images), torch.ones(16), atol=1e-5)
    assert torch.isinf(M.psnr(images, images)).all()
    agree = M.topk_agreement(cnn, images, images)
    assert agree["top1"].eq(1).all() and agree["top5"].eq(1).all()
    assert M.frechet_distance(images, images, M.pooled_extractor(vit)) == pytest.approx(0.0, abs=1e-2)


def test_shuffled_images_change_topk_and_lower_cosine(cnn, images):
    labels = M.predictions(cnn, images)
    perm = torch.roll(torch.arange(16), 1)
    assert (labels[perm] != labels).any(), "the test needs images of different predicted classes"
    shuffled = images[perm]
    top1 = M.topk_agreement(cnn, images, shuffled, k=(1, 8))
    assert top1["top1"].mean() < 1.0
    assert top1["top8"].eq(1).all()        # k = number of classes: always agrees
    assert M.feature_cosine(cnn, "stages.3", images, shuffled).mean() < 0.9


def test_fd_grows_with_noise(vit, images):
    ext = M.pooled_extractor(vit)
    noisy = (images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert M.frechet_distance(images, noisy, ext) > M.frechet_distance(images, images, ext) + 1e-3


def test_psnr_of_known_error(images):
    shifted = images.clone()
    shifted[..., 0, 0, 0] = 1 - shifted[..., 0, 0, 0]                # one changed value, known MSE
    mse = ((shifted - images) ** 2).flatten(1).mean(1)
    assert torch.allclose(M.psnr(images, shifted), 10 * torch.log10(1 / mse), atol=1e-3)


def test_shape_mismatch_is_a_clear_error(cnn, images):
    with pytest.raises(ValueError, match=r"differ in shape.*recon\[:, s\]"):
        M.feature_cosine(cnn, "stages.3", images, images[:, None])
    with pytest.raises(ValueError, match="differ in shape"):
        M.topk_agreement(cnn, images, images[:8])


def test_nan_reconstructions_are_nan_not_averaged(cnn, vit, images):
    rec = images.clone()
    rec[3] = float("nan")
    cos = M.feature_cosine(cnn, "stages.3", images, rec)
    assert math.isnan(cos[3]) and torch.isfinite(cos[torch.arange(16) != 3]).all()
    assert math.isnan(M.topk_agreement(cnn, images, rec)["top1"][3])
    assert math.isnan(M.cross_model_cosine(vit, images, rec)[3]) and math.isnan(M.ssim(images, rec)[3])
    assert M.predictions(cnn, rec)[3] == -1
    with pytest.raises(ValueError, match="non-finite"):
        M.frechet_distance(images, rec, M.pooled_extractor(vit))


def test_pooled_extractor_resizes_other_sizes(vit, images):
    ext = M.pooled_extractor(vit)
    big = torch.nn.functional.interpolate(images, size=64, mode="bilinear")
    assert ext(big).shape == (16, ext.num_features)
    assert M.frechet_distance(images, big, ext) < 50


def test_inception_unavailable_is_a_clear_error(monkeypatch):
    import torchmetrics.image.fid as fid

    def unavailable(*args, **kwargs):
        raise RuntimeError("no network")
    monkeypatch.setattr(fid, "NoTrainInceptionV3", unavailable)
    with pytest.raises(WeightsUnavailableError, match="torch-fidelity.*pooled_extractor"):
        M.inception_extractor()
