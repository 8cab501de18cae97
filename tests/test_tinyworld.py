"""Contracts of TinyWorld: determinism, disjoint splits, factor ranges, held-out combinations, visibility."""
from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest
import torch

from workbench import tinyworld as tw
from workbench.tinyworld import (BACKGROUNDS, CLASSES, DEFAULT_FACTORS, FACTOR_NAMES, FACTOR_PERIODS, FACTOR_RANGES,
                                 IMAGE_SIZE, OOD_COMBOS, TinyWorld, factors_from_dicts, render,
                                 render_batch, sample_factors)

NUMERIC = [n for n in FACTOR_NAMES if n not in ("shape", "background", "distractor_shape", "distractor")]


def _digests(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images}


def _subset(factors: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    return {name: v[idx] for name, v in factors.items()}


# -- constants ---------------------------------------------------------------------------------

def test_constants():
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert BACKGROUNDS == ("flat", "gradient", "stripes", "noise")
    assert IMAGE_SIZE == 32
    assert set(DEFAULT_FACTORS) == set(FACTOR_RANGES) == set(FACTOR_NAMES)
    for shape, background in OOD_COMBOS:
        assert shape in CLASSES and background in BACKGROUNDS


# -- sampling ----------------------------------------------------------------------------------

def test_sample_factors_depend_only_on_index():
    whole = sample_factors(300, seed=3, split="train")
    part = sample_factors(50, seed=3, split="train", start=120)
    single = sample_factors(1, seed=3, split="train", start=299)
    for name in FACTOR_NAMES:
        assert torch.equal(part[name], whole[name][120:170]), name
        assert torch.equal(single[name], whole[name][299:]), name
    other_seed = sample_factors(300, seed=4, split="train")
    assert not torch.equal(other_seed["x"], whole["x"])


def test_sample_factors_within_ranges_and_inside_frame():
    f = sample_factors(20_000, seed=0, split="train")
    for name in NUMERIC:
        low, high = FACTOR_RANGES[name]
        assert low <= f[name].min().item() and f[name].max().item() <= high, name
    assert f["shape"].dtype == torch.int64 and f["distractor"].dtype == torch.bool
    assert set(f["shape"].tolist()) == set(range(len(CLASSES)))
    assert set(f["background"].tolist()) == set(range(len(BACKGROUNDS)))
    for c in ("x", "y"):
        assert (f[c] >= f["size"] - 1e-6).all() and (f[c] <= 1 - f["size"] + 1e-6).all()
    assert 0.4 < f["distractor"].float().mean().item() < 0.6


def test_sample_factors_is_fast():
    import time
    start = time.perf_counter()
    sample_factors(100_000, seed=0, split="train")
    assert time.perf_counter() - start < 3.0


def _pairs(f: dict[str, torch.Tensor]) -> set[tuple[str, str]]:
    return {(CLASSES[s], BACKGROUNDS[b]) for s, b in zip(f["shape"].tolist(), f["background"].tolist())}


@pytest.mark.parametrize("split", tw.SPLITS)
def test_ood_combos_held_out_of_every_split(split):
    pairs = _pairs(sample_factors(20_000, seed=0, split=split))
    assert not pairs & OOD_COMBOS
    assert len(pairs) == len(CLASSES) * len(BACKGROUNDS) - len(OOD_COMBOS)  # everything else occurs
    assert _pairs(sample_factors(500, seed=0, split=split, ood=True)) == set(OOD_COMBOS)


def test_ood_dataset_items():
    ds = TinyWorld("test", size=20, ood=True)
    for i in range(len(ds)):
        f = ds[i]["factors"]
        assert (f["shape"], f["background"]) in OOD_COMBOS
    assert not _pairs(TinyWorld("test", size=2000).factors) & OOD_COMBOS


# -- rendering ---------------------------------------------------------------------------------

def test_render_batch_shape_dtype_range():
    images = render_batch(sample_factors(200, seed=0, split="val"))
    assert images.shape == (200, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert len(_digests(images)) == 200


def test_render_batch_deterministic_across_batch_sizes():
    f = sample_factors(300, seed=1, split="train")
    whole = render_batch(f)
    for step in (1, 7, 64):
        pieces = torch.cat([render_batch(_subset(f, slice(i, i + step))) for i in range(0, 300, step)])
        assert torch.equal(pieces, whole), step
    shuffled = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(render_batch(_subset(f, shuffled)), whole[shuffled])
    assert torch.equal(render_batch(f), whole)


def test_render_batch_rejects_bad_factors():
    f = sample_factors(4, seed=0, split="train")
    with pytest.raises(ValueError, match="noise_seed"):
        render_batch({k: v for k, v in f.items() if k != "noise_seed"})
    with pytest.raises(ValueError, match="size"):
        render_batch({**f, "size": torch.full((4,), 0.9)})
    with pytest.raises(ValueError, match="shape"):
        render_batch({**f, "shape": torch.full((4,), len(CLASSES))})


# Each factor, a base it matters in (beyond the defaults), and a second value.
_CHANGES = {
    "shape": ({}, "star"), "hue": ({}, 0.5), "saturation": ({}, 0.5), "value": ({}, 0.5),
    "size": ({}, 0.2), "x": ({}, 0.4), "y": ({}, 0.4), "rotation": ({"shape": "star"}, 0.5),
    "background": ({}, "stripes"), "bg_hue": ({}, 0.2), "bg_hue2": ({"background": "gradient"}, 0.2),
    "bg_saturation": ({}, 0.1), "bg_value": ({}, 0.9), "bg_value2": ({"background": "gradient"}, 0.9),
    "bg_angle": ({"background": "gradient"}, 1.0), "stripe_freq": ({"background": "stripes"}, 5.0),
    "stripe_phase": ({"background": "stripes"}, 0.5), "noise_seed": ({"background": "noise"}, 1),
    "distractor": ({}, True), "distractor_shape": ({"distractor": True}, "cross"),
    "distractor_hue": ({"distractor": True}, 0.6), "distractor_saturation": ({"distractor": True}, 0.5),
    "distractor_value": ({"distractor": True}, 0.4), "distractor_size": ({"distractor": True}, 0.08),
    "distractor_x": ({"distractor": True}, 0.3), "distractor_y": ({"distractor": True}, 0.3),
    "distractor_rotation": ({"distractor": True, "distractor_shape": "triangle"}, 1.0),
}


def test_changes_cover_every_factor():
    assert set(_CHANGES) == set(FACTOR_NAMES)


@pytest.mark.parametrize("name", FACTOR_NAMES)
def test_render_responds_to_each_factor(name):
    base, value = _CHANGES[name]
    before, after = render(**base), render(**base, **{name: value})
    assert before.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert (before - after).abs().sum() > 1.0, name


@pytest.mark.parametrize("name", sorted(FACTOR_PERIODS))
def test_circular_factors_render_alike_a_period_apart(name):
    """FACTOR_PERIODS is what the analysis modules treat as circular: a value and the value plus its period (here
    the ends of the factor's range) give the same image, while a value in between differs."""
    base, value = _CHANGES[name]
    low, high = FACTOR_RANGES[name]
    assert high - low == pytest.approx(FACTOR_PERIODS[name])
    start, end = render(**base, **{name: low}), render(**base, **{name: high})
    assert (start - end).abs().max() < 1e-3, name
    assert (start - render(**base, **{name: low + FACTOR_PERIODS[name] / 4})).abs().sum() > 1.0, name


def test_render_defaults_and_label_key():
    assert torch.equal(render(), render(**DEFAULT_FACTORS))
    assert torch.equal(render(shape="ring"), render(shape="ring", label=5))


@pytest.mark.parametrize("name, value", [
    ("size", 0.9), ("hue", -0.1), ("saturation", 0.2), ("x", 1.5), ("rotation", 7.0), ("stripe_freq", 10.0),
    ("distractor_size", 0.3), ("noise_seed", -1), ("size", float("nan")),
])
def test_render_out_of_range_names_factor_value_and_range(name, value):
    low, high = FACTOR_RANGES[name]
    with pytest.raises(ValueError) as info:
        render(**{name: value})
    message = str(info.value)
    assert name in message and str(value) in message and str(low) in message and str(high) in message


@pytest.mark.parametrize("name, value", [("shape", "blob"), ("background", "plaid"), ("distractor_shape", 3)])
def test_render_unknown_category(name, value):
    with pytest.raises(ValueError, match=name):
        render(**{name: value})


def test_render_unknown_factor_lists_valid_ones():
    with pytest.raises(TypeError, match="colour") as info:
        render(colour=0.3)
    assert "bg_hue" in str(info.value) and "rotation" in str(info.value)


def test_noise_background_is_smooth():
    images = torch.stack([render(background="noise", noise_seed=s, bg_value=0.05, bg_value2=0.95, size=0.18,
                                 x=0.18, y=0.18) for s in range(8)])
    background = images[:, :, 16:, 16:]                 # away from the object
    step = (background[..., 1:] - background[..., :-1]).abs().mean()
    assert background.std() > 0.1 and step < 0.06     # varied, yet neighbouring pixels are close


def test_object_contrasts_with_background():
    f = sample_factors(1000, seed=0, split="test")
    f["distractor"] = torch.zeros_like(f["distractor"])
    images = render_batch(f)
    # Pixels the object covers: those that change when only the object's brightness changes.
    dim, bright = dict(f), dict(f)
    dim["value"], bright["value"] = torch.full_like(f["value"], 0.3), torch.full_like(f["value"], 1.0)
    dim["saturation"] = bright["saturation"] = torch.ones_like(f["saturation"])
    change = (render_batch(dim) - render_batch(bright)).abs().sum(1)              # [B, 32, 32]
    inside = change > 0.99 * change.flatten(1).amax(1).view(-1, 1, 1)
    outside = change == 0
    assert inside.sum((1, 2)).min() > 10 and outside.sum((1, 2)).min() > 300

    def mean(mask):  # [B, 3]
        return (images * mask[:, None]).sum((2, 3)) / mask.sum((1, 2))[:, None]

    diff = mean(inside) - mean(outside)
    luma = diff @ torch.tensor([0.299, 0.587, 0.114])
    assert diff.norm(dim=1).min() > 0.3
    assert luma.abs().min() > 0.1


# -- dataset -----------------------------------------------------------------------------------

def test_dataset_item_contract():
    ds = TinyWorld("val", size=40)
    item = ds[5]
    assert set(item) == {"image", "label", "factors"}
    assert item["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert isinstance(item["label"], int) and CLASSES[item["label"]] == item["factors"]["shape"]
    assert json.loads(json.dumps(item["factors"])) == item["factors"]
    assert set(item["factors"]) == set(FACTOR_NAMES) | {"label"}
    assert torch.equal(ds[-1]["image"], ds[39]["image"])
    with pytest.raises(IndexError):
        ds[40]
    assert len(ds) == 40 and "val" in repr(ds)


def test_render_reproduces_dataset_items():
    ds = TinyWorld("train", size=50, seed=2)
    for i in (0, 17, 49):
        item = ds[i]
        assert torch.equal(render(**item["factors"]), item["image"])


def test_dataset_deterministic_and_order_independent():
    a = TinyWorld("train", size=300, seed=5, chunk_size=64)
    b = TinyWorld("train", size=300, seed=5, chunk_size=100, cache_chunks=1)
    forward = torch.stack([a[i]["image"] for i in range(300)])
    backward = torch.stack([b[i]["image"] for i in reversed(range(300))]).flip(0)
    assert torch.equal(forward, backward)
    assert torch.equal(a.images(), forward)
    picks = [299, 3, 150, 3]
    assert torch.equal(b.images(picks), forward[picks])
    assert torch.equal(a.labels(picks), torch.tensor([a[i]["label"] for i in picks]))
    assert not torch.equal(TinyWorld("train", size=300, seed=6).images(), forward)


def test_splits_are_disjoint():
    digests = {split: _digests(TinyWorld(split, size=1500).images()) for split in tw.SPLITS}
    digests["ood"] = _digests(TinyWorld("test", size=300, ood=True).images())
    names = list(digests)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not digests[first] & digests[second], (first, second)


def test_default_sizes_and_argument_errors():
    assert [len(TinyWorld(s)) for s in tw.SPLITS] == [50_000, 2_000, 2_000]
    with pytest.raises(ValueError, match="valid") as info:
        TinyWorld("holdout")
    assert "holdout" in str(info.value) and "train" in str(info.value)
    with pytest.raises(ValueError, match="-3"):
        TinyWorld("train", size=-3)
    assert len(TinyWorld("train", size=0).images()) == 0


def test_factor_table():
    ds = TinyWorld("test", size=25)
    table = ds.factor_table()
    assert isinstance(table, pd.DataFrame) and len(table) == 25
    assert set(FACTOR_NAMES) | {"label"} <= set(table.columns)
    assert table.loc[7, "shape"] == ds[7]["factors"]["shape"]
    assert math.isclose(table.loc[7, "hue"], ds[7]["factors"]["hue"], rel_tol=1e-6)
    assert torch.equal(torch.as_tensor(table["label"].to_numpy().copy()), ds.labels())


def test_factors_from_dicts_round_trip():
    f = sample_factors(10, seed=0, split="val")
    again = factors_from_dicts(tw.factors_to_dicts(f), fill_defaults=False)
    for name in FACTOR_NAMES:
        assert torch.equal(again[name], f[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    f = sample_factors(2048, seed=0, split="train")
    cpu, gpu = render_batch(f), render_batch(f, device="cuda")
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
