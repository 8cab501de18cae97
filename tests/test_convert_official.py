"""``workbench convert-official``: an official FeatInv checkpoint becomes a workbench inverter folder.

The checkpoint is synthetic: random tiny weights under the key names of the official code (AI4HealthUOL/FeatInv,
``code/cldm/cldm.py``'s ``ControlNet`` with its ``FeatInvInputHintBlock``, inside ``ControlLDM`` as
``control_model.``), saved as a Lightning checkpoint would hold them. The reference is :func:`_reference_forward`, a
re-implementation of that ``ControlNet.forward`` written here from the official source (ldm's ``ResBlock``,
``SpatialTransformer``, ``Downsample``, ``timestep_embedding``), sharing no code with diffusers: the converted
ControlNet (diffusers' ``ControlNetModel`` with workbench's ``FeatureConditioning``) must give its 13 (here 5)
outputs.
"""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.cli import main as cli_main
from workbench.convert_official import convert_official, converted_inverter, official_params
from workbench.errors import InverterMismatchError, WeightsUnavailableError
from workbench.presets import MINISD, OFFICIAL_PROMPT, get

# the tiny official ControlNet: model_channels 32, channel_mult (1, 2), one ResBlock a level, attention at ds 1,
# 2 heads, context 16; the hint block takes 8-channel maps through 16-wide convolutions
TINY = {"mc": 32, "mult": (1, 2), "ctx": 16, "hint": 8, "hidden": 16, "heads": 2}
FEATURE_SHAPE = (8, 3, 3)


# ---------------------------------------------------------------------- the official key layout
def _resblock(shapes: dict, p: str, cin: int, cout: int, emb: int) -> None:
    shapes |= {f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,),
               f"{p}.in_layers.2.weight": (cout, cin, 3, 3), f"{p}.in_layers.2.bias": (cout,),
               f"{p}.emb_layers.1.weight": (cout, emb), f"{p}.emb_layers.1.bias": (cout,),
               f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
               f"{p}.out_layers.3.weight": (cout, cout, 3, 3), f"{p}.out_layers.3.bias": (cout,)}
    if cin != cout:
        shapes |= {f"{p}.skip_connection.weight": (cout, cin, 1, 1), f"{p}.skip_connection.bias": (cout,)}


def _transformer(shapes: dict, p: str, ch: int, ctx: int) -> None:
    b = f"{p}.transformer_blocks.0"
    shapes |= {f"{p}.norm.weight": (ch,), f"{p}.norm.bias": (ch,), f"{p}.proj_in.weight": (ch, ch, 1, 1),
               f"{p}.proj_in.bias": (ch,), f"{p}.proj_out.weight": (ch, ch, 1, 1), f"{p}.proj_out.bias": (ch,),
               f"{b}.ff.net.0.proj.weight": (8 * ch, ch), f"{b}.ff.net.0.proj.bias": (8 * ch,),
               f"{b}.ff.net.2.weight": (ch, 4 * ch), f"{b}.ff.net.2.bias": (ch,)}
    for attn, kv in (("attn1", ch), ("attn2", ctx)):
        shapes |= {f"{b}.{attn}.to_q.weight": (ch, ch), f"{b}.{attn}.to_k.weight": (ch, kv),
                   f"{b}.{attn}.to_v.weight": (ch, kv), f"{b}.{attn}.to_out.0.weight": (ch, ch),
                   f"{b}.{attn}.to_out.0.bias": (ch,)}
    for n in (1, 2, 3):
        shapes |= {f"{b}.norm{n}.weight": (ch,), f"{b}.norm{n}.bias": (ch,)}


