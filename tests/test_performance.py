"""Performance contracts without timings: each optimisation of the sampling path gives the images of the
slow path (within float tolerance), memory is bounded by ``batch_size``, and the benchmarks run at CI size."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.inverters.featinv import FeatInv, FeatureConditioning

from helpers import make_condition_matter, miniature_base

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


slow_invert = load_benchmark("sampling_path").slow_invert


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mini_inv():
    resnet = wb.load_classifier("resnet18", pretrained=False, num_classes=10)
    feats = wb.metrics.extract_features(resnet, torch.rand(2, 3, 64, 64), "layer4")
    inv = make_condition_matter(FeatInv(miniature_base(), "resnet18", "layer4", feats.shape[1:]))
    with torch.no_grad():  # a non-zero conditioning, so the embedded condition matters
        torch.nn.init.normal_(inv.conditioning.zero_out.weight, std=0.05)
        inv.conditioning.feature_mean.normal_()
    return inv, feats


# ---------------------------------------------------------------- the optimised sampling path
@pytest.mark.parametrize("guidance,mode,scheduler", [(2.0, "features", "dpm++"), (3.0, "prompt", "ddim"),
                                                     (1.0, "features", "dpm++")])
@pytest.mark.parametrize("batch_size", [64, 4])  # 4 splits the second map's samples across chunks
def test_fast_sampling_matches_the_slow_path(mini_inv, guidance, mode, scheduler, batch_size):
    inv, feats = mini_inv
    kw = dict(num_samples=3, num_inference_steps=2, guidance_scale=guidance, scheduler=scheduler, seed=1,
              guidance_mode=mode)
    fast = inv.invert(feats, progress=False, batch_size=batch_size, feature_guidance_scale=0, **kw)
    slow = slow_invert(inv, feats, batch_size=batch_size, **kw)
    assert fast.shape == slow.shape == (2, 3, 3, 64, 64)
    assert (fast - slow).abs().max() < 1e-4, (fast - slow).abs().max()


def test_sampling_restores_the_conditioning_module_even_after_an_error(mini_inv, monkeypatch):
    inv, feats = mini_inv
    assert isinstance(inv.controlnet.controlnet_cond_embedding, FeatureConditioning)

    def boom(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(inv.base, "decode", boom)
    with pytest.raises(RuntimeError, match="boom"):
        inv.invert(feats[:1], num_samples=1, num_inference_steps=1, progress=False, feature_guidance_scale=0)
    assert isinstance(inv.controlnet.controlnet_cond_embedding, FeatureConditioning)


def test_sampling_output_is_an_ordinary_tensor(mini_inv):
    """Inference mode inside ``invert`` must not leak inference tensors to the caller."""
    inv, feats = mini_inv
    out = inv.invert(feats[:1], num_samples=1, num_inference_steps=1, progress=False, feature_guidance_scale=0)
    assert not out.is_inference()
    out.requires_grad_(True)  # would raise on an inference tensor


def test_shipped_inverter_fast_path_matches_slow_path():
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    feats = torch.randn(2, *inv.feature_shape).abs()
    kw = dict(num_samples=2, num_inference_steps=2, guidance_scale=2.0, scheduler="dpm++", seed=0,
              guidance_mode="features")
    fast = inv.invert(feats, progress=False, batch_size=3, feature_guidance_scale=0, **kw)
    slow = slow_invert(inv, feats, batch_size=3, **kw)
    assert (fast - slow).abs().max() < 1e-4


# ---------------------------------------------------------------- memory bounded by batch_size
def test_chunked_sampling_memory_is_bounded_by_batch_size(mini_inv):
    """The largest batch the denoiser sees is ``2 * batch_size`` (guidance), whatever the input size."""
    inv, feats = mini_inv
    seen = []
    hook = inv.base.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        inv.invert(feats.repeat(4, 1, 1, 1), num_samples=2, num_inference_steps=1, progress=False, batch_size=5,
                   feature_guidance_scale=0)
    finally:
        hook.remove()
    assert max(seen) == 10 and sum(seen) == 2 * 16


# ---------------------------------------------------------------- the benchmarks run at CI size
def test_gpu_scale_runs_tiny_on_cpu(tmp_path):
    bench = load_benchmark("gpu_scale")
    record = bench.main(bench.parse_args(["--tiny", "--classifiers", "resnet18", "--out",
                                          str(tmp_path / "gpu_scale.json"), "--no-progress"]))
    saved = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert saved["device"] and saved["tiny"] is True
    for key in ("train_official", "train_ours", "sample_ddim50", "sample_default"):
        assert record[key]["images_per_s"] > 0, key
    assert "| " in bench.table(record)


def test_train_throughput_designs_run(tmp_path):
    bench = load_benchmark("train_throughput")
    res = bench.main(bench.parse_args(["--batch-size", "4", "--official-batch-size", "2", "--train-images", "8",
                                       "--timed-steps", "1", "--warmup-steps", "0", "--classifiers", "tinyworld-cnn",
                                       "--no-compile", "--threads", "1", "--json", str(tmp_path / "r.json")]))
    r = res["tinyworld-cnn"]
    assert set(r["images_per_s"]) == {"official", "ours_b8_fp32", "ours"}
    assert all(v > 0 for v in r["images_per_s"].values()) and r["cache_s_per_1k_images"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["tinyworld-cnn"]["ratio"] == pytest.approx(r["ratio"])


# ---------------------------------------------------------------- the optimised training path
def test_cached_features_train_to_the_weights_of_in_step_features(tmp_path):
    """--feature-cache (features of the fixed training set computed once, kept as fp16) against features computed
    in every step: the same batches, and the same ControlNet after a few steps, up to the features' fp16 rounding
    (a small fraction of one step's update at lr 3e-4)."""
    from workbench.training import featinv

    weights = {}
    for cache in (True, False):
        inv = featinv.train_featinv(classifier="tinyworld-cnn", layer="stages.3", steps=3, batch_size=4,
                                    out=tmp_path / str(cache), device="cpu", train_images=16, eval_images=0,
                                    progress=False, feature_cache=cache, mixed_precision="no")
        weights[cache] = inv.controlnet.state_dict()
    for k, v in weights[True].items():
        torch.testing.assert_close(v, weights[False][k], rtol=0, atol=1e-4, msg=k)
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "True" / "cache").iterdir())
    assert cached == ["features", "latents"]
    assert [p.name.split("-")[0] for p in (tmp_path / "False" / "cache").iterdir()] == ["latents"]


