"""v-prediction (SD 2.x's objective) end to end: the training target, the samplers, train-base and FeatInv."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from workbench.diffusion import DiffusionBase, tiny_scheduler_config, training_target
from workbench.training import base as train_base

SMALL = ["--batch-size", "8", "--train-images", "64", "--device", "cpu", "--no-progress", "--widths", "16,32,32"]


def _sched(kind):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(tiny_scheduler_config(kind))


def test_training_target_is_the_noise_or_v():
    x0, noise = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 250, 700, 999])
    assert torch.equal(training_target(_sched("epsilon"), x0, noise, t), noise)
    ab = _sched("v_prediction").alphas_cumprod[t].view(-1, 1, 1, 1)
    want = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert torch.allclose(training_target(_sched("v_prediction"), x0, noise, t), want, atol=1e-6)
    with pytest.raises(ValueError, match="'sample'"):
        tiny_scheduler_config("sample")
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="'sample' of this scheduler"):
        training_target(DDPMScheduler(prediction_type="sample"), x0, noise, t)


class OracleUNet(nn.Module):
    """The exact denoiser of a one-point data distribution at ``x0``, answering in the scheduler's parametrisation."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.x0, self.ab, self.kind = x0, alphas_cumprod, prediction_type
        self.config = SimpleNamespace(in_channels=x0.shape[0])

    def forward(self, z, t, encoder_hidden_states=None):
        ab = self.ab[t.long()].view(-1, 1, 1, 1) if t.ndim else self.ab[t.long()]
        eps = (z - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        out = eps if self.kind == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * self.x0
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "ddpm"])
def test_samplers_read_the_prediction_type_from_the_base(kind, scheduler):
    """With the exact denoiser, every sampler lands on the data point, for either parametrisation. The whole run
    cannot tell a mismatch (near t = 0 the noise and v coincide, so the last step repairs it), so the first step
    is checked too: it follows the exact path only when the scheduler reads the base's prediction_type."""
    image = torch.rand(3, 8, 8)
    x0 = image * 2 - 1
    ab = _sched(kind).alphas_cumprod
    emb = torch.zeros(1, 1, 4)
    base = DiffusionBase(OracleUNet(x0, ab, kind), tiny_scheduler_config(kind), emb, emb, None, image_size=8)
    out = base.sample(2, num_inference_steps=20, scheduler=scheduler, progress=False)
    assert torch.allclose(out, image.expand(2, -1, -1, -1), atol=2e-3)

    other = "epsilon" if kind == "v_prediction" else "v_prediction"
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = {}
    for answer in (kind, other):
        sched = base.make_scheduler(scheduler)
        sched.set_timesteps(20)
        t, s = sched.timesteps[0], sched.timesteps[1]
        step = sched.step(OracleUNet(x0, ab, answer)(z, t).sample, t, z, generator=torch.Generator().manual_seed(1))
        if scheduler == "ddpm":  # stochastic: its estimate of the clean image is what the type decides
            first[answer] = step.pred_original_sample
            want = x0.expand(2, -1, -1, -1)
        else:  # deterministic: the exact path from z through x0
            first[answer] = step.prev_sample
            eps = (z - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
            want = ab[s].sqrt() * x0 + (1 - ab[s]).sqrt() * eps
    assert torch.allclose(first[kind], want, atol=1e-3)
    assert (first[other] - want).abs().max() > 0.1


def test_train_base_v_prediction_is_saved_kept_and_switchable(tmp_path):
    card = train_base.main(train_base.parse_args(["--out", str(tmp_path / "v"), "--steps", "3",
                                                  "--prediction-type", "v_prediction", *SMALL]))
    assert card["training"]["prediction_type"] == "v_prediction"
    folder = tmp_path / "v" / "tinyworld-base"
    saved = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert saved["prediction_type"] == "v_prediction"
    assert DiffusionBase.from_pretrained(folder).make_scheduler("dpm++").config.prediction_type == "v_prediction"
    # continued without the flag, the base keeps v; with it, it switches (and says so on its card)
    kept = train_base.main(train_base.parse_args(["--out", str(tmp_path / "k"), "--steps", "2", "--init-from",
                                                  str(folder), *SMALL]))
    assert kept["training"]["prediction_type"] == "v_prediction"
    switched = train_base.main(train_base.parse_args(["--out", str(tmp_path / "s"), "--steps", "2", "--init-from",
                                                      str(folder), "--prediction-type", "epsilon", *SMALL]))
    assert switched["training"]["prediction_type"] == "epsilon"
    with pytest.raises(SystemExit):
        train_base.parse_args(["--out", str(tmp_path), "--prediction-type", "x0"])


def test_featinv_loss_targets_v_on_a_v_base():
    """FeatInv's loss is the MSE against the base's own target: the ControlNet corrects v on a v base."""
    from helpers import miniature_base  # a tiny SD-shaped base with random weights
    from workbench.inverters.featinv import FeatInv

    base = miniature_base(pixel=False)
    base.scheduler_config["prediction_type"] = "v_prediction"
    inv = FeatInv(base, "toy", "layer", (6, 2, 2))
    z0 = torch.randn(3, *base.latent_shape)
    feats = torch.randn(3, 6, 2, 2)
    sched = base.make_scheduler("ddpm")
    preds = []
    inv.predict_noise = lambda z, t, f, e: preds.append((z, t)) or torch.zeros_like(z)
    loss = inv.training_loss(z0, feats, noise_scheduler=sched, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws as inside training_loss
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    assert torch.equal(preds[0][1], t)
    want = training_target(sched, z0, noise, t).pow(2).mean()
    assert torch.isclose(loss, want) and not torch.isclose(loss, noise.pow(2).mean())


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_zero_terminal_snr_starts_every_sampler_from_pure_noise(scheduler):
    """Lin et al. 2024's schedule: alpha_bar is 0 at t = 999, and 8 or 50 steps both start there ("trailing"),
    so more steps refine the same path instead of starting from another t; the exact v-denoiser still lands on
    the data point."""
    cfg = tiny_scheduler_config("v_prediction", zero_terminal_snr=True)
    ab = _sched("v_prediction").__class__.from_config(cfg).alphas_cumprod
    assert ab[-1] == 0 and ab[0] > 0.99
    image = torch.rand(3, 8, 8)
    emb = torch.zeros(1, 1, 4)
    base = DiffusionBase(OracleUNet(image * 2 - 1, ab, "v_prediction"), cfg, emb, emb, None, image_size=8)
    assert [int(base.make_scheduler(scheduler, n).timesteps[0]) for n in (8, 50)] == [999, 999]
    leading = DiffusionBase(OracleUNet(image * 2 - 1, ab, "v_prediction"), tiny_scheduler_config("v_prediction"),
                            emb, emb, None, image_size=8)
    starts = [int(leading.make_scheduler(scheduler, n).timesteps[0]) for n in (8, 50)]  # the shipped spacing
    assert starts[0] < starts[1] < 999, starts
    out = base.sample(2, num_inference_steps=20, scheduler=scheduler, progress=False)
    assert torch.allclose(out, image.expand(2, -1, -1, -1), atol=2e-3)


def test_zero_terminal_snr_needs_v_prediction(tmp_path):
    with pytest.raises(ValueError, match="v_prediction"):
        tiny_scheduler_config("epsilon", zero_terminal_snr=True)
    from workbench.errors import ArgumentValueError

    with pytest.raises(ArgumentValueError, match="--prediction-type v_prediction"):
        train_base.main(train_base.parse_args(["--out", str(tmp_path / "e"), "--steps", "1", "--zero-terminal-snr",
                                               *SMALL]))
    card = train_base.main(train_base.parse_args(["--out", str(tmp_path / "z"), "--steps", "2", "--zero-terminal-snr",
                                                  "--prediction-type", "v_prediction", *SMALL]))
    assert card["training"]["zero_terminal_snr"] is True
    folder = tmp_path / "z" / "tinyworld-base"
    sched = DiffusionBase.from_pretrained(folder).make_scheduler("ddim", 8)
    assert sched.config.rescale_betas_zero_snr and sched.config.timestep_spacing == "trailing"
    assert int(sched.timesteps[0]) == 999
