"""The distilled inverter (issue 29): one network evaluation per image, seeds that reproduce and differ, the inverter
interface (save, load, registry), and ``workbench distill`` end to end at toy size."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.errors import ArgumentValueError
from workbench.inverters.distilled import DistilledFeatInv


@pytest.fixture(scope="module")
def teacher():
    return wb.load_inverter("tinyworld-cnn/stages.3")


@pytest.fixture(scope="module")
def student(teacher):
    """An untrained student (a copy of the teacher's ControlNet): the mechanics do not depend on training."""
    return DistilledFeatInv.from_teacher(teacher, teacher_name="tinyworld-cnn/stages.3").eval()


@pytest.fixture(scope="module")
def features():
    cnn = wb.load_classifier("tinyworld-cnn")
    return wb.extract_features(cnn, wb.TinyWorld("test", size=3, seed=0).images(), "stages.3")


def _count_calls(inv, fn):
    """``(result, calls)``: the batch size of every ControlNet and UNet forward while ``fn()`` runs."""
    calls = {"controlnet": [], "unet": []}
    hooks = [module.register_forward_pre_hook(
        lambda m, args, kwargs, key=key: calls[key].append(args[0].shape[0]), with_kwargs=True)
        for key, module in (("controlnet", inv.controlnet), ("unet", inv.base.unet))]
    try:
        return fn(), calls
    finally:
        for h in hooks:
            h.remove()


def test_one_evaluation_per_image_and_no_backward(student, teacher, features):
    out, calls = _count_calls(student, lambda: student.invert(features, num_samples=4, seed=0, progress=False))
    assert out.shape == (3, 4, 3, 32, 32) and out.isfinite().all() and 0 <= out.min() and out.max() <= 1
    assert calls == {"controlnet": [12], "unet": [12]}          # one call, one row per image: no guidance branch
    _, taught = _count_calls(teacher, lambda: teacher.invert(features, num_samples=4, seed=0, progress=False))
    assert len(taught["unet"]) == 5 and set(taught["unet"]) == {24}  # the teacher: 5 steps x (cond + uncond)


def test_two_timesteps_take_two_evaluations(teacher, features):
    two = DistilledFeatInv.from_teacher(teacher, timesteps=(801, 401)).eval()
    _, calls = _count_calls(two, lambda: two.invert(features, seed=0, progress=False))
    assert calls == {"controlnet": [3, 3], "unet": [3, 3]}


def test_seeds_reproduce_and_differ(student, features):
    a = student.invert(features, num_samples=2, seed=5, progress=False)
    assert torch.equal(a, student.invert(features, num_samples=2, seed=5, progress=False))
    assert torch.equal(a, student.invert(features, num_samples=2, generator=torch.Generator().manual_seed(5),
                                         progress=False))
    # another batch size: the same noise, the same images up to float rounding of the batched kernels
    assert torch.allclose(a, student.invert(features, num_samples=2, seed=5, batch_size=1, progress=False), atol=1e-5)
    b = student.invert(features, num_samples=2, seed=6, progress=False)
    assert (a - b).abs().mean() > 0.01                                   # the lens stays probabilistic
    assert (a[:, 0] - a[:, 1]).abs().mean() > 0.01                       # samples of one map differ too


def test_it_is_a_registered_inverter_that_saves_and_loads(student, features, tmp_path):
    from workbench.inverters.base import InverterBase, inverter_class

    assert inverter_class("featinv-distilled") is DistilledFeatInv
    student.save_pretrained(tmp_path / "fast", fp16=False)
    again = InverterBase.from_pretrained(tmp_path / "fast")
    assert type(again) is DistilledFeatInv and again.timesteps == student.timesteps
    assert again.config["teacher"] == "tinyworld-cnn/stages.3"
    assert torch.equal(again.invert(features, seed=0, progress=False), student.invert(features, seed=0, progress=False))
    assert type(wb.load_inverter(tmp_path / "fast")) is DistilledFeatInv


def test_it_ignores_the_sampler_and_refuses_sampler_settings(student, features):
    base = student.invert(features, seed=0, progress=False)
    assert torch.equal(student.invert(features, seed=0, progress=False, sampler=wb.Sampler()), base)
    with pytest.raises(TypeError, match="num_inference_steps"):
        student.invert(features, seed=0, num_inference_steps=5, progress=False)


@pytest.mark.parametrize("timesteps", [(), (401, 801), (801, 801), (1000,), (900, 700, 500, 300, 100)])
def test_bad_timesteps_are_refused(teacher, timesteps):
    with pytest.raises(ArgumentValueError, match="timesteps"):
        DistilledFeatInv.from_teacher(teacher, timesteps=timesteps)


def test_teacher_latents_decode_to_the_teachers_images(teacher, features):
    """``sample_latents`` gives exactly what ``invert`` decodes, from the same noise (the distillation's targets)."""
    noise = torch.randn((3, *teacher.base.latent_shape), generator=torch.Generator().manual_seed(0))
    latents = teacher.sample_latents(features, noise, sampler=wb.Sampler(feature_guidance_scale=0.0))
    images = teacher.invert(features, seed=0, feature_guidance_scale=0.0, progress=False)[:, 0]
    assert torch.allclose(teacher.base.decode(latents), images, atol=1e-5)


def test_distill_command_trains_a_loadable_student(tmp_path):
    from workbench.training import distill

    config = distill.parse_args(["--teacher", "tinyworld-cnn/stages.3", "--pairs", "8", "--pair-batch", "4",
                                 "--steps", "2", "--batch-size", "4", "--eval-images", "0", "--no-progress",
                                 "--out", str(tmp_path / "run")])
    student, card = distill.main(config)
    assert len(list((tmp_path / "run" / "pairs").glob("shard_*.safetensors"))) == 2
    assert card["training"]["method"].startswith("knowledge distillation") and card["training"]["steps"] == 2
    loaded = wb.load_inverter(tmp_path / "run" / "inverter")
    assert type(loaded) is DistilledFeatInv and loaded.card["training"]["teacher"] == "tinyworld-cnn/stages.3"
    before = {k: v.clone() for k, v in DistilledFeatInv.from_teacher(
        wb.load_inverter("tinyworld-cnn/stages.3")).controlnet.state_dict().items()}
    moved = [k for k, v in student.controlnet.state_dict().items() if not torch.equal(v, before[k])]
    assert moved                                                   # training changed the ControlNet


def test_bad_distill_flags_are_refused():
    from workbench.training import distill

    with pytest.raises(SystemExit):
        distill.parse_args(["--teacher", "tinyworld-cnn/stages.3", "--out", "x", "--timesteps", "a,b"])
    with pytest.raises(SystemExit):
        distill.parse_args(["--teacher", "tinyworld-cnn/stages.3", "--out", "x", "--pixel-weight", "-1"])
