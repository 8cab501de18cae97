"""Convert an official FeatInv checkpoint into a workbench inverter folder.

The official code (AI4HealthUOL/FeatInv) trains an lllyasviel-style ``cldm`` ControlNet with PyTorch Lightning and
saves the whole ``cldm.cldm.ControlLDM`` as a ``.ckpt``: ``{"state_dict": {...}, ...}`` (``trainer.save_checkpoint``
in ``code/tutorial_train_featinv.py``). Its ControlNet sits under ``control_model.``, built by ``code/cldm/cldm.py``
from ``code/models/cldm_featinv_convnext.yaml``:

=====================================================  ============================================================
official key (under ``control_model.``)                 workbench key (under ``controlnet.``, diffusers' names)
=====================================================  ============================================================
``time_embed.{0,2}``, ``input_blocks.*``,               ``time_embedding.linear_{1,2}``, ``conv_in``,
``zero_convs.*``, ``middle_block.*``,                   ``down_blocks.*``, ``controlnet_down_blocks.*``,
``middle_block_out.0``                                  ``mid_block.*``, ``controlnet_mid_block`` (diffusers' own
                                                        ``convert_controlnet_checkpoint``)
``input_hint_block.block.1`` (conv 3x3, C_f -> 512)    ``controlnet_cond_embedding.encoder.0``
``input_hint_block.block.3`` (conv 3x3, 512 -> 512)    ``controlnet_cond_embedding.encoder.2``
``input_hint_block.block.5`` (zero conv 3x3, 512->320)  ``controlnet_cond_embedding.zero_out``
=====================================================  ============================================================

The official hint block (``FeatInvInputHintBlock``) is ``Upsample(32x32, bilinear), conv, SiLU, conv, SiLU, zero
conv``, not image ControlNet's eight-conv ``input_hint_block.0`` ... ``.14`` stack: it is exactly
:class:`~workbench.inverters.featinv.FeatureConditioning` with the per-channel normalisation set to the identity
(``feature_mean`` 0, ``feature_std`` 1), since the official code feeds the raw map.

What is not converted: the frozen base (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*``), which the config names instead (``lambdalabs/miniSD-diffusers``, as the official code starts
from miniSD), and the Lightning state (optimizer, callbacks, loops).

Example:
    >>> convert_official("control_featinv_convnext_fin.safetensors", "inverters/official")
    >>> inv = wb.load_inverter("inverters/official")          # loads miniSD with the official prompt
    >>> images = inv.invert(features, **inv.card["sampler"])   # DDIM 50, guidance 1.75, guidance_mode="prompt"
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import InverterMismatchError, WeightsUnavailableError

#: the prefix of the ControlNet in the official Lightning state dict (``ControlLDM.control_model``)
CONTROL_PREFIX = "control_model."
#: the official hint block's convolutions -> :class:`FeatureConditioning`'s (``TimestepEmbedSequential`` indices 1,
#: 3, 5; 0 is the ``Upsample``, 2 and 4 the ``SiLU``)
HINT_CONVS = {"input_hint_block.block.1": "encoder.0", "input_hint_block.block.3": "encoder.2",
              "input_hint_block.block.5": "zero_out"}
#: ``num_heads`` of ``cldm_featinv_convnext.yaml`` (SD 1.x: 8 heads in every attention); weights do not record it
OFFICIAL_NUM_HEADS = 8
#: the autoencoder of ``cldm_featinv_convnext.yaml`` (SD 1.x's KL-f8), which sets the latent grid: 256 px -> 32x32
OFFICIAL_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                     "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
OFFICIAL_IMAGE_SIZE = 256
OFFICIAL_CLASSIFIER_SIZE = 288


def load_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint, never unpickling anything.

    A ``.safetensors`` file is read directly. A ``.ckpt`` is a pickle, and unpickling runs whatever code it names: it
    is read only with ``torch.load(weights_only=True)``, which accepts tensors and plain containers (a checkpoint
    saved as ``{"state_dict": {...}}``). A full Lightning checkpoint (hyper-parameters, callbacks) is refused with
    the one-line way to turn it into a ``.safetensors`` of its state dict, to be run where the file is trusted.

    Returns:
        ``{key: Tensor}``: the ``"state_dict"`` entry when there is one, else the loaded mapping itself.

    Raises:
        WeightsUnavailableError: the file is missing, or holds more than tensors and plain containers.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"the checkpoint {str(path)!r} does not exist; give the path of the official "
                                      "FeatInv .ckpt (e.g. control_featinv_convnext_fin.ckpt)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        target = path.with_suffix(".safetensors")
        raise WeightsUnavailableError(
            f"{str(path)!r} holds more than tensors (a full PyTorch Lightning checkpoint pickles its "
            "hyper-parameters and callbacks), and reading it would mean unpickling, which can run any code the file "
            "names; the workbench never unpickles. Where you trust the file, load it with torch's full unpickler "
            "(torch.load with weights_only=False) and write its 'state_dict' with safetensors' "
            f"save_file(state_dict, '{target}'), then convert that file "
            f"({str(err).splitlines()[0]})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsUnavailableError(f"{str(path)!r} holds a {type(loaded).__name__}, not a checkpoint dict with a "
                                      "'state_dict'; is it an official FeatInv .ckpt?")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def control_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ControlNet's tensors of a ``ControlLDM`` state dict, without the ``control_model.`` prefix (a state dict
    of the ControlNet alone is returned as it is); refused unless it has the FeatInv hint block."""
    control = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    control = control or dict(state)
    missing = [f"{k}.{p}" for k in HINT_CONVS for p in ("weight", "bias") if f"{k}.{p}" not in control]
    if "input_blocks.0.0.weight" not in control:
        raise WeightsUnavailableError(f"the checkpoint holds no cldm ControlNet: no '{CONTROL_PREFIX}input_blocks.0.0"
                                      f".weight' among {len(state)} tensors; is it an official FeatInv .ckpt?")
    if missing:
        image_hint = "input_hint_block.0.weight" in control
        raise WeightsUnavailableError(
            f"the ControlNet lacks the FeatInv hint block ({missing}); "
            + ("it has image ControlNet's input_hint_block.0 ... .14, so it conditions on images, not feature maps: "
               "load it with diffusers' ControlNetModel.from_single_file" if image_hint else
               "is it an official FeatInv .ckpt (code/cldm/cldm.py's FeatInvInputHintBlock)?"))
    return control