def test_cached_tensor_is_computed_once_and_keyed(tmp_path):
    from workbench.training.common import cached_tensor, state_fingerprint

    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(2, 3)

    a = cached_tensor(tmp_path, "x", "k1", compute, half=True)
    b = cached_tensor(tmp_path, "x", "k1", compute, half=True)
    assert len(calls) == 1 and a.dtype == torch.float16 and torch.equal(a, b)
    cached_tensor(tmp_path, "x", "k2", compute)  # another key: computed again
    assert len(calls) == 2
    (tmp_path / "x-k1.safetensors").write_bytes(b"truncated")  # a killed run's file is recomputed, not trusted
    assert torch.equal(cached_tensor(tmp_path, "x", "k1", compute, half=True), a) and len(calls) == 3
    big = cached_tensor(None, "y", "k", lambda: torch.tensor([1e5]), half=True)  # beyond fp16: stays fp32
    assert big.dtype == torch.float32 and not (tmp_path / "y-k.safetensors").exists()
    m = torch.nn.Linear(2, 2)
    key = state_fingerprint(m, extra="a")
    assert key == state_fingerprint(m, extra="a") != state_fingerprint(m, extra="b")
    with torch.no_grad():
        m.weight.add_(1e-3)
    assert state_fingerprint(m, extra="a") != key


def _loss_and_grads(inv, z0, f, **autocast):
    g = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", **autocast):
        loss = inv.training_loss(z0, f, noise_scheduler=inv.base.make_scheduler("ddpm"), generator=g, drop_prob=0.0)
    loss.backward()
    grads = [p.grad.clone() for p in inv.controlnet.parameters() if p.grad is not None]
    inv.controlnet.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.fixture(scope="module")
def shipped_step():
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    clf = wb.load_classifier("tinyworld-cnn")
    ds = wb.TinyWorld("train", size=8, seed=3)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    z0 = inv.base.encode(x)
    f = wb.metrics.extract_features(clf, x, "stages.3")
    inv.controlnet.requires_grad_(True).train()
    return inv, z0, f


def test_bf16_autocast_training_loss_is_close_to_fp32(shipped_step):
    """--mixed-precision auto/bf16: the loss and the gradient direction of a step stay those of fp32."""
    inv, z0, f = shipped_step
    l32, g32 = _loss_and_grads(inv, z0, f, enabled=False)
    l16, g16 = _loss_and_grads(inv, z0, f, dtype=torch.bfloat16, enabled=True)
    assert abs(l16 - l32) / l32 < 0.03
    flat32, flat16 = torch.cat([g.flatten() for g in g32]), torch.cat([g.flatten() for g in g16])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.98


def test_compiled_training_step_matches_eager(shipped_step):
    """--compile: torch.compile of the ControlNet and the UNet gives eager's loss and gradients."""
    inv, z0, f = shipped_step
    l_eager, g_eager = _loss_and_grads(inv, z0, f, enabled=False)
    cnet, unet = inv.controlnet, inv.base.unet
    try:
        inv.controlnet, inv.base.unet = torch.compile(cnet), torch.compile(unet)
        l_comp, g_comp = _loss_and_grads(inv, z0, f, enabled=False)
    finally:
        inv.controlnet, inv.base.unet = cnet, unet
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-4, atol=1e-6)
    assert len(g_comp) == len(g_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
