"""Every training command runs a few steps on tiny components in a temporary folder, and a killed run
resumes from its last checkpoint to the same weights as an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.paths import data_dir
from workbench.training import all as all_stages
from workbench.training import base, classifier, featinv, vae

TINY_CNN = ["--arch", '{"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}']
SMALL = ["--batch-size", "8", "--train-images", "64", "--device", "cpu", "--no-progress"]


def test_train_classifier_five_steps(tmp_path):
    card = classifier.main(classifier.parse_args(
        ["--name", "tinyworld-cnn", "--out", str(tmp_path), "--steps", "5", "--test-images", "16", *SMALL, *TINY_CNN]))
    assert card["training"]["steps"] == 5
    assert 0 <= card["metrics"]["test_accuracy"] <= 1
    assert (tmp_path / "tinyworld-cnn.safetensors").is_file()
    assert (tmp_path / "checkpoint" / "state.pt").is_file()


def test_train_classifier_init_from_records_the_starting_card(tmp_path):
    first = ["--name", "tinyworld-cnn", "--test-images", "16", *SMALL, *TINY_CNN]
    classifier.main(classifier.parse_args([*first, "--out", str(tmp_path / "a"), "--steps", "3"]))
    card = classifier.main(classifier.parse_args([*first, "--out", str(tmp_path / "b"), "--steps", "2",
                                                  "--init-from", str(tmp_path / "a")]))
    assert card["training"]["init_card"]["training"]["steps"] == 3
    assert card["training"]["init_card"]["metrics"]["test_images"] == 16


def test_train_vae_and_base_five_steps(tmp_path):
    card = vae.main(vae.parse_args(["--out", str(tmp_path / "vae"), "--steps", "5", "--widths", "16,16", *SMALL]))
    assert card["metrics"]["val_psnr_db"] > 0
    card = base.main(base.parse_args(["--out", str(tmp_path / "base"), "--steps", "5", "--vae", str(tmp_path / "vae" / "vae"),
                                      "--widths", "16,32,32", *SMALL]))
    assert card["space"] == "latent" and card["latent_shape"] == [4, 16, 16]
    assert (tmp_path / "base" / "tinyworld-base" / "unet" / "config.json").is_file()


def test_train_base_layers_per_block_and_make_weights_base_args(tmp_path, capsys):
    card = base.main(base.parse_args(["--out", str(tmp_path), "--steps", "2", "--widths", "16,32,32",
                                      "--layers-per-block", "2", *SMALL]))
    assert card["unet_config"]["layers_per_block"] == 2
    with pytest.raises(SystemExit) as e:  # refused by parse_args, before anything loads
        base.parse_args(["--out", str(tmp_path / "x"), "--steps", "2", "--layers-per-block", "0", *SMALL])
    assert e.value.code == 2 and "--layers-per-block 0: must be at least 1" in capsys.readouterr().err
    args = all_stages.parse_args(["--profile", "smoke", "--base-args", "--widths 64,128,192 --layers-per-block 2"])
    args.runs, args.ship = str(tmp_path / "r"), str(tmp_path / "s")
    cmd = all_stages.stage_command("base", args, all_stages.PROFILES["smoke"])
    assert cmd[-4:] == ["--widths", "64,128,192", "--layers-per-block", "2"]  # after the profile's, so they win
    assert "--layers-per-block" not in all_stages.stage_command("inv-cnn-last", args, all_stages.PROFILES["smoke"])
    args = all_stages.parse_args(["--profile", "smoke", "--inv-args", "--max-minutes 2.5"])
    args.runs, args.ship = str(tmp_path / "r"), str(tmp_path / "s")
    assert all_stages.stage_command("inv-vit-mid", args, all_stages.PROFILES["smoke"])[-2:] == ["--max-minutes", "2.5"]
    assert "--max-minutes" not in all_stages.stage_command("base", args, all_stages.PROFILES["smoke"])


def test_train_pixel_base_five_steps(tmp_path):
    card = base.main(base.parse_args(["--out", str(tmp_path), "--steps", "5", "--widths", "16,32,32", *SMALL]))
    assert card["space"] == "pixel" and card["latent_shape"] == [3, 32, 32]


def _replayed_draws(seed: int, shape, min_timestep: int = 0):
    """The noise and timesteps that diffusion_loss draws first from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=g)
    return noise, torch.randint(min_timestep, 1000, (shape[0],), generator=g)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_loss_weights_only_the_clean_timesteps(kind):
    """A prediction off the target by 1 everywhere has MSE 1; Min-SNR-gamma weights each item by min(SNR, 5)/SNR
    (epsilon) or min(SNR, 5)/(SNR + 1) (v), which is below 1 only at the nearly clean timesteps."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from workbench.diffusion import diffusion_loss, tiny_scheduler_config, training_target

    sched = DDPMScheduler.from_config(tiny_scheduler_config(kind))
    z0 = torch.randn(64, 2, 3, 3)
    noise, t = _replayed_draws(0, z0.shape)
    target = training_target(sched, z0, noise, t)
    off_by_one = lambda z, tt: target + 1  # noqa: E731
    assert diffusion_loss(off_by_one, z0, sched, generator=torch.Generator().manual_seed(0)) == 1.0
    snr = compute_snr(sched, t)
    assert snr.max() > 5 > snr.min()
    weight = torch.where(snr > 5, 5 / snr, torch.ones_like(snr)) if kind == "epsilon" else snr.clamp(max=5) / (snr + 1)
    want = weight.mean()
    got = diffusion_loss(off_by_one, z0, sched, generator=torch.Generator().manual_seed(0), snr_gamma=5.0)
    assert torch.isclose(got, want) and got.isfinite() and got < 1.0
    with pytest.raises(ValueError, match="snr_gamma=0"):
        diffusion_loss(off_by_one, z0, sched, snr_gamma=0)
    with pytest.raises(ValueError, match="min_timestep=1000"):
        diffusion_loss(off_by_one, z0, sched, min_timestep=1000)


# ---------------------------------------------------------------- one loss: the same numbers as before it
def old_diffusion_loss(pred, target, t, noise_sched, snr_gamma=None):
    """training/base.py's diffusion_loss before the whole step moved into workbench.diffusion.diffusion_loss."""
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    snr = compute_snr(noise_sched, t)
    if noise_sched.config.prediction_type == "v_prediction":
        weight = snr.clamp(max=snr_gamma) / (snr + 1)
    else:
        weight = torch.where(snr > snr_gamma, snr_gamma / snr, torch.ones_like(snr))  # safe where SNR is 0
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample * weight).mean()


