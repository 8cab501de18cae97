"""A seed is a seed (issue 31, family 1): every door takes ints and numpy ints alike (checks.seeded_generator), the
same seed gives the same result whatever the scheduler (DDPM draws its step noise from the seeded generator, not
the global RNG), and no door advances or reseeds the caller's generators."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.checks import seeded_generator
from workbench.diffusion import miniature_base
from workbench.globalstate import kept_rngs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return miniature_base(seed=0, pixel=True)                      # random weights, 16 px, SD block types


def test_seeded_generator_takes_numpy_ints():
    for seed in (7, np.int64(7), np.uint8(7), torch.tensor(7)):
        assert torch.equal(torch.randn(3, generator=seeded_generator(seed)),
                           torch.randn(3, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm++"])
def test_the_same_seed_gives_the_same_samples_and_leaves_the_global_rng(base, scheduler):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = base.sample(2, num_inference_steps=3, scheduler=scheduler, seed=np.int64(5), progress=False)
    b = base.sample(2, num_inference_steps=3, scheduler=scheduler, seed=5, progress=False)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), before), f"{scheduler} advanced the global RNG"
    c = base.sample(2, num_inference_steps=3, scheduler=scheduler, seed=6, progress=False)
    assert not torch.equal(a, c)


def test_img2img_with_ddpm_is_seeded(base):
    x = torch.rand(2, 3, base.image_size, base.image_size, generator=torch.Generator().manual_seed(0))
    before = torch.random.get_rng_state()
    a = base.img2img(x, strength=0.6, num_inference_steps=4, scheduler="ddpm", seed=3, progress=False)
    b = base.img2img(x, strength=0.6, num_inference_steps=4, scheduler="ddpm", seed=np.int32(3), progress=False)
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), before)


def test_featinv_with_ddpm_is_seeded():
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    maps = torch.rand(1, 192, 4, 4, generator=torch.Generator().manual_seed(0))
    before = torch.random.get_rng_state()
    kw = dict(num_inference_steps=2, scheduler="ddpm", feature_guidance_scale=0, progress=False)
    a = inv.invert(maps, seed=np.int64(9), **kw)
    assert torch.equal(a, inv.invert(maps, seed=9, **kw))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_numpy_seeds_work_at_the_tiny_world_and_robustness_doors():
    assert torch.equal(wb.TinyWorld("test", size=2, seed=np.int64(3)).images(),
                       wb.TinyWorld("test", size=2, seed=3).images())
    x = wb.TinyWorld("test", size=2, seed=0).images()
    assert torch.equal(wb.robustness.corrupt(x, "gaussian_noise", 2, seed=np.int16(4)),
                       wb.robustness.corrupt(x, "gaussian_noise", 2, seed=4))


def test_kept_rngs_restores_torch_numpy_and_random():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    with kept_rngs():
        torch.manual_seed(99)
        np.random.seed(99)
        random.seed(99)
        torch.rand(5), np.random.rand(5), random.random()
    assert (torch.rand(1), np.random.rand(), random.random()) == expected
