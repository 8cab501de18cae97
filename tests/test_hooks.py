"""Contracts of workbench.hooks over every architecture in ``conftest.ARCHS``, plus bad-input errors."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.errors import BadInputError, HookError, InterventionError, LayerNotFoundError
from workbench.hooks import FeatureCache

from conftest import ARCHS, _built, assert_no_hooks


def _input_size(spec):
    return (3, *spec.size)


# ---- contracts over the architecture list ---------------------------------------------------

def test_captured_shapes_equal_layer_table(arch):
    _, spec, model, x = arch
    table = wb.layer_table(model, input_size=_input_size(spec))
    assert {"name", "module", "shape", "stride"} <= set(table.columns)
    assert set(spec.four) <= set(table.name)
    names = set(table.name)
    with torch.no_grad():
        _, cache = wb.run_with_cache(model, x[:1], lambda n: n in names)
    assert set(cache) == names
    for row in table.itertuples():
        assert tuple(cache[row.name].shape[1:]) == row.shape, row.name
    for name in spec.four:  # the four chosen layers are spatial NCHW maps
        row = table.set_index("name").loc[name]
        assert len(row["shape"]) == 3 and isinstance(row["stride"], int), (name, row["shape"], row["stride"])
    assert_no_hooks(model)


def test_capture_leaves_logits_bit_identical(arch):
    _, spec, model, x = arch
    with torch.no_grad():
        plain = model(x)
        logits, cache = wb.run_with_cache(model, x, list(spec.four))
        with wb.capture(model, spec.mid) as cache2:
            again = model(x)
    assert torch.equal(plain, logits) and torch.equal(plain, again)
    assert isinstance(cache, FeatureCache) and list(cache) == list(spec.four)
    assert torch.equal(cache[spec.mid], cache2[spec.mid])
    for name in spec.four:
        assert cache[name].ndim == 4 and cache[name].shape[0] == 2
    assert_no_hooks(model)


def test_identity_replacement_leaves_logits_unchanged(arch):
    _, spec, model, x = arch
    seen = {}

    def clone(act, *, name):
        seen[name] = act.shape
        return act.clone()

    with torch.no_grad():
        plain = model(x)
        out = wb.run_with_hooks(model, x, {name: clone for name in spec.four})
        same = wb.run_with_hooks(model, x, {spec.mid: lambda act, *, name: act})  # the same object
        noop = wb.run_with_hooks(model, x, {spec.mid: lambda act, *, name: None})
    assert set(seen) == set(spec.four)
    assert torch.equal(out, plain) and torch.equal(same, plain) and torch.equal(noop, plain)
    assert_no_hooks(model)


def test_zero_ablation_of_all_channels_changes_logits(arch):
    _, spec, model, x = arch
    with torch.no_grad():
        plain, cache = wb.run_with_cache(model, x, spec.mid)
        channels = range(cache[spec.mid].shape[1])
        ablated = wb.run_with_hooks(model, x, {spec.mid: wb.ablate_channels(channels)})
        _, after = wb.run_with_cache(model, x, spec.mid)
    assert not torch.allclose(plain, ablated)
    assert torch.equal(after[spec.mid], cache[spec.mid])  # nothing stays edited
    assert_no_hooks(model)


def test_no_hook_survives_an_exception(arch):
    _, spec, model, x = arch

    with pytest.raises(RuntimeError, match="boom"):
        with wb.capture(model, list(spec.four)):
            model(x)
            raise RuntimeError("boom")
    assert_no_hooks(model)

    def explode(act, *, name):
        raise RuntimeError("boom in hook")

    with pytest.raises(RuntimeError, match="boom in hook"):
        wb.run_with_hooks(model, x, {spec.mid: explode})
    assert_no_hooks(model)

    with pytest.raises(HookError, match="replacement must keep the shape"):
        wb.run_with_hooks(model, x, {spec.mid: lambda act, *, name: act[:, :1]})
    assert_no_hooks(model)


# ---- layouts ----------------------------------------------------------------------------------

def test_vit_prefix_tokens_are_kept_aside():
    model = _built("vit_reg")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, cache = wb.run_with_cache(model, x, ["blocks.1", "patch_embed"])
        tokens = {}
        h = model.model.blocks[1].register_forward_hook(lambda m, i, o: tokens.setdefault("t", o))
        try:
            model(x)
        finally:
            h.remove()
    assert cache["blocks.1"].shape == (2, 64, 8, 8)
    assert cache.prefix["blocks.1"].shape == (2, 3, 64)  # class token + 2 registers
    assert "patch_embed" not in cache.prefix  # no prefix there
    # the map is the patch tokens in row-major grid order
    assert torch.equal(cache["blocks.1"][:, :, 2, 5], tokens["t"][:, 3 + 2 * 8 + 5])
    assert torch.equal(cache.prefix["blocks.1"], tokens["t"][:, :3])
    assert "blocks.1: [2, 64, 8, 8] + prefix [2, 3, 64]" in repr(cache)


def test_swin_nhwc_becomes_nchw():
    model = _built("swinv2")
    x = torch.rand(1, 3, 64, 64)
    native = {}
    h = model.model.layers[1].register_forward_hook(lambda m, i, o: native.setdefault("o", o))
    try:
        with torch.no_grad():
            _, cache = wb.run_with_cache(model, x, "layers.1")
    finally:
        h.remove()
    assert native["o"].shape == (1, 8, 8, 64)
    assert torch.equal(cache["layers.1"], native["o"].permute(0, 3, 1, 2))


def test_replacement_reaches_the_forward_pass_in_native_layout():
    model = _built("swinv2")
    x = torch.rand(1, 3, 64, 64)
    seen = {}
    hook = model.model.layers[2].register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0]))
    try:
        with torch.no_grad():
            wb.run_with_hooks(model, x, {"layers.1": lambda act, *, name: torch.zeros_like(act)})
    finally:
        hook.remove()
    assert seen["in"].shape == (1, 8, 8, 64) and not seen["in"].any()


# ---- bad input --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet():
    return _built("resnet18")


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 64, 64), "add a batch dimension"),
    (torch.rand(2, 1, 64, 64), "expected 3 channels"),
    (torch.rand(2, 64, 64, 3), "expected 3 channels"),
    ((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), "float"),
    (torch.full((2, 3, 64, 64), float("nan")), "NaN or Inf"),
    (torch.tensor(float("inf")).expand(2, 3, 64, 64), "NaN or Inf"),
])
def test_bad_input_is_refused(resnet, bad, match):
    with pytest.raises(BadInputError, match=match):
        wb.run_with_cache(resnet, bad, "layer3")
    with pytest.raises(BadInputError, match=match):
        wb.run_with_hooks(resnet, bad, {"layer3": wb.ablate_channels(0)})
    assert_no_hooks(resnet)


def test_unknown_layer_lists_closest_names(resnet):
    with pytest.raises(LayerNotFoundError, match=r"'layer33'.*layer3") as info:
        wb.run_with_cache(resnet, torch.rand(1, 3, 64, 64), ["layer2", "layer33"])
    assert isinstance(info.value, KeyError)
    with pytest.raises(LayerNotFoundError, match="matched no layer"):
        wb.run_with_cache(resnet, torch.rand(1, 3, 64, 64), lambda n: n.startswith("blocks"))
    with pytest.raises(LayerNotFoundError, match="stages"):
        wb.run_with_hooks(_built("convnext_atto"), torch.rand(1, 3, 64, 64), {"stage.2": lambda a, *, name: a})
    assert_no_hooks(resnet)


def test_cache_lookup_of_uncaptured_name(resnet):
    _, cache = wb.run_with_cache(resnet, torch.rand(1, 3, 64, 64), "layer3")
    with pytest.raises(KeyError, match="layer3"):
        cache["layer4"]
    assert cache.get("layer4") is None


def test_torchvision_model_works_for_plain_hooks():
    model = _built("tv_resnet18")
    x = torch.rand(2, 3, 64, 64)
    table = wb.layer_table(model, input_size=(3, 64, 64))
    assert table.set_index("name").loc["layer3", "shape"] == (256, 4, 4)
    assert table.set_index("name").loc["layer3", "stride"] == 16
    assert table.set_index("name").loc["fc", "stride"] is None
    with pytest.raises(BadInputError, match="input size"):
        wb.layer_table(model)
    logits, cache = wb.run_with_cache(model, x, "layer3")
    assert logits.shape == (2, 10) and cache["layer3"].shape == (2, 256, 4, 4)


# ---- interventions ----------------------------------------------------------------------------

def test_ablate_channels_zero_and_mean():
    act = torch.randn(2, 6, 4, 4)
    zero = wb.ablate_channels([1, 4])(act, name="x")
    assert (zero[:, [1, 4]] == 0).all() and torch.equal(zero[:, [0, 2, 3, 5]], act[:, [0, 2, 3, 5]])
    mean = wb.ablate_channels([2], mode="mean")(act, name="x")
    assert torch.allclose(mean[:, 2], act[:, 2].mean().expand(2, 4, 4))
    means = torch.arange(6.0)
    given = wb.ablate_channels(3, mode="mean", means=means)(act, name="x")
    assert (given[:, 3] == 3.0).all()
    assert repr(wb.ablate_channels([3, 7])) == "ablate_channels([3, 7], mode='zero')"
    assert repr(wb.ablate_channels([1], mode="mean", means=means)) == "ablate_channels([1], mode='mean', means=Tensor[6])"


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": [-1]}, "non-negative"),
    ({"channels": ["a"]}, "non-negative"),
    ({"channels": [1.5]}, "non-negative"),
    ({"channels": []}, "no channels"),
    ({"channels": [1], "mode": "max"}, "mode"),
    ({"channels": [1], "means": torch.zeros(4)}, "only used with mode='mean'"),
    ({"channels": [1], "mode": "mean", "means": torch.zeros(2, 2)}, r"means is Tensor\[C\]"),
])
def test_ablate_channels_bad_arguments(kwargs, match):
    with pytest.raises(InterventionError, match=match):
        wb.ablate_channels(**kwargs)


def test_ablate_channels_beyond_the_layer(resnet):
    with pytest.raises(InterventionError, match=r"layer 'layer3': channel indices \[999\] are out of range: "
                                                r"this map has 256 channels"):
        wb.run_with_hooks(resnet, torch.rand(1, 3, 64, 64), {"layer3": wb.ablate_channels([3, 999])})
    with pytest.raises(InterventionError, match=r"layer 'layer3': means is Tensor\[256\]"):
        wb.run_with_hooks(resnet, torch.rand(1, 3, 64, 64),
                          {"layer3": wb.ablate_channels([3], mode="mean", means=torch.zeros(5))})
    assert_no_hooks(resnet)


def test_add_direction():
    act = torch.zeros(2, 3, 4, 4)
    d = torch.tensor([1.0, 0.0, -1.0])
    out = wb.add_direction(d, 2.0)(act, name="x")
    assert torch.equal(out[0, :, 1, 1], 2 * d)
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1
    masked = wb.add_direction(d, 1.0, mask=mask)(act, name="x")
    assert torch.equal(masked[:, :, 0, 0], d.expand(2, 3)) and not masked[:, :, 1:].any()
    batch_mask = wb.add_direction(d, 1.0, mask=torch.ones(2, 1, 4, 4))(act, name="x")
    assert torch.equal(batch_mask, d.view(1, 3, 1, 1).expand(2, 3, 4, 4))
    assert repr(wb.add_direction(d, 2, mask=mask)) == "add_direction(direction=Tensor[3], alpha=2.0, mask=Tensor[4, 4])"


def test_add_direction_errors(resnet):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(InterventionError, match="direction is Tensor"):
        wb.add_direction(torch.zeros(2, 3), 1.0)
    with pytest.raises(InterventionError, match="mask is Tensor"):
        wb.add_direction(torch.zeros(3), 1.0, mask=torch.zeros(3, 4, 4))
    with pytest.raises(InterventionError, match="layer 'layer3': direction has 3 entries, but the map has 256"):
        wb.run_with_hooks(resnet, x, {"layer3": wb.add_direction(torch.zeros(3), 1.0)})
    with pytest.raises(InterventionError, match=r"layer 'layer3': mask is \(8, 8\) but the map is 4x4"):
        wb.run_with_hooks(resnet, x, {"layer3": wb.add_direction(torch.zeros(256), 1.0, mask=torch.ones(8, 8))})
    assert_no_hooks(resnet)


def test_hooks_apply_the_same_edits_as_the_tensor_functions(resnet):
    """The hook factories and the analysis functions are one edit: same output, same error, same message."""
    from workbench.analysis import ablation, concepts, steering

    x = torch.rand(2, 3, 64, 64)
    _, cache = wb.run_with_cache(resnet, x, "layer3")
    act = cache["layer3"]
    means = act.mean((0, 2, 3))
    hook = wb.ablate_channels([3, 7], mode="mean", means=means)
    assert torch.equal(hook(act, name="layer3"), ablation.ablate_features(act, [3, 7], mode="mean", means=means))
    d = torch.randn(256)
    concept = concepts.Concept("d", "layer3", None, d, d[None], 1.5, "mean")
    mask = torch.eye(4)
    assert torch.equal(wb.add_direction(d, 2.0 * 1.5, mask=mask)(act, name="layer3"),
                       steering.steer(act, concept, 2.0, mask=mask))
    for edit in (lambda: wb.ablate_channels([300])(act, name="layer3"),
                 lambda: ablation.ablate_features(act, [300]),
                 lambda: wb.add_direction(d, 1.0, mask=torch.ones(8, 8))(act, name="layer3"),
                 lambda: steering.steer(act, concept, 1.0, mask=torch.ones(8, 8))):
        with pytest.raises(InterventionError):
            edit()


def test_ablate_channels_batch_mean_on_tokens():
    act = torch.randn(3, 5)                                    # a pooled layer: Tensor[B, C]
    out = wb.ablate_channels([1, 4], mode="mean")(act, name="x")
    assert torch.allclose(out[:, 1], act[:, 1].mean().expand(3)) and torch.equal(out[:, 0], act[:, 0])


def test_add_direction_moves_logits_on_vit():
    model = _built("vit_tiny")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        moved = wb.run_with_hooks(model, x, {"blocks.5": wb.add_direction(torch.randn(192), 5.0)})
    assert not torch.allclose(plain, moved)


def test_gradients_flow_with_detach_false():
    model = _built("convnext_atto")
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    _, cache = wb.run_with_cache(model, x, "stages.1", detach=False)
    cache["stages.1"].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_layer_table_restores_training_mode():
    model = _built("resnet18")
    model.train()
    try:
        wb.layer_table(model)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_ablate_features_ignores_means_in_zero_mode_as_the_sweeps_pass_them():
    from workbench.interventions import ablate_features

    f = torch.randn(2, 4, 3, 3)
    out = ablate_features(f, [1], mode="zero", means=torch.ones(4))
    assert torch.equal(out[:, 1], torch.zeros(2, 3, 3)) and torch.equal(out[:, 0], f[:, 0])