def old_base_step_loss(denoiser, base, z0, noise_sched, g, *, null_prob, min_timestep, snr_gamma):
    """The loss of one step of train-base's loop before unet_loss (pasted from training/base.py's main)."""
    from workbench.diffusion import training_target

    b = z0.shape[0]
    noise = torch.randn(z0.shape, generator=g, device=z0.device)
    t = torch.randint(min_timestep, noise_sched.config.num_train_timesteps, (b,), generator=g,
                      device=z0.device)
    zt = noise_sched.add_noise(z0, noise, t)
    drop = torch.rand(b, generator=g, device=z0.device) < null_prob
    pred = denoiser(zt, t, encoder_hidden_states=base.embeds(b, null=drop)).sample
    return old_diffusion_loss(pred, training_target(noise_sched, z0, noise, t), t, noise_sched, snr_gamma)


def old_featinv_training_loss(self, latents, features, *, noise_scheduler, generator=None, drop_prob=0.15):
    """FeatInv.training_loss before it called diffusion_loss (pasted from inverters/featinv.py)."""
    import torch.nn.functional as F

    from workbench.diffusion import training_target

    b = latents.shape[0]
    dev = latents.device
    noise = torch.randn(latents.shape, generator=generator, device=dev)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator, device=dev)
    zt = noise_scheduler.add_noise(latents, noise, t)
    drop = torch.rand(b, generator=generator, device=dev) < drop_prob
    feats = features * (~drop).view(-1, 1, 1, 1).to(features.dtype)
    pred = self.predict_noise(zt, t, feats, self.base.embeds(b, null=drop))
    return F.mse_loss(pred.float(), training_target(noise_scheduler, latents, noise, t).float())


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("snr_gamma,min_timestep", [(None, 0), (5.0, 0), (None, 600), (5.0, 600)])
def test_base_loss_is_the_old_computation(kind, snr_gamma, min_timestep):
    """unet_loss (diffusion_loss with the base's prompt dropout) gives the old loop's loss bit for bit and leaves
    the generator where the old loop left it, so training at a fixed seed is unchanged."""
    from diffusers import UNet2DConditionModel

    from workbench.diffusion import DiffusionBase, tiny_scheduler_config, tiny_unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config(sample_size=8, in_channels=3, widths=(16, 32, 32)))
    prompt, null = base.fixed_prompt_embeds(64)
    diff = DiffusionBase(unet, tiny_scheduler_config(kind), prompt, null, None, image_size=8)
    sched = diff.make_scheduler("ddpm")
    z0 = torch.randn(6, 3, 8, 8)
    g_new, g_old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(2):  # two steps: the second starts where the first left the generator
        new = base.unet_loss(unet, diff, z0, sched, generator=g_new, null_prob=0.5, min_timestep=min_timestep,
                             snr_gamma=snr_gamma)
        old = old_base_step_loss(unet, diff, z0, sched, g_old, null_prob=0.5, min_timestep=min_timestep,
                                 snr_gamma=snr_gamma)
        assert torch.equal(new, old), (new, old)
    assert torch.equal(g_new.get_state(), g_old.get_state())


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_featinv_loss_is_the_old_computation(kind):
    """FeatInv.training_loss (condition dropout around diffusion_loss) gives the old loss bit for bit, the
    generator ends where it did, and snr_gamma weights it as train-base's loss."""
    from helpers import miniature_base  # a tiny SD-shaped base with random weights

    from workbench.inverters.featinv import FeatInv

    mini = miniature_base(pixel=True)
    mini.scheduler_config["prediction_type"] = kind
    inv = FeatInv(mini, "toy", "layer", (6, 2, 2))
    sched = mini.make_scheduler("ddpm")
    z0, feats = torch.randn(4, *mini.latent_shape), torch.randn(4, 6, 2, 2)
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):
        new = inv.training_loss(z0, feats, noise_scheduler=sched, generator=g_new, drop_prob=0.5)
        old = old_featinv_training_loss(inv, z0, feats, noise_scheduler=sched, generator=g_old, drop_prob=0.5)
        assert torch.equal(new, old), (new, old)
    assert torch.equal(g_new.get_state(), g_old.get_state())
    weighted = inv.training_loss(z0, feats, noise_scheduler=sched, generator=torch.Generator().manual_seed(5),
                                 drop_prob=0.5, snr_gamma=5.0)
    assert weighted.isfinite() and not torch.equal(weighted, new)