def official_params(control: Mapping[str, torch.Tensor], *, num_heads: int = OFFICIAL_NUM_HEADS) -> dict[str, Any]:
    """The ``control_stage_config`` parameters of ``cldm_featinv_convnext.yaml``, read off the ControlNet's weights
    (the official ones: ``model_channels`` 320, ``channel_mult`` [1, 2, 4, 4], ``num_res_blocks`` 2,
    ``attention_resolutions`` [4, 2, 1], ``context_dim`` 768, ``hint_channels`` 1024); ``num_heads`` is not in the
    weights and is given. Also ``hint_hidden``, the hint block's width (512)."""
    conv_in = control["input_blocks.0.0.weight"]                 # [model_channels, in_channels, 3, 3]
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    n_blocks = 1 + max(int(k.split(".")[1]) for k in control if k.startswith("input_blocks."))
    levels: list[list[tuple[int, bool]]] = [[]]
    for i in range(1, n_blocks):
        if f"input_blocks.{i}.0.op.weight" in control:           # a Downsample ends a level
            levels.append([])
            continue
        out = int(control[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        levels[-1].append((out, f"input_blocks.{i}.1.norm.weight" in control))
    if len({len(level) for level in levels}) != 1:
        raise WeightsUnavailableError(f"the ControlNet's levels hold {[len(l) for l in levels]} ResBlocks; a cldm "
                                      "ControlNet has the same num_res_blocks at every level")
    depth = 1 + max(int(k.split(".")[3]) for k in control if k.startswith("middle_block.1.transformer_blocks."))
    hint = control["input_hint_block.block.1.weight"]           # [hint_hidden, hint_channels, 3, 3]
    params = {"in_channels": in_channels, "out_channels": in_channels, "model_channels": model_channels,
              "attention_resolutions": [2 ** i for i, level in enumerate(levels) if level[0][1]],
              "num_res_blocks": len(levels[0]), "channel_mult": [level[0][0] // model_channels for level in levels],
              "num_heads": int(num_heads), "use_spatial_transformer": True, "transformer_depth": depth,
              "context_dim": int(control["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]),
              "use_linear_in_transformer": control["middle_block.1.proj_in.weight"].ndim == 2, "legacy": False}
    return params | {"hint_channels": int(hint.shape[1]), "hint_hidden": int(hint.shape[0])}


def original_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The official yaml's structure (``model.params.{unet,control_stage,first_stage}_config``), which diffusers'
    single-file conversion reads, for the ControlNet ``params`` of :func:`official_params`."""
    unet = {k: v for k, v in params.items() if k not in ("hint_channels", "hint_hidden")}
    return {"model": {"params": {
        "unet_config": {"params": unet},
        "control_stage_config": {"params": unet | {"hint_channels": params["hint_channels"]}},
        "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": dict(OFFICIAL_DDCONFIG)}},
        "scale_factor": 0.18215, "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}}}


def diffusers_configs(params: Mapping[str, Any], *, image_size: int = OFFICIAL_IMAGE_SIZE) -> dict[str, dict]:
    """``{"unet": ..., "vae": ...}``: the diffusers configs of the base the ControlNet was trained on, by diffusers'
    own ``create_{unet,vae}_diffusers_config_from_ldm``; the ControlNet is ``ControlNetModel.from_unet`` of it."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm, create_vae_diffusers_config_from_ldm)

    original = original_config(params)
    with warnings.catch_warnings():  # image_size=: a deprecation notice; without it, diffusers guesses SD's 512 px
        warnings.simplefilter("ignore")
        unet = create_unet_diffusers_config_from_ldm(original, {}, image_size=image_size)
        vae = create_vae_diffusers_config_from_ldm(original, {}, image_size=image_size)
    return {"unet": unet, "vae": vae}


def convert_controlnet_state(control: Mapping[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The official ControlNet's tensors (:func:`control_state`) under the names of the workbench FeatInv's
    ``controlnet`` (a diffusers ``ControlNetModel`` whose ``controlnet_cond_embedding`` is a
    :class:`~workbench.inverters.featinv.FeatureConditioning`): the body by diffusers'
    ``convert_controlnet_checkpoint``, the hint convolutions by :data:`HINT_CONVS`, and the identity normalisation
    (``feature_mean`` 0, ``feature_std`` 1, ``[hint_channels]``). Every official tensor is used exactly once, or this
    raises."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    body = {k: v for k, v in control.items() if not k.startswith("input_hint_block.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_controlnet_checkpoint(body, {"layers_per_block": params["num_res_blocks"]})
    converted = {k: v for k, v in converted.items() if v is not None}
    used = {id(v) for v in converted.values()}
    unused = sorted(k for k, v in body.items() if id(v) not in used)
    if unused or len(converted) != len(body):
        raise WeightsUnavailableError(
            f"diffusers' cldm conversion left {len(unused)} ControlNet tensors unmapped (e.g. {unused[:4]}) or "
            f"mapped {len(converted)} names for {len(body)} tensors; the checkpoint's ControlNet is not the "
            "SD 1.x cldm layout of code/cldm/cldm.py")
    hint = {f"controlnet_cond_embedding.{new}.{p}": control[f"{old}.{p}"]
            for old, new in HINT_CONVS.items() for p in ("weight", "bias")}
    stats = {"controlnet_cond_embedding.feature_mean": torch.zeros(params["hint_channels"]),
             "controlnet_cond_embedding.feature_std": torch.ones(params["hint_channels"])}
    return converted | hint | stats


def converted_inverter(checkpoint: str | Path, *, base: str = "lambdalabs/miniSD-diffusers",
                       classifier: str | None = None, layer: str | None = None,
                       feature_shape: tuple[int, int, int] | None = None, num_heads: int = OFFICIAL_NUM_HEADS,
                       classifier_size: int = OFFICIAL_CLASSIFIER_SIZE):
    """The official checkpoint as a :class:`~workbench.inverters.featinv.FeatInv` whose ``controlnet`` holds the
    converted weights, on the CPU in float32, ready for ``save_pretrained``; its base is a shell on the meta device
    (the shapes of ``base``'s UNet and VAE, no weights), so nothing is downloaded: only the ControlNet is saved, and
    loading the folder loads ``base`` by name.

    Args:
        checkpoint: the official ``.ckpt`` (or a ``.safetensors`` of its state dict).
        base: the diffusion base the config records (the official code starts from miniSD).
        classifier, layer, feature_shape: what the maps come from (default: the ``official`` preset's
            ``convnext_base.fb_in22k_ft_in1k``, ``stages.3``, ``(1024, 9, 9)``); ``feature_shape[0]`` must be the
            hint block's input channels.
        num_heads: the attention heads of the official yaml (8), which the weights do not record.
        classifier_size: the classifier's input side in training (288 px).

    Raises:
        WeightsUnavailableError: an unreadable or non-FeatInv checkpoint. InverterMismatchError: a
            ``feature_shape`` whose channels differ from the checkpoint's hint block.
    """
    from .presets import OFFICIAL_PROMPT, get

    preset = get("official")
    classifier, layer = classifier or preset.classifier, layer or preset.layer
    feature_shape = tuple(feature_shape or preset.feature_shape)
    control = control_state(load_official_state(checkpoint))
    try:
        params = official_params(control, num_heads=num_heads)
    except KeyError as err:
        raise WeightsUnavailableError(f"the checkpoint's ControlNet lacks {err}, which an SD 1.x cldm ControlNet has "
                                      "(code/cldm/cldm.py); is it an official FeatInv .ckpt?") from None
    if feature_shape[0] != params["hint_channels"]:
        raise InverterMismatchError(
            f"feature_shape={feature_shape}, but the checkpoint's hint block takes {params['hint_channels']} channels "
            f"(control_model.input_hint_block.block.1.weight); pass feature_shape=({params['hint_channels']}, h, w) "
            "of the layer it was trained on")
    inv = _shell_inverter(params, base=base, classifier=classifier, layer=layer, feature_shape=feature_shape,
                          classifier_size=classifier_size, prompt=OFFICIAL_PROMPT)
    _assign(inv.controlnet, convert_controlnet_state(control, params))
    return inv


def _shell_inverter(params: Mapping[str, Any], *, base: str, classifier: str, layer: str,
                    feature_shape: tuple[int, int, int], classifier_size: int, prompt: str):
    """A FeatInv built entirely on the meta device (no memory, no weights) on a base shell named ``base`` whose UNet
    and VAE have the official configs (:func:`diffusers_configs`), through the public constructors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .diffusion import DiffusionBase
    from .inverters.featinv import FeatInv

    cfg = diffusers_configs(params)
    scheduler = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
    with torch.device("meta"):
        embeds = torch.zeros(1, 77, params["context_dim"])
        shell = DiffusionBase(UNet2DConditionModel(**cfg["unet"]), scheduler, embeds, embeds,
                              AutoencoderKL(**cfg["vae"]), image_size=OFFICIAL_IMAGE_SIZE, name=str(base))
        return FeatInv(shell, classifier, layer, feature_shape, hidden_channels=params["hint_hidden"],
                       classifier_input_size=(3, classifier_size, classifier_size), prompt=prompt)


def _assign(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Put ``state`` (float32) into the meta ``module`` in place of its tensors, strictly: every name present, every
    shape equal, no tensor left on the meta device."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise WeightsUnavailableError(f"the converted ControlNet does not fit the one diffusers builds from the "
                                      f"official config: {err}") from None
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise WeightsUnavailableError(f"the conversion gave no weights for {left[:4]}")


def convert_official(checkpoint: str | Path, out: str | Path, *, fp16: bool = False, **kwargs) -> Path:
    """Convert an official FeatInv checkpoint into the workbench inverter folder ``out``.

    The folder holds ``config.json`` (base ``lambdalabs/miniSD-diffusers``, the classifier read at 288 px, the
    official prompt), ``controlnet.safetensors`` and ``card.json`` with the ``official`` preset's sampler (DDIM 50
    steps, guidance 1.75, ``guidance_mode="prompt"``, no feature guidance) and what the folder was converted from.

    Args:
        checkpoint: the official ``.ckpt``.
        out: the folder to write.
        fp16: store the weights in half precision (default: float32, as trained; the conversion is then exact).
        **kwargs: :func:`converted_inverter`'s.

    Returns:
        ``out``, which ``wb.load_inverter`` and ``FeatInv.from_pretrained`` read.

    Example:
        >>> convert_official("control_featinv_convnext_fin.safetensors", "inverters/official")
    """
    from .presets import get

    inv = converted_inverter(checkpoint, **kwargs)
    sampler = dict(get("official").sampler)
    card = {"converted_from": {"file": Path(checkpoint).name, "code": "AI4HealthUOL/FeatInv (cldm ControlLDM, "
                               "PyTorch Lightning)", "converter": "workbench convert-official"},
            "sampler": sampler,
            "not_converted": "the frozen base (model.diffusion_model, first_stage_model, cond_stage_model): loaded "
                             f"by name ({inv.base.name}); the Lightning state (optimizer, callbacks)"}
    inv.save_pretrained(out, fp16=fp16, card=card)
    return Path(out)
