"""Feature guidance at sampling time: off gives exactly the unguided images, on raises the feature cosine.

``FeatInv.invert(feature_guidance_scale=s)`` moves the predicted clean latents down the gradient of one minus the
feature cosine at every denoising step (:func:`workbench.diffusion.gradient_guide`).
"""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.diffusion import denoise, gradient_guide
from workbench.inverters.featinv import sampler_description

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn_case():
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    clf = wb.load_classifier("tinyworld-cnn")
    x = wb.TinyWorld("test", size=4, seed=0).images()
    return inv, clf, x, wb.extract_features(clf, x, "stages.3")


def test_scale_zero_gives_exactly_the_unguided_images(cnn_case):
    inv, clf, _, feats = cnn_case
    kw = dict(num_samples=2, num_inference_steps=3, seed=5, batch_size=3, progress=False)
    off = inv.invert(feats[:2], feature_guidance_scale=0.0, classifier=clf, **kw)
    unguided = inv.invert(feats[:2], feature_guidance_scale=0, **kw)   # no classifier needed when off
    assert torch.equal(off, unguided)
    on = inv.invert(feats[:2], feature_guidance_scale=0.1, classifier=clf, **kw)
    assert not torch.equal(on, off)


def test_guidance_raises_the_feature_cosine(cnn_case):
    inv, clf, x, feats = cnn_case
    kw = dict(num_inference_steps=4, seed=0, progress=False)
    off = inv.invert(feats, feature_guidance_scale=0.0, **kw)[:, 0]
    on = inv.invert(feats, feature_guidance_scale=0.05, feature_guidance_steps=4, **kw)[:, 0]  # classifier by name
    cos_off = wb.metrics.feature_cosine(clf, "stages.3", x, off)
    cos_on = wb.metrics.feature_cosine(clf, "stages.3", x, on)
    assert cos_on.mean() > cos_off.mean() + 0.01, (cos_off, cos_on)


def test_invert_images_guides_with_the_given_classifier(cnn_case):
    inv, clf, x, feats = cnn_case
    kw = dict(num_inference_steps=2, seed=1, progress=False, feature_guidance_scale=0.1)
    assert torch.equal(inv.invert_images(x[:2], clf, **kw), inv.invert(feats[:2], classifier=clf, **kw))


def test_classifier_by_name_loads_once_for_invert_images_and_guidance(monkeypatch):
    import workbench.models

    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    x = wb.TinyWorld("test", size=2, seed=0).images()
    loads = []
    real = workbench.models.load_classifier
    monkeypatch.setattr(workbench.models, "load_classifier", lambda *a, **k: loads.append(a) or real(*a, **k))
    kw = dict(num_inference_steps=2, seed=1, progress=False)
    first = inv.invert_images(x, **kw)
    assert torch.equal(inv.invert_images(x, **kw), first)       # same classifier, same seed: same images
    inv.invert(wb.extract_features(real("tinyworld-cnn"), x, "stages.3"), **kw)  # guidance reuses it
    assert loads == [("tinyworld-cnn",)]
    assert not any("classifier" in k for k in inv.state_dict())  # the cache is not part of the inverter's weights


def test_bad_arguments_are_refused(cnn_case):
    inv, _, _, feats = cnn_case
    with pytest.raises(ValueError, match="feature_guidance_scale"):
        inv.invert(feats[:1], feature_guidance_scale=-0.1, progress=False)
    with pytest.raises(ValueError, match="feature_guidance_steps"):
        inv.invert(feats[:1], feature_guidance_scale=0.1, feature_guidance_steps=0, progress=False)


def test_guidance_acts_only_at_the_last_steps(cnn_case):
    """Guiding the last k of n steps: the first n - k steps are those of the unguided loop."""
    inv, clf, _, feats = cnn_case
    kw = dict(num_inference_steps=3, seed=2, progress=False, feature_guidance_scale=0.1, classifier=clf)
    last, every = inv.invert(feats[:2], feature_guidance_steps=1, **kw), inv.invert(feats[:2], feature_guidance_steps=3, **kw)
    assert not torch.equal(last, every)
    assert torch.equal(every, inv.invert(feats[:2], feature_guidance_steps=10, **kw))