def _official_shapes(mc: int, mult: tuple, ctx: int, hint: int, hidden: int, **_) -> dict[str, tuple]:
    """Key -> shape of cldm.cldm.ControlNet (num_res_blocks 1, attention at the first level), as in the official
    state dict without the ``control_model.`` prefix."""
    emb = 4 * mc
    shapes = {"time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,), "time_embed.2.weight": (emb, emb),
              "time_embed.2.bias": (emb,), "input_blocks.0.0.weight": (mc, 4, 3, 3), "input_blocks.0.0.bias": (mc,),
              "input_hint_block.block.1.weight": (hidden, hint, 3, 3), "input_hint_block.block.1.bias": (hidden,),
              "input_hint_block.block.3.weight": (hidden, hidden, 3, 3), "input_hint_block.block.3.bias": (hidden,),
              "input_hint_block.block.5.weight": (mc, hidden, 3, 3), "input_hint_block.block.5.bias": (mc,)}
    chans, ch, i = [mc], mc, 1
    for level, m in enumerate(mult):
        _resblock(shapes, f"input_blocks.{i}.0", ch, m * mc, emb)
        ch = m * mc
        if level == 0:
            _transformer(shapes, f"input_blocks.{i}.1", ch, ctx)
        chans, i = chans + [ch], i + 1
        if level != len(mult) - 1:
            shapes |= {f"input_blocks.{i}.0.op.weight": (ch, ch, 3, 3), f"input_blocks.{i}.0.op.bias": (ch,)}
            chans, i = chans + [ch], i + 1
    for j, c in enumerate(chans):
        shapes |= {f"zero_convs.{j}.0.weight": (c, c, 1, 1), f"zero_convs.{j}.0.bias": (c,)}
    _resblock(shapes, "middle_block.0", ch, ch, emb)
    _transformer(shapes, "middle_block.1", ch, ctx)
    _resblock(shapes, "middle_block.2", ch, ch, emb)
    return shapes | {"middle_block_out.0.weight": (ch, ch, 1, 1), "middle_block_out.0.bias": (ch,)}


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in that layout: norms near 1, weights scaled by fan-in, every zero conv non-zero (so that each
    output depends on the weights)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _official_shapes(**TINY).items():
        x = torch.randn(shape, generator=g)
        norm = "norm" in key or "in_layers.0" in key or "out_layers.0" in key
        if norm:
            x = 1 + 0.1 * x if key.endswith("weight") else 0.1 * x
        elif key.endswith("bias"):
            x = 0.1 * x
        else:
            x = x / math.sqrt(math.prod(shape[1:]))
        state[key] = x
    return state


