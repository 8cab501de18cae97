"""The one denoising loop (``workbench.diffusion.denoise``) gives the images of the loops it replaced, bit for bit.

The references below are the loops as they stood before :func:`~workbench.diffusion.denoise` existed
(``DiffusionBase.sample``, ``DiffusionBase.img2img`` with ``_denoise``, and ``FeatInv.invert``), pasted
unchanged but for their argument names, and run on the shipped tiny base and inverter.
"""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.diffusion import denoise
from workbench.inverters.featinv import _embedded_condition

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inv():
    return wb.load_inverter("tinyworld-cnn/stages.3")


# ---------------------------------------------------------------- the old loops, as references
def old_denoise(base, z, sched, timesteps, guidance_scale):
    b = len(z)
    guided = guidance_scale != 1.0
    emb = torch.cat([base.embeds(b, null=True), base.embeds(b)]) if guided else base.embeds(b)
    for t in timesteps:
        zin = sched.scale_model_input(z, t)
        out = base.unet(torch.cat([zin, zin]) if guided else zin, t, encoder_hidden_states=emb).sample
        if guided:
            out_null, out_prompt = out.chunk(2)
            out = out_null + guidance_scale * (out_prompt - out_null)
        z = sched.step(out, t, z).prev_sample
    return z


@torch.no_grad()
def old_sample(base, n, *, steps, scheduler, seed=0, batch_size=256, guidance_scale=1.0):
    device = base.prompt_embeds.device
    g = torch.Generator("cpu").manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        sched = base.make_scheduler(scheduler)
        sched.set_timesteps(steps, device=device)
        z = torch.randn((b, *base.latent_shape), generator=g).to(device) * sched.init_noise_sigma
        out.append(base.decode(old_denoise(base, z, sched, sched.timesteps, guidance_scale)).cpu())
    return torch.cat(out)


@torch.no_grad()
def old_img2img(base, images, *, strength, steps, scheduler, seed=0, batch_size=256, guidance_scale=1.0):
    device = base.prompt_embeds.device
    g = torch.Generator("cpu").manual_seed(seed)
    out = []
    for start in range(0, len(images), batch_size):
        z0 = base.encode(images[start:start + batch_size].to(device))
        noise = torch.randn(z0.shape, generator=g).to(device)
        sched = base.make_scheduler(scheduler)
        sched.set_timesteps(steps, device=device)
        n_run = int(steps * strength)
        timesteps = sched.timesteps[len(sched.timesteps) - n_run:] if n_run else sched.timesteps[:0]
        if n_run:
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(len(sched.timesteps) - n_run)
            z0 = sched.add_noise(z0, noise, timesteps[:1].repeat(len(z0)))
        out.append(base.decode(old_denoise(base, z0, sched, timesteps, guidance_scale)).cpu())
    return torch.cat(out)


@torch.no_grad()
def old_invert(self, features, *, num_samples, steps, guidance, scheduler, seed, guidance_mode, batch_size):
    B, S = features.shape[0], num_samples
    device = self.base.prompt_embeds.device
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((B * S, *self.base.latent_shape), generator=g)
    maps = features.detach().float()
    out = torch.empty(B * S, 3, self.image_size, self.image_size)
    with torch.inference_mode(), _embedded_condition(self.controlnet) as embed:
        for s in range(0, B * S, batch_size):
            e = min(s + batch_size, B * S)
            n = e - s
            first, last = s // S, (e - 1) // S
            cond = embed(maps[first:last + 1].to(device)).repeat_interleave(S, 0)[s - first * S:e - first * S]
            if guidance_mode == "features":
                uncond = embed(torch.zeros_like(maps[:1], device=device)).expand_as(cond)
            else:
                uncond = cond
            cond_emb, null_emb = self.base.embeds(n), self.base.embeds(n, null=True)
            if guidance != 1.0:
                both_cond, both_emb = torch.cat([cond, uncond]), torch.cat([cond_emb, null_emb])
            sched = self.base.make_scheduler(scheduler)
            sched.set_timesteps(steps, device=device)
            z = noise[s:e].to(device) * sched.init_noise_sigma
            for t in sched.timesteps:
                zin = sched.scale_model_input(z, t)
                if guidance == 1.0:
                    eps = self.predict_noise(zin, t, cond, cond_emb)
                else:
                    eps_c, eps_u = self.predict_noise(torch.cat([zin, zin]), t, both_cond, both_emb).chunk(2)
                    eps = eps_u + guidance * (eps_c - eps_u)
                z = sched.step(eps, t, z).prev_sample
            out[s:e] = self.base.decode(z).float().cpu()
    return out.view(B, S, 3, self.image_size, self.image_size)


# ---------------------------------------------------------------- new against old, bit for bit
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_sample_is_bit_identical_to_the_old_loop(inv, scheduler, guidance_scale):
    kw = dict(scheduler=scheduler, seed=1, batch_size=2, guidance_scale=guidance_scale)
    new = inv.base.sample(3, num_inference_steps=3, progress=False, **kw)
    assert torch.equal(new, old_sample(inv.base, 3, steps=3, **kw))


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_is_bit_identical_to_the_old_loop(inv, strength, guidance_scale):
    images = wb.TinyWorld("test", size=3, seed=0).images()
    kw = dict(strength=strength, scheduler="ddim", seed=2, batch_size=2, guidance_scale=guidance_scale)
    new = inv.base.img2img(images, num_inference_steps=4, progress=False, **kw)
    assert torch.equal(new, old_img2img(inv.base, images, steps=4, **kw))


@pytest.mark.parametrize("guidance,mode,scheduler", [(1.0, "features", "ddim"), (3.0, "features", "ddim"),
                                                     (2.0, "prompt", "dpm++")])
def test_invert_is_bit_identical_to_the_old_loop(inv, guidance, mode, scheduler):
    feats = wb.extract_features(wb.load_classifier("tinyworld-cnn"), wb.TinyWorld("test", size=2, seed=0).images(),
                                "stages.3")
    kw = dict(num_samples=2, scheduler=scheduler, seed=3, guidance_mode=mode, batch_size=3)  # 3 splits a map's samples
    new = inv.invert(feats, num_inference_steps=2, guidance_scale=guidance, progress=False, feature_guidance_scale=0,
                     **kw)
    assert torch.equal(new, old_invert(inv, feats, steps=2, guidance=guidance, **kw))


# ---------------------------------------------------------------- the loop itself
def test_denoise_calls_back_once_per_step_and_guides_linearly():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(4)
    seen, batches = [], []

    def predict(x, t):  # conditioned half predicts 1, unconditional half 0
        batches.append(len(x))
        return torch.cat([torch.ones_like(x[:1]), torch.zeros_like(x[1:])]) if len(x) == 2 else torch.ones_like(x)

    z = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    plain = denoise(predict, z, sched, callback=lambda i, t, latents: seen.append((i, int(t))))
    assert [i for i, _ in seen] == [0, 1, 2, 3] and [t for _, t in seen] == sched.timesteps.tolist()
    assert batches == [1] * 4
    sched.set_timesteps(4)
    half = denoise(predict, z, sched, guidance_scale=1.5, timesteps=sched.timesteps[2:])
    assert batches[4:] == [2, 2] and half.shape == z.shape and not torch.equal(half, plain)