def test_guidance_never_acts_at_the_final_step(cnn_case, monkeypatch):
    """No gradient-made change is the last thing done to an image (issue 26): the guided timesteps are the k before
    the final one, and with as many guided steps as steps, all but the final one."""
    inv, clf, _, feats = cnn_case
    seen = []
    original = type(inv)._feature_guide

    def spy(self, classifier, target, scheduler, scale, timesteps):
        seen.append((scheduler.timesteps.tolist(), timesteps.tolist()))
        return original(self, classifier, target, scheduler, scale, timesteps)

    monkeypatch.setattr(type(inv), "_feature_guide", spy)
    for k in (1, 2, 10):
        inv.invert(feats[:1], num_inference_steps=3, seed=0, progress=False, feature_guidance_scale=0.1,
                   feature_guidance_steps=k, classifier=clf)
    (all_t, one), (_, two), (_, many) = seen
    assert one == all_t[-2:-1] and two == all_t[:2] and many == all_t[:-1]
    assert all(all_t[-1] not in guided for _, guided in seen)


def test_gradient_guide_skips_other_timesteps():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(4)
    guide = gradient_guide(lambda x0: x0.pow(2).flatten(1).sum(1), sched, 0.5, timesteps=sched.timesteps[-1:])
    z, pred = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    assert guide(z, sched.timesteps[0], pred) is pred
    assert not torch.equal(guide(z, sched.timesteps[-1], pred), pred)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_gradient_guide_moves_the_clean_latents_by_scale_rms(prediction_type):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    sched.set_timesteps(4)
    t = sched.timesteps[1]
    a = sched.alphas_cumprod[t]
    g = torch.Generator().manual_seed(0)
    z, pred, target = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))

    def x0_of(p):
        return (z - (1 - a).sqrt() * p) / a.sqrt() if prediction_type == "epsilon" else a.sqrt() * z - (1 - a).sqrt() * p

    guide = gradient_guide(lambda x0: (x0 - target).pow(2).flatten(1).sum(1), sched, 0.25)
    moved = x0_of(guide(z, t, pred)) - x0_of(pred)
    # the step is along -(x0 - target), 0.25 RMS per item
    assert torch.allclose(moved.flatten(1).pow(2).mean(1).sqrt(), torch.full((2,), 0.25), atol=1e-4)
    assert torch.allclose(torch.nn.functional.cosine_similarity(moved.flatten(1), (target - x0_of(pred)).flatten(1)),
                          torch.ones(2), atol=1e-4)


def test_denoise_applies_the_guide_at_every_step():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(3)
    seen = []

    def guide(latents, t, prediction):
        seen.append(int(t))
        return prediction

    z = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = denoise(lambda x, t: torch.zeros_like(x), z, sched, guide=guide)
    sched.set_timesteps(3)
    assert seen == sched.timesteps.tolist() and torch.equal(out, denoise(lambda x, t: torch.zeros_like(x), z, sched))


def test_sampler_description_names_feature_guidance_only_when_on():
    assert sampler_description().startswith("ddim 5 steps, guidance 3.0 (features)")
    assert sampler_description(num_inference_steps=8, guidance_scale=3.0, scheduler="ddim",
                               feature_guidance_scale=0) == "ddim 8 steps, guidance 3.0 (features)"
    assert sampler_description(num_inference_steps=8, guidance_scale=3.0, scheduler="ddim", feature_guidance_scale=0.1,
                               feature_guidance_steps=8) == (
        "ddim 8 steps, guidance 3.0 (features), feature guidance 0.1 at every step but the last")
    assert sampler_description(num_inference_steps=8, guidance_scale=3.0, scheduler="ddim", feature_guidance_scale=0.05,
                               feature_guidance_steps=2) == (
        "ddim 8 steps, guidance 3.0 (features), feature guidance 0.05 at the 2 steps before the last")


def test_pooled_inverter_is_guided_by_spatial_means_only():
    """Two targets with the same spatial means guide the pooled ablation to the same images."""
    inv = wb.load_inverter("tinyworld-cnn/stages.3-pooled")
    clf = wb.load_classifier("tinyworld-cnn")
    feats = wb.extract_features(clf, wb.TinyWorld("test", size=1, seed=0).images(), "stages.3")
    flipped = feats.flip(-1)                                             # other layout, same channel means
    guide = dict(num_inference_steps=2, seed=0, progress=False, feature_guidance_scale=0.1, feature_guidance_steps=1,
                 classifier=clf)
    # the condition of the pooled inverter ignores the layout, and so must the guidance
    assert torch.allclose(inv.invert(feats, **guide), inv.invert(flipped, **guide), atol=1e-5)


def test_guided_sampling_records_no_graph(cnn_case):
    """Only the guidance's own backward pass takes gradients: the images carry no graph and grad mode is restored."""
    inv, clf, _, feats = cnn_case
    before = torch.is_grad_enabled()
    out = inv.invert(feats[:2], num_inference_steps=2, feature_guidance_scale=0.1, feature_guidance_steps=1,
                     classifier=clf, batch_size=1, progress=False)
    assert not out.requires_grad and out.grad_fn is None and torch.is_grad_enabled() == before