def test_train_base_needs_out_and_has_no_eval_only(capsys):
    """Measuring a saved base's card is training/cards.py's job; train-base trains, into --out."""
    with pytest.raises(SystemExit):
        base.parse_args(["--steps", "2"])
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        base.parse_args(["--out", "x", "--eval-only", "some/base"])


def test_configs_are_the_flags_with_the_dataclass_defaults():
    """parse_args builds each script's config dataclass: every field is a --flag with the field's default, and
    its comment is the flag's help; train_featinv takes a config or its fields, never argv strings."""
    import dataclasses

    from workbench.training import decoder
    from workbench.training.common import config_parser, field_comments

    required = {classifier: ["--name", "tinyworld-cnn", "--out", "o"], vae: ["--out", "o"], base: ["--out", "o"],
                featinv: ["--classifier", "c", "--layer", "l", "--out", "o"],
                decoder: ["--classifier", "c", "--layer", "l", "--out", "o"]}
    for module, argv in required.items():
        config = module.parse_args(argv)
        cls = type(config)
        assert dataclasses.is_dataclass(config) and cls.__name__.endswith("Config")
        given = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        assert config == cls(**{k: getattr(config, k) for k in given}), module.__name__  # the rest: the defaults
        comments = field_comments(cls)
        assert all(comments.get(f.name) for f in dataclasses.fields(cls)), module.__name__  # every field documented
    assert base.parse_args(["--out", "o", "--widths", "16,32,32"]).widths == (16, 32, 32)
    assert classifier.parse_args(["--name", "n", "--out", "o", "--arch", '{"dims": [8]}']).arch == {"dims": [8]}
    assert featinv.parse_args(["--classifier", "c", "--layer", "l", "--out", "o", "--no-feature-cache",
                               "--snr-gamma", "5"]) == featinv.FeatInvConfig(classifier="c", layer="l", out="o",
                                                                             feature_cache=False, snr_gamma=5.0)
    help_text = config_parser(featinv.FeatInvConfig, prog="x", description="").format_help()
    assert "--eval-images" in help_text and "held-out test images" in help_text and "--eval-n" not in help_text
    with pytest.raises(TypeError, match="eval_n"):
        featinv.train_featinv(classifier="c", layer="l", out="o", eval_n=4)