def _lightning_checkpoint(control: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ControlLDM state dict around it: the ControlNet under ``control_model.``, and (tiny stand-ins for) the
    frozen base, which the converter must leave out."""
    return {**{f"control_model.{k}": v for k, v in control.items()},
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
            "betas": torch.linspace(0.00085, 0.012, 1000)}


# ---------------------------------------------------------------------- the reference: cldm's forward
def _gn(x, sd, p, eps):
    return F.group_norm(x.float(), 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _conv(x, sd, p, **kw):
    return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], **kw)


def _res(sd, p, x, emb):
    """ldm's ResBlock (use_scale_shift_norm False): GroupNorm32 (eps 1e-5), SiLU, conv; + the embedding."""
    h = _conv(F.silu(_gn(x, sd, f"{p}.in_layers.0", 1e-5)), sd, f"{p}.in_layers.2", padding=1)
    h = h + F.linear(F.silu(emb), sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"])[..., None, None]
    h = _conv(F.silu(_gn(h, sd, f"{p}.out_layers.0", 1e-5)), sd, f"{p}.out_layers.3", padding=1)
    skip = _conv(x, sd, f"{p}.skip_connection") if f"{p}.skip_connection.weight" in sd else x
    return skip + h


def _attn(sd, p, x, context, heads):
    """ldm's CrossAttention: softmax(q k^T / sqrt(d_head)) v over heads."""
    q, k, v = (F.linear(y, sd[f"{p}.to_{n}.weight"]) for n, y in (("q", x), ("k", context), ("v", context)))
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    out = (w @ v).transpose(1, 2).flatten(2)
    return F.linear(out, sd[f"{p}.to_out.0.weight"], sd[f"{p}.to_out.0.bias"])


def _spatial_transformer(sd, p, x, context, heads):
    """ldm's SpatialTransformer (conv proj_in/proj_out, one BasicTransformerBlock with a GEGLU feed-forward)."""
    b, c, h, w = x.shape
    t = _conv(_gn(x, sd, f"{p}.norm", 1e-6), sd, f"{p}.proj_in").flatten(2).transpose(1, 2)
    bp = f"{p}.transformer_blocks.0"
    ln = lambda y, n: F.layer_norm(y, (c,), sd[f"{bp}.norm{n}.weight"], sd[f"{bp}.norm{n}.bias"])  # noqa: E731
    t = _attn(sd, f"{bp}.attn1", ln(t, 1), ln(t, 1), heads) + t
    t = _attn(sd, f"{bp}.attn2", ln(t, 2), context, heads) + t
    u, gate = F.linear(ln(t, 3), sd[f"{bp}.ff.net.0.proj.weight"], sd[f"{bp}.ff.net.0.proj.bias"]).chunk(2, -1)
    t = F.linear(u * F.gelu(gate), sd[f"{bp}.ff.net.2.weight"], sd[f"{bp}.ff.net.2.bias"]) + t
    return _conv(t.transpose(1, 2).reshape(b, c, h, w), sd, f"{p}.proj_out") + x


def _reference_forward(sd, x, hint, t, context, heads):
    """cldm.cldm.ControlNet.forward of the official code: a list of the zero convs' outputs, then the middle
    block's, each ``[B, C, h, w]``."""
    half = sd["time_embed.0.weight"].shape[1] // 2
    args = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    emb = F.linear(F.silu(F.linear(t_emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    g = F.interpolate(hint, size=x.shape[-2:], mode="bilinear")          # FeatInvInputHintBlock
    g = F.silu(_conv(g, sd, "input_hint_block.block.1", padding=1))
    g = F.silu(_conv(g, sd, "input_hint_block.block.3", padding=1))
    g = _conv(g, sd, "input_hint_block.block.5", padding=1)
    h, outs, i = _conv(x, sd, "input_blocks.0.0", padding=1) + g, [], 0
    while True:
        outs.append(_conv(h, sd, f"zero_convs.{i}.0"))
        i += 1
        if f"input_blocks.{i}.0.op.weight" in sd:
            h = _conv(h, sd, f"input_blocks.{i}.0.op", stride=2, padding=1)
        elif f"input_blocks.{i}.0.in_layers.0.weight" in sd:
            h = _res(sd, f"input_blocks.{i}.0", h, emb)
            if f"input_blocks.{i}.1.norm.weight" in sd:
                h = _spatial_transformer(sd, f"input_blocks.{i}.1", h, context, heads)
        else:
            break
    h = _res(sd, "middle_block.2", _spatial_transformer(sd, "middle_block.1", _res(sd, "middle_block.0", h, emb),
                                                         context, heads), emb)
    return outs + [_conv(h, sd, "middle_block_out.0")]


# ---------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def official():
    """The synthetic ControlNet's weights and a checkpoint holding them as ``{"state_dict": {...}}`` (tensors only,
    so ``torch.load(weights_only=True)`` reads it)."""
    return _random_state(0)


@pytest.fixture
def ckpt(official, tmp_path):
    path = tmp_path / "control_featinv_tiny.ckpt"
    torch.save({"state_dict": _lightning_checkpoint(official)}, path)
    return path


def _tiny_base(params):
    """A real (random) base with the converted config's UNet and a 4-level VAE: 256 px -> 4x32x32 latents."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from workbench.convert_official import diffusers_configs
    from workbench.diffusion import DiffusionBase

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**diffusers_configs(params)["unet"])
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8)
    prompt, null = torch.randn(2, 1, 77, TINY["ctx"])
    scheduler = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
    return DiffusionBase(unet, scheduler, prompt, null, vae, image_size=256, name="tiny")


def test_key_layout_read_back(official):
    params = official_params(official, num_heads=TINY["heads"])
    assert params["model_channels"] == 32 and params["channel_mult"] == [1, 2] and params["num_res_blocks"] == 1
    assert params["attention_resolutions"] == [1] and params["context_dim"] == TINY["ctx"]
    assert (params["hint_channels"], params["hint_hidden"]) == (TINY["hint"], TINY["hidden"])


def test_converted_controlnet_matches_the_official_forward(official, ckpt, tmp_path):
    from workbench.inverters.featinv import FeatInv

    out = convert_official(ckpt, tmp_path / "inv", feature_shape=FEATURE_SHAPE, num_heads=TINY["heads"])
    config = json.loads((out / "config.json").read_text())
    card = json.loads((out / "card.json").read_text())
    assert config["base"] == MINISD and config["prompt"] == OFFICIAL_PROMPT
    assert config["classifier_input_size"] == [3, 288, 288] and config["latent_shape"] == [4, 32, 32]
    assert config["classifier_name"] == "convnext_base.fb_in22k_ft_in1k" and config["layer"] == "stages.3"
    assert card["sampler"] == get("official").sampler

    params = official_params(official, num_heads=TINY["heads"])
    inv = FeatInv.from_pretrained(out, base=_tiny_base(params))           # the folder, loaded the public way
    g = torch.Generator().manual_seed(1)
    x, hint = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, *FEATURE_SHAPE, generator=g)
    context, t = torch.randn(2, 77, TINY["ctx"], generator=g), torch.tensor([10, 900])
    with torch.no_grad():
        down, mid = inv.controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        reference = _reference_forward(official, x, hint, t, context, TINY["heads"])
        eps = inv.predict_noise(x[:1], t[:1], hint[:1], context[:1])   # its residuals fit the base's UNet
    assert len(down) + 1 == len(reference) == 5
    for got, want in zip([*down, mid], reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert eps.shape == x[:1].shape and torch.isfinite(eps).all()


def test_a_pickled_checkpoint_is_refused_with_the_way_to_safetensors(official, tmp_path):
    """The workbench never unpickles: a full Lightning checkpoint is refused, naming the line that saves its state
    dict as safetensors; the safetensors file converts."""
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": _lightning_checkpoint(official), "hyper_parameters": argparse.Namespace(lr=1e-5)},
               path)
    with pytest.raises(WeightsUnavailableError, match="never unpickles") as err:
        converted_inverter(path, feature_shape=FEATURE_SHAPE, num_heads=TINY["heads"])
    assert "save_file(" in str(err.value) and "lightning.safetensors" in str(err.value)
    from safetensors.torch import save_file

    save_file(_lightning_checkpoint(official), tmp_path / "state.safetensors")      # no pickle at all
    inv = converted_inverter(tmp_path / "state.safetensors", feature_shape=FEATURE_SHAPE, num_heads=TINY["heads"])
    assert torch.equal(inv.conditioning.encoder[0].bias, official["input_hint_block.block.1.bias"])


def test_refuses_what_it_cannot_convert(official, ckpt, tmp_path):
    with pytest.raises(InverterMismatchError, match="hint block takes 8 channels"):
        converted_inverter(ckpt, num_heads=TINY["heads"])                # the preset's 1024-channel maps
    image_hint = {k.replace("input_hint_block.block.1", "input_hint_block.0"): v for k, v in official.items()}
    path = tmp_path / "image_controlnet.ckpt"
    torch.save({"state_dict": _lightning_checkpoint(image_hint)}, path)
    with pytest.raises(WeightsUnavailableError, match="conditions on images"):
        converted_inverter(path, feature_shape=FEATURE_SHAPE)


def test_cli(official, tmp_path, capsys):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": _lightning_checkpoint(official), "hyper_parameters": argparse.Namespace(lr=1e-5)},
               path)
    args = ["convert-official", str(path), "--out", str(tmp_path / "inv"), "--num-heads", "2",
            "--feature-shape", "8", "3", "3"]
    assert cli_main(args) == 1
    assert "never unpickles" in capsys.readouterr().err
    assert not (tmp_path / "inv" / "config.json").exists()
    from safetensors.torch import save_file

    save_file(_lightning_checkpoint(official), tmp_path / "state.safetensors")
    args[1] = str(tmp_path / "state.safetensors")
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "inv" / "config.json").read_text())["hidden_channels"] == TINY["hidden"]
