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

from test_featinv import make_condition_matter, miniature_base

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


slow_invert = load_benchmark("sampling_path").slow_invert


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared CPU, more threads per process make these tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    kw = dict(num_samples=3, steps=2, guidance=guidance, scheduler=scheduler, seed=1, guidance_mode=mode)
    fast = inv.invert(feats, progress=False, batch_size=batch_size, **kw)
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
        inv.invert(feats[:1], num_samples=1, steps=1, progress=False)
    assert isinstance(inv.controlnet.controlnet_cond_embedding, FeatureConditioning)


def test_sampling_output_is_an_ordinary_tensor(mini_inv):
    """Inference mode inside ``invert`` must not leak inference tensors to the caller."""
    inv, feats = mini_inv
    out = inv.invert(feats[:1], num_samples=1, steps=1, progress=False)
    assert not out.is_inference()
    out.requires_grad_(True)  # would raise on an inference tensor


def test_shipped_inverter_fast_path_matches_slow_path():
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    feats = torch.randn(2, *inv.feature_shape).abs()
    kw = dict(num_samples=2, steps=2, guidance=2.0, scheduler="dpm++", seed=0, guidance_mode="features")
    fast = inv.invert(feats, progress=False, batch_size=3, **kw)
    slow = slow_invert(inv, feats, batch_size=3, **kw)
    assert (fast - slow).abs().max() < 1e-4


# ---------------------------------------------------------------- memory bounded by batch_size
def test_chunked_sampling_memory_is_bounded_by_batch_size(mini_inv):
    """The largest batch the denoiser sees is ``2 * batch_size`` (guidance), whatever the input size."""
    inv, feats = mini_inv
    seen = []
    hook = inv.base.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        inv.invert(feats.repeat(4, 1, 1, 1), num_samples=2, steps=1, progress=False, batch_size=5)
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
    res = bench.main(bench.parse_args(["--batch", "2", "--images", "8", "--repeats", "1", "--warmup", "0",
                                       "--classifiers", "tinyworld-cnn"]))
    assert all(v > 0 for v in res["tinyworld-cnn"].values()) and len(res["tinyworld-cnn"]) == 4