def test_train_base_loss_options_and_their_bad_values(tmp_path, capsys):
    card = base.main(base.parse_args(["--out", str(tmp_path), "--steps", "3", "--widths", "16,32,32",
                                      "--snr-gamma", "5", "--min-timestep", "600", *SMALL]))
    assert card["training"]["snr_gamma"] == 5.0 and card["training"]["min_timestep"] == 600
    for flag, value, message in [("--snr-gamma", "0", "--snr-gamma 0.0: must be > 0"),
                                 ("--min-timestep", "1000", "--min-timestep 1000: must be in [0, 999]")]:
        with pytest.raises(SystemExit):  # refused by parse_args, before anything loads
            base.parse_args(["--out", str(tmp_path / "x"), "--steps", "2", flag, value, *SMALL])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="--snr-gamma 0"):  # the config itself refuses it (the Python API)
        base.BaseConfig(out=str(tmp_path / "x"), snr_gamma=0)


def test_train_base_init_from_continues_a_saved_base(tmp_path):
    """--init-from starts from a saved base's UNet (its widths, not --widths) and records the starting card."""
    base.main(base.parse_args(["--out", str(tmp_path / "a"), "--steps", "5", "--widths", "16,32,32", *SMALL]))
    start = tmp_path / "a" / "tinyworld-base"
    card = base.main(base.parse_args(["--out", str(tmp_path / "b"), "--steps", "2", "--lr", "0", "--init-from",
                                      str(start), *SMALL]))
    assert card["unet_config"]["block_out_channels"] == [16, 32, 32]  # the default --widths is 48,96,96
    assert card["training"]["init_from"] == str(start)
    assert card["training"]["init_card"]["training"]["steps"] == 5
    a = load_file(str(start / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "tinyworld-base" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the start, unchanged


def test_train_base_init_from_rejects_a_mismatched_base(tmp_path):
    base.main(base.parse_args(["--out", str(tmp_path / "a"), "--steps", "2", "--widths", "16,32,32", *SMALL]))
    with pytest.raises(SystemExit, match="--init-from .* this run trains on"):  # a pixel base under a VAE run
        base.main(base.parse_args(["--out", str(tmp_path / "b"), "--steps", "2", "--vae", str(data_dir() / "tinyworld-base" / "vae"),
                                   "--init-from", str(tmp_path / "a" / "tinyworld-base"), *SMALL]))
    with pytest.raises(SystemExit, match="no UNet there"):
        base.main(base.parse_args(["--out", str(tmp_path / "c"), "--steps", "2", "--init-from", str(tmp_path),
                                   *SMALL]))


def test_train_inverter_five_steps_and_ship(tmp_path):
    inv = featinv.train_featinv(classifier="tinyworld-cnn", layer="stages.3", steps=5, batch_size=8, out=tmp_path,
                                device="cpu", train_images=64, eval_images=4, progress=False, snr_gamma=5.0,
                                ship=str(tmp_path / "ship"))
    assert inv.feature_shape == (192, 4, 4)
    shipped = tmp_path / "ship" / "inverters" / "tinyworld-cnn" / "stages.3"
    card = json.loads((shipped / "card.json").read_text())
    assert card["training"]["steps"] == 5 and card["training"]["snr_gamma"] == 5.0
    assert card["metrics"]["test_images"] == 4 and "feature_cosine" in card["metrics"]
    assert load_file(str(shipped / "controlnet" / "diffusion_pytorch_model.safetensors"))[
        "conv_in.weight"].dtype == torch.float16


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path):
    common = ["train-classifier", "--name", "tinyworld-cnn", "--steps", "40", "--save-every", "4", "--test-images", "8",
              "--batch-size", "32", "--train-images", "64", "--device", "cpu", "--no-progress", *TINY_CNN]
    ref = _run([*common, "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    run = _run([*common, "--out", str(tmp_path / "run")])
    step_file = tmp_path / "run" / "checkpoint" / "step.json"
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None:
        if step_file.is_file() and json.loads(step_file.read_text())["step"] >= 8:
            break
        time.sleep(0.05)
    if run.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_at = json.loads(step_file.read_text())["step"]
    assert 8 <= killed_at < 40
    resumed = _run([*common, "--out", str(tmp_path / "run"), "--resume"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from step {killed_at}" in out
    a = load_file(str(tmp_path / "ref" / "tinyworld-cnn.safetensors"))
    b = load_file(str(tmp_path / "run" / "tinyworld-cnn.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_make_weights_orchestrates_every_stage(tmp_path):
    rc = all_stages.main(all_stages.parse_args(["--profile", "smoke", "--runs", str(tmp_path / "runs"), "--ship",
                                                str(tmp_path / "data"), "--device", "cpu", "--jobs", "2", "--no-progress",
                                                "--only", "cnn", "vae", "base"]))
    assert rc == 0
    assert (tmp_path / "data" / "tinyworld-cnn.safetensors").is_file()
    assert (tmp_path / "data" / "tinyworld-base" / "vae").is_dir()
    assert all((tmp_path / "runs" / s / "DONE").is_file() for s in ("cnn", "vae", "base"))
    # a second call finds everything done and does nothing
    assert all_stages.main(all_stages.parse_args(["--profile", "smoke", "--runs", str(tmp_path / "runs"), "--ship",
                                                  str(tmp_path / "data"), "--device", "cpu", "--no-progress",
                                                  "--only", "cnn", "vae", "base"])) == 0


def test_make_weights_init_from_continues_shipped_artefacts(tmp_path):
    """``all --init-from DATA --only base inv-...``: the base and inverters continue from DATA's weights (the base with
    DATA's VAE, since the vae stage is skipped), and their cards say where they started."""
    import shutil

    first = ["--profile", "smoke", "--device", "cpu", "--jobs", "2", "--no-progress"]
    assert all_stages.main(all_stages.parse_args([*first, "--runs", str(tmp_path / "r1"), "--ship", str(tmp_path / "a"),
                                                  "--only", "cnn", "vae", "base", "inv-cnn-last"])) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the classifiers stay; base and inverter are replaced
    assert all_stages.main(all_stages.parse_args([*first, "--runs", str(tmp_path / "r2"), "--ship", str(tmp_path / "b"),
                                                  "--init-from", str(tmp_path / "a"),
                                                  "--only", "base", "inv-cnn-last"])) == 0
    base_card = json.loads((tmp_path / "b" / "tinyworld-base" / "card.json").read_text())
    assert base_card["training"]["init_from"] == str((tmp_path / "a" / "tinyworld-base").resolve())
    assert "init_card" in base_card["training"]
    first_card = json.loads((tmp_path / "a" / "tinyworld-base" / "card.json").read_text())
    assert base_card["vae"] == first_card["vae"]  # the VAE it kept: its card comes from the starting base's card
    inv_card = json.loads((tmp_path / "b" / "inverters" / "tinyworld-cnn" / "stages.3" / "card.json").read_text())
    assert inv_card["training"]["init_from"].endswith("inverters/tinyworld-cnn/stages.3")
    assert inv_card["training"]["init_card"]["training"]["steps"] == 3  # the smoke profile's first run
    assert "loss_curve" not in inv_card["training"]["init_card"]["training"]
    with pytest.raises(SystemExit, match="not a data folder"):
        all_stages.main(all_stages.parse_args([*first, "--runs", str(tmp_path / "r3"), "--init-from", str(tmp_path)]))


def _image_folder(root: Path, per_class: int = 4) -> Path:
    """A tiny ImageFolder: two classes of random 40x48 PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_train_inverter_on_an_image_folder(tmp_path):
    """--data PATH takes an ImageFolder layout (ImageNet's), augmented by default as the official training does."""
    folder = _image_folder(tmp_path / "imgs")
    args = featinv.parse_args(["--classifier", "tinyworld-vit", "--layer", "blocks.2", "--data", str(folder),
                               "--steps", "3", "--batch-size", "4", "--num-workers", "0", "--out", str(tmp_path / "run"),
                               "--device", "cpu", "--no-progress", "--mixed-precision", "no"])
    inv, card = featinv.main(args)
    assert card["training"]["steps"] == 3 and card["training"]["data"] == str(folder)
    assert card["training"]["augment"] is True
    assert "metrics" not in card  # held-out metrics are for the tiny world; an image folder has no test split here


def test_image_folder_augmentation_is_the_official_one_reproducible_and_resumable(tmp_path):
    """RandomResizedCrop + random horizontal and vertical flips, drawn from (seed, epoch, item): the same seed gives
    the same batches (also in loader processes), another seed other crops, a new epoch new crops of the same
    images, and a stream restored from its state_dict continues with the batches the uninterrupted one reads."""
    from torchvision import transforms

    from workbench.training.data import ImageFolderStream

    folder = _image_folder(tmp_path / "imgs")

    def stream(seed=0, **kw):
        return ImageFolderStream(folder, image_size=16, batch_size=2, seed=seed, **{"num_workers": 0, **kw})

    kinds = [type(t) for t in stream().items.tf.transforms]
    assert kinds[:3] == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip, transforms.RandomVerticalFlip]
    first = [x for x, _ in zip((b[0] for b in stream()), range(8))]  # two epochs of 4 batches
    again = [x for x, _ in zip((b[0] for b in stream(num_workers=2)), range(8))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = next(iter(stream(seed=1)))[0]
    assert not torch.equal(other, first[0])
    plain = stream(augment=False)
    assert not torch.equal(next(iter(plain))[0], first[0])  # resized and centre-cropped only
    s = stream()
    it = iter(s)
    for _ in range(5):
        next(it)
    resumed = stream()
    resumed.load_state_dict(s.state_dict())
    assert resumed.state_dict() == {"epoch": 1, "offset": 2}
    assert all(torch.equal(b[0], x) for b, x in zip(iter(resumed), first[5:]))


def test_tensor_stream_epochs_resume_and_refuse_a_global_batch_larger_than_the_data():
    from workbench.training.data import EpochOrder, TensorStream

    s = TensorStream(torch.arange(10), batch_size=3, seed=0)
    it = iter(s)
    seen = [next(it)[0] for _ in range(3)]  # one epoch: 3 batches of 3, the tenth item dropped
    assert len(set(torch.cat(seen).tolist())) == 9 and s.state_dict() == {"epoch": 0, "offset": 9}
    nxt = next(it)[0]
    assert s.state_dict() == {"epoch": 1, "offset": 3}
    r = TensorStream(torch.arange(10), batch_size=3, seed=0)
    r.load_state_dict({"epoch": 0, "offset": 9})
    assert torch.equal(next(iter(r))[0], nxt)
    assert torch.equal(s.probe()[0], TensorStream(torch.arange(10), batch_size=3, seed=0).probe()[0])
    with pytest.raises(ValueError, match="3 x 4 process\\(es\\) = 12 items does not fit in the 10 items"):
        EpochOrder(10, batch_size=3, seed=0, world=4)


def test_tiny_world_is_never_augmented(tmp_path):
    inv = featinv.train_featinv(classifier="tinyworld-cnn", layer="stages.3", steps=1, batch_size=4, out=tmp_path,
                                device="cpu", train_images=16, eval_images=0, progress=False, mixed_precision="no")
    assert inv.card["training"]["augment"] is False


def test_runs_with_different_precisions_share_one_process(tmp_path):
    """accelerate keeps one state per process; a notebook that trains in fp32 and then in bf16 must not fail."""
    for i, mp in enumerate(["no", "bf16", "no"]):
        card = classifier.main(classifier.parse_args(
            ["--name", "tinyworld-cnn", "--out", str(tmp_path / str(i)), "--steps", "2", "--test-images", "8",
             "--mixed-precision", mp, *SMALL, *TINY_CNN]))
        assert card["training"]["mixed_precision"] == mp


def test_cards_cli_selects_inverters_and_rejects_bad_input():
    """``python -m workbench.training.cards``: --inverters with no names means all FeatInv cards (it used to mean none);
    unknown names and a malformed --base-sampler fail before any slow work."""
    from workbench.training import cards

    shipped = ["tinyworld-cnn/stages.3", "tinyworld-cnn/stages.3-decoder", "tinyworld-vit/blocks.5"]
    featinv_only = ["tinyworld-cnn/stages.3", "tinyworld-vit/blocks.5"]
    assert cards.inverter_names(cards.parse_args([]), shipped) == featinv_only
    assert cards.inverter_names(cards.parse_args(["--base"]), shipped) == []
    assert cards.inverter_names(cards.parse_args(["--base", "--inverters"]), shipped) == featinv_only
    assert cards.inverter_names(cards.parse_args(["--inverters", "tinyworld-vit/blocks.5"]), shipped) == [
        "tinyworld-vit/blocks.5"]
    with pytest.raises(SystemExit, match="unknown \\['tinyworld-vit/blocks.9'\\]"):
        cards.inverter_names(cards.parse_args(["--inverters", "tinyworld-vit/blocks.9"]), shipped)
    assert cards.parse_sampler("ddpm:250") == ("ddpm", 250)
    for bad in ("ddpm", "ddpm:0", ":20", "dpm++:x"):
        with pytest.raises(SystemExit, match="expected SCHEDULER:STEPS"):
            cards.parse_sampler(bad)
    with pytest.raises(SystemExit, match="--base-sampler 'ddpm'"):  # main checks it before loading anything
        cards.main(cards.parse_args(["--base", "--base-sampler", "ddpm"]))


def test_init_card_keeps_the_provenance_and_rejects_a_broken_card(tmp_path):
    from workbench.training.common import init_card

    assert init_card(tmp_path / "card.json") is None  # weights without a card: nothing to record
    (tmp_path / "card.json").write_text(json.dumps({"training": {"steps": 7, "loss_curve": [1, 2]},
                                                    "metrics": {"acc": 0.5}, "vae": {"psnr": 30}}))
    assert init_card(tmp_path / "card.json") == {"training": {"steps": 7}, "metrics": {"acc": 0.5}}
    assert init_card(tmp_path / "card.json", also=("vae", "absent"))["vae"] == {"psnr": 30}
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(SystemExit, match="is not valid JSON"):
        init_card(tmp_path / "card.json")


def test_gpu_base_sweep_script_smoke(tmp_path):
    """scripts/gpu_base_sweep.sh on CPU at smoke size: four candidate bases, a card each, the forced pick (a base
    switched to v-prediction) in the pack, and five inverters fine-tuned onto it from data/'s."""
    import tarfile

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DEVICE": "cpu", "PROFILE": "smoke-data", "PICK": "v-cont", "PYTHON": sys.executable,
           "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "BASE_ARGS": "--steps 2 --batch-size 8 --train-images 64 --eval-images 8 --mixed-precision no"}
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(root / "scripts" / "gpu_base_sweep.sh"), str(out)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=500)
    log = (out / "log.txt").read_text()
    assert res.returncode == 0, log + res.stderr
    assert sum(f"[sweep] {n}" in log for n in ("eps-cont", "v-cont", "v-new", "eps-new")) == 4
    assert "[sweep] picked: v-cont" in log and "all.py exit 0" in log
    unpacked = tmp_path / "data"
    unpacked.mkdir()
    with open(tmp_path / "weights.tar", "wb") as f:
        for part in sorted(out.glob("weights.tar.part-*")):
            f.write(part.read_bytes())
    with tarfile.open(tmp_path / "weights.tar") as t:
        t.extractall(unpacked, filter="data")
    sched = json.loads((unpacked / "tinyworld-base" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    card = json.loads((unpacked / "inverters" / "tinyworld-cnn" / "stages.3" / "card.json").read_text())
    assert card["training"]["steps"] == 3 and card["training"]["init_from"].endswith("inverters/tinyworld-cnn/stages.3")


def test_gpu_base_sweep_script_refuses_a_bad_candidate_and_packs_no_half_result(tmp_path):
    """An unknown candidate is refused by name; a base phase that leaves the inverters too little time gives the
    candidates (cands.tar) but no weights.tar, since data/'s old inverters do not fit a new base."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "WORK": str(tmp_path / "work"),
           "OMP_NUM_THREADS": "1", "CANDS": "v-new v-typo"}
    script = str(root / "scripts" / "gpu_base_sweep.sh")
    res = subprocess.run(["bash", script, str(tmp_path / "bad")], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "unknown candidate v-typo" in res.stdout
    env.update(CANDS="v-new", TOTAL_S="60", PROFILE="smoke-data",
               BASE_ARGS="--steps 2 --batch-size 8 --train-images 64 --eval-images 8 --mixed-precision no")
    out = tmp_path / "out"
    res = subprocess.run(["bash", script, str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    log = (out / "log.txt").read_text()
    assert res.returncode == 1, log + res.stderr
    assert "[sweep] under 0.5 minutes left for the inverters: skipped" in log
    assert list(out.glob("cands.tar.part-*")) and not list(out.glob("weights.tar.part-*"))


def test_card_evaluator_reproduces_a_shipped_card():
    """evaluation.inverter_card_metrics, which training and training/cards.py share, gives the numbers on the
    shipped decoder's card (the decoder is deterministic, so they must match exactly)."""
    import workbench as wb
    from workbench.card_metrics import inverter_card_metrics

    name = "tinyworld-cnn/stages.3-decoder"
    card = json.loads((data_dir() / "inverters" / name / "card.json").read_text())["metrics"]
    m = inverter_card_metrics(wb.load_inverter(name), wb.load_classifier("tinyworld-cnn"),
                              num_images=card["test_images"])
    assert {k: m[k] for k in card} == card  # the card predates the judges' entries, which are added beside
    assert 0 <= m["judge_agreement"] <= 1 and 0 <= m["shape_accuracy"] <= 1 and "graded_by" in m


# ---------------------------------------------------------------- the official recipe, as a preset
def test_the_official_preset_trains_and_samples_at_tiny_size(tmp_path):
    """The official recipe at tiny size, random weights, offline: ConvNeXt (atto standing in for base) read at 288 px
    and inverted at forward_features, the miniature SD base, an augmented ImageFolder; 3 epochs set the steps, and
    the card records the recipe; the preset's sampler (DDIM, guidance 1.75, guidance_mode='prompt') inverts."""
    import timm
    from safetensors.torch import save_file

    import workbench as wb
    from workbench.diffusion import miniature_base
    from workbench.inverters.featinv import FeatInv

    official = wb.presets.get("official")
    assert (official.classifier, official.layer, official.feature_shape) == (
        "convnext_base.fb_in22k_ft_in1k", "stages.3", (1024, 9, 9))
    assert official.sampler == {"scheduler": "ddim", "num_inference_steps": 50, "guidance_scale": 1.75,
                                "guidance_mode": "prompt", "feature_guidance_scale": 0.0}
    assert wb.Sampler(**official.sampler).num_inference_steps == 50     # settings a Sampler takes
    torch.manual_seed(0)
    save_file(timm.create_model("convnext_atto", pretrained=False).state_dict(), str(tmp_path / "atto.safetensors"))
    miniature_base(seed=0).save_pretrained(tmp_path / "base", fp16=False)
    config = official.config(data=str(_image_folder(tmp_path / "imgs", per_class=1)), out=str(tmp_path / "run"),
                             classifier="convnext_atto", classifier_checkpoint=str(tmp_path / "atto.safetensors"),
                             base=str(tmp_path / "base"), batch_size=2, num_workers=0, device="cpu", progress=False)
    inv = featinv.train_featinv(config)
    training = inv.card["training"]
    assert training["steps"] == 3  # 3 epochs of 2 images at batch 2
    assert (training["lr"], training["lr_schedule"], training["max_grad_norm"], training["ema"]) == (
        1e-5, "constant", None, 0.0)
    assert training["classifier_size"] == 288 and training["augment"] is True and training["drop_prob"] == 0.15
    assert training["prompt"] == wb.presets.OFFICIAL_PROMPT and training["mixed_precision"] == "no"
    assert inv.hidden_channels == 512 and inv.feature_shape == (320, 9, 9)  # atto's 320 channels at 288 px / 32
    # the inverter itself records what inversion needs: the classifier's 288 px input and the prompt
    saved = json.loads((tmp_path / "run" / "inverter" / "config.json").read_text())
    assert saved["classifier_input_size"] == [3, 288, 288] and saved["prompt"] == wb.presets.OFFICIAL_PROMPT
    assert inv.classifier_input_size == (3, 288, 288)

    clf = wb.load_classifier("convnext_atto", checkpoint_path=tmp_path / "atto.safetensors")
    clf.input_size = (3, 288, 288)
    x = torch.rand(1, 3, 288, 288)
    feats = wb.extract_features(clf, x, official.layer)
    assert torch.allclose(feats, clf.model.forward_features(clf.normalize(x)))  # stages.3 is forward_features
    images = inv.invert(feats, **{**official.sampler, "num_inference_steps": 2}, progress=False)
    assert images.shape == (1, 1, 3, 64, 64) and images.isfinite().all()


def test_the_official_preset_command_is_its_config_and_ours_stays_the_default():
    import shlex

    import workbench as wb

    official = wb.presets.get("official")
    cmd = official.train_command(data="/data/imagenet/train", out="runs/official")
    assert cmd.startswith("accelerate launch -m workbench.cli train-inverter ")
    argv = shlex.split(cmd)[5:]
    assert featinv.parse_args(argv) == official.config(data="/data/imagenet/train", out="runs/official")
    assert "--max-grad-norm none" in cmd and "--classifier-size 288" in cmd and "--epochs 3" in cmd
    ours = featinv.parse_args(["--classifier", "c", "--layer", "l", "--out", "o"])
    assert (ours.lr, ours.lr_schedule, ours.ema, ours.max_grad_norm, ours.hidden_channels, ours.classifier_size,
            ours.epochs) == (3e-4, "cosine", 0.999, 1.0, 64, None, None)
    assert wb.presets.get("resnet50").train_command(data="d", out="o") == (
        "accelerate launch -m workbench.cli train-inverter --classifier resnet50 --layer layer4 "
        "--base lambdalabs/miniSD-diffusers --steps 100000 --batch-size 32 --mixed-precision bf16 --data d --out o")


def test_constant_lr_schedule_keeps_the_peak_lr():
    from workbench.training.common import adamw_with_schedule

    config = featinv.FeatInvConfig(classifier="c", layer="l", out="o", steps=50, lr=1e-5)
    opt, sched = adamw_with_schedule([torch.nn.Parameter(torch.zeros(1))], config, weight_decay=0.01,
                                     schedule="constant")
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1e-5] * 50 and sched.horizon["total"] == 50
