"""Classifiers under one image convention: float RGB in [0, 1], shaped ``[B, 3, H, W]``.

A :class:`Classifier` wraps any image model (timm or torchvision) together with its input
normalisation, so users never normalise by hand. Layer names are those of the wrapped model
(``model.layer3`` is addressed as ``"layer3"``); :mod:`workbench.hooks` resolves names inside
``Classifier.model``.
"""
from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_device
from .errors import ArgumentValueError, ImageReadError, UnknownModelError, WeightsUnavailableError
from .weights import card_path, load_state, read_card, save_state, weights_path, write_card
from .zoo import TINY_CLASSIFIERS, TINY_INPUT_SIZE, TINY_MEAN, TINY_STD, build_network

PathLike = Union[str, Path]

_HUB_PROBE_S = 5.0       # one HEAD request to the hub endpoint decides whether it is reachable


def normalisation_problem(mean: Any, std: Any) -> str | None:
    """What is wrong with a normalisation (``mean`` and ``std``: 3 finite numbers each, every std > 0), or
    ``None``: the one value check of a classifier's card and of :class:`Classifier`'s arguments."""
    for key, values in (("mean", mean), ("std", std)):
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            return f"{key}={values!r} is not 3 numbers"
        if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
            return f"{key}={values!r} is not 3 finite numbers"
        if key == "std" and min(numbers) <= 0:
            return (f"std={values!r} has a value <= 0: dividing by it would make every logit and probability NaN "
                    "or infinite")
    return None


class Classifier(nn.Module):
    """An image classifier that takes ``[B, 3, H, W]`` floats in [0, 1] and returns logits.

    Args:
        model: the underlying network (a timm model, a torchvision model, any ``nn.Module``).
        mean: per-channel mean used to normalise the input, length 3.
        std: per-channel standard deviation, length 3.
        input_size: ``(3, H, W)`` the model expects.
        name: the name it was loaded under (a timm name or a shipped name such as ``tinyworld-cnn``).

    Example:
        >>> clf = Classifier(timm.create_model("resnet18"), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, 224, 224))
        >>> logits = clf(torch.rand(2, 3, 224, 224))   # [2, 1000]
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_size: Sequence[int], name: str = "custom"):
        super().__init__()
        problem = normalisation_problem(mean, std)
        if problem is not None:
            raise ArgumentValueError(f"Classifier: {problem}; pass the per-channel mean and std the model was "
                                     "trained with, e.g. ImageNet's (0.229, 0.224, 0.225)")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.input_size = tuple(int(v) for v in input_size)
        self.name = name

    @property
    def num_classes(self) -> int:
        n = getattr(self.model, "num_classes", None)
        if n is None:
            raise AttributeError(f"{type(self.model).__name__} does not record num_classes")
        return int(n)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> the model's normalised input."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: ``Tensor[B, 3, H, W]`` float in [0, 1]. Returns: logits ``Tensor[B, num_classes]``."""
        return self.model(self.normalize(x))

    @property
    def device(self) -> torch.device:
        """Where the weights live (the first parameter's device; the CPU for a model without parameters)."""
        return next(self.parameters(), self.mean).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (the first parameter's)."""
        return next(self.parameters(), self.mean).dtype

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}"

    def __repr__(self) -> str:
        """One line: name, network class, input size, classes, parameters, device and dtype (``print(clf.model)``
        shows the whole network)."""
        classes = getattr(self.model, "num_classes", None)
        params = sum(p.numel() for p in self.parameters()) / 1e6
        return (f"Classifier(name={self.name!r}, model={type(self.model).__name__}, input_size={self.input_size}, "
                f"classes={classes}, params={params:.2f}M, device={self.device}, dtype={self.dtype})")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _shipped_names() -> set[str]:
    return set(TINY_CLASSIFIERS)


def _remedies(name: str, reason: str) -> str:
    return (f"could not load pretrained weights for {name!r}: {reason}\n"
            "Two ways to fix it:\n"
            f"  1. a local file: wb.load_classifier({name!r}, checkpoint_path='weights.safetensors') "
            "(.safetensors, or .pth read with weights_only=True);\n"
            f"  2. a pre-filled Hugging Face cache: on a machine with network run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`, copy the cache "
            "(HF_HOME) over, and set HF_HUB_OFFLINE=1.")


def _hub_reachable() -> bool:
    """One HEAD request to the hub endpoint, bounded by :data:`_HUB_PROBE_S` (DNS included, via a
    daemon thread). False in offline mode (``HF_HUB_OFFLINE=1``) or on any error."""
    from huggingface_hub import constants, get_session
    if constants.is_offline_mode():
        return False
    answer: dict[str, bool] = {}

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=_HUB_PROBE_S)
            answer["ok"] = True
        except Exception:
            answer["ok"] = False

    worker = threading.Thread(target=probe, name="workbench-hub-probe", daemon=True)
    worker.start()
    worker.join(_HUB_PROBE_S + 1.0)
    return answer.get("ok", False)


def _cached_weights(cfg: Any) -> Path | None:
    """The local copy of a pretrained config's weights (Hugging Face cache or torch hub cache), if any."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        repo_id, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    url = getattr(cfg, "url", None)
    if url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if found.is_file():
            return found
    return None


def _read_state_dict(path: Path) -> dict:
    """``.safetensors`` via safetensors, anything else via ``torch.load(..., weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _create_pretrained(name: str, model_kwargs: dict) -> nn.Module:
    """``timm.create_model(name, pretrained=True)``, raising :class:`WeightsUnavailableError` instead of
    hanging on an unreachable hub or silently keeping random weights.

    One short HEAD request (:data:`_HUB_PROBE_S`) tells whether the hub answers. If it does, timm
    downloads as usual (big weights may take minutes). If it does not (no network, ``HF_HUB_OFFLINE=1``),
    the weights come from the local cache without touching the network, or the error is raised at once.
    """
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # an unknown pretrained tag
        raise UnknownModelError(f"{name!r}: {err}") from err
    if cfg is None or not any(getattr(cfg, key, None) for key in ("hf_hub_id", "url", "file")):
        raise WeightsUnavailableError(_remedies(name, "timm knows no pretrained weights for it "
                                                      "(pass pretrained=False for random weights)"))
    overlay = None
    if not _hub_reachable():
        cached = _cached_weights(cfg)
        if cached is None:
            raise WeightsUnavailableError(_remedies(
                name, "the Hugging Face hub cannot be reached (no network, or HF_HUB_OFFLINE=1) and the "
                      "weights are not in the local cache"))
        try:
            overlay = {"state_dict": _read_state_dict(cached)}
        except Exception as err:
            raise WeightsUnavailableError(_remedies(name, f"the cached file {str(cached)!r} is unreadable: {err}")) from err
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
    except Exception as err:
        raise WeightsUnavailableError(_remedies(name, f"{type(err).__name__}: {err}")) from err


def _load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Load a state dict from ``.safetensors`` (preferred) or ``.pth`` (``weights_only=True``) into ``model``."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path {str(path)!r} does not exist")
    try:
        state = _read_state_dict(path)
    except Exception as err:
        raise WeightsUnavailableError(f"could not read checkpoint {str(path)!r} for {name!r}: "
                                      f"{type(err).__name__}: {err}") from err
    for key in ("state_dict", "model"):  # common wrappers: {"state_dict": ...}, {"model": ...}
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise WeightsUnavailableError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    own = set(model.state_dict())
    for prefix in ("model.", "module."):  # a saved Classifier, a DistributedDataParallel wrapper
        if state and all(k.startswith(prefix) for k in state) and not own & set(state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsUnavailableError(f"{str(path)!r} does not fit {name!r}: missing keys {missing[:5]}"
                                      f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                                      f"{'...' if len(unexpected) > 5 else ''}")


def load_classifier(name: str, *, pretrained: bool = True, checkpoint_path: PathLike | None = None,
                    device: str | torch.device = "cpu", **model_kwargs: Any) -> Classifier:
    """Load a classifier that takes ``Tensor[B, 3, H, W]`` floats in [0, 1], in eval mode.

    Args:
        name: a timm model name (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k"``) or a shipped
            workbench model (``"tinyworld-cnn"``, ``"tinyworld-vit"``, read from ``data/``).
        pretrained: download (or read from the Hugging Face cache) timm's pretrained weights;
            ``False`` gives random weights.
        checkpoint_path: local weights to load instead (``.safetensors`` preferred; ``.pth`` is read
            with ``torch.load(..., weights_only=True)``). A saved ``Classifier`` state dict works too.
        device: where the model lives.
        **model_kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ...).

    Returns:
        Classifier: the model with its input normalisation; mean, std and input size come from
        timm's pretrained config.

    Raises:
        WeightsUnavailableError: the weights cannot be had (hub unreachable within 30 s and no
            cache, no pretrained weights in timm, a missing, corrupted or mismatched checkpoint).
        UnknownModelError: ``name`` is neither a timm model nor a shipped one.
        ArgumentValueError: a ``device`` this machine does not have (``"cuda"`` without a GPU).

    The caller's random state is left as it was: modules draw their initial weights before the pretrained ones
    replace them, from a forked generator (``torch.random.fork_rng``).

    Example:
        >>> clf = wb.load_classifier("resnet18", pretrained=False, num_classes=10)
        >>> clf(torch.rand(2, 3, 224, 224)).shape      # torch.Size([2, 10])
    """
    check_device(device)
    with torch.random.fork_rng(devices=[]):
        return _load_classifier(name, pretrained=pretrained, checkpoint_path=checkpoint_path, device=device,
                                **model_kwargs)


def _load_classifier(name: str, *, pretrained: bool, checkpoint_path: PathLike | None, device: str | torch.device,
                     **model_kwargs: Any) -> Classifier:
    """:func:`load_classifier` without its guard of the caller's random state."""
    import timm
    from timm.data import resolve_data_config

    if not isinstance(name, str):
        raise UnknownModelError(f"a model name is a string such as 'tinyworld-cnn' or 'resnet50', got {name!r}")
    shipped = _shipped_names()
    if name in shipped:
        if checkpoint_path is not None or model_kwargs or not pretrained:
            raise ArgumentValueError(
                f"{name!r} is a shipped model and always loads its shipped weights, so checkpoint_path="
                f"{checkpoint_path!r}, pretrained={pretrained!r} and model kwargs {sorted(model_kwargs)} do not apply; "
                f"call load_classifier({name!r}) alone, or name a timm model to load other weights")
        return load_shipped_classifier(name, device=device)
    if not timm.is_model(name):
        candidates = sorted(shipped) + timm.list_models()
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        raise UnknownModelError(f"{name!r} is not a timm model or a shipped model."
                                + (f" Closest names: {close}." if close else "")
                                + " See timm.list_models('pattern*').")
    if checkpoint_path is not None:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        _load_checkpoint(model, Path(checkpoint_path), name)
    elif pretrained:
        model = _create_pretrained(name, model_kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
    cfg = resolve_data_config({}, model=model)
    input_size = tuple(cfg["input_size"])
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None) or model_kwargs.get("img_size")
    if img_size is not None:  # an img_size override is not reflected in pretrained_cfg
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        input_size = (input_size[0], *img_size)
    return Classifier(model, cfg["mean"], cfg["std"], input_size, name=name).to(device).eval()


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

class ToFloatRGB:
    """PIL image of any mode -> ``Tensor[3, H, W]`` float in [0, 1]; tensors pass through.

    RGBA, LA and transparent palette images are composited on white; grayscale is repeated to RGB;
    16-bit images (``I;16``, ``I``) are divided by 65535.
    """

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            return img
        from PIL import Image
        if img.mode.startswith("I"):  # 16-bit (I;16, I;16B, ...) or 32-bit int holding 16-bit values
            array = np.asarray(img).astype(np.float32) / 65535.0
        elif img.mode == "F":
            array = np.asarray(img, dtype=np.float32)
        else:
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).clamp(0, 1).contiguous()

    def __repr__(self) -> str:
        return "ToFloatRGB()"


class Clamp01:
    """Clamp to [0, 1] (bicubic resizing overshoots)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 1)

    def __repr__(self) -> str:
        return "Clamp01()"


def _input_size(model: nn.Module) -> tuple[int, int, int]:
    if isinstance(model, Classifier):
        return model.input_size
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    raise TypeError(f"cannot tell the input size of {type(model).__name__}; wrap it in a Classifier")


def preprocess(model: nn.Module):
    """The model's input transform: PIL image (any mode) -> ``Tensor[3, H, W]`` float in [0, 1].

    Not normalised: normalisation lives in :class:`Classifier`. For timm models it follows timm's
    data config (resize the shorter side to ``H / crop_pct``, centre crop, timm's interpolation);
    shipped tiny models are plainly resized to their input size.

    Args:
        model: a :class:`Classifier` (or a timm model).

    Returns:
        torchvision.transforms.Compose

    Example:
        >>> x = wb.preprocess(clf)(PIL.Image.open("cat.jpg"))[None]     # [1, 3, H, W]
    """
    from torchvision import transforms as T

    _, height, width = _input_size(model)
    root = model.model if isinstance(model, Classifier) else model
    if getattr(model, "name", None) in _shipped_names():
        resize = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR, antialias=True)]
    else:
        crop_pct, interpolation = 0.875, "bicubic"
        if hasattr(root, "pretrained_cfg"):
            from timm.data import resolve_data_config
            cfg = resolve_data_config({}, model=root)
            crop_pct = cfg.get("crop_pct") or crop_pct
            interpolation = cfg.get("interpolation") or interpolation
        modes = {m.value: m for m in T.InterpolationMode}
        mode = modes.get(interpolation, T.InterpolationMode.BICUBIC)
        resize = [T.Resize(math.floor(min(height, width) / crop_pct), interpolation=mode, antialias=True),
                  T.CenterCrop((height, width))]
    return T.Compose([ToFloatRGB(), *resize, Clamp01()])


#: An image of more pixels than this is shrunk as it is decoded (JPEG's ``draft``, then Pillow's ``reduce`` by an
#: integer factor), before it becomes a float tensor: a 10000x10000 photo for a 32 px classifier would otherwise
#: take about 5 GB on its way to 32x32. 4096x4096 keeps every classifier's input size far below it.
MAX_DECODE_PIXELS = 4096 * 4096


def _decode_shrunk(img):
    """Decode ``img`` (an opened PIL image), shrunk by an integer factor to at most :data:`MAX_DECODE_PIXELS`."""
    factor = math.ceil(math.sqrt(img.width * img.height / MAX_DECODE_PIXELS))
    if factor > 1 and img.format == "JPEG":
        img.draft("RGB", (img.width // factor, img.height // factor))   # the decoder itself skips pixels
    img.load()
    factor = math.ceil(math.sqrt(img.width * img.height / MAX_DECODE_PIXELS))
    if factor == 1:
        return img
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):      # palette, 1-bit, 16-bit: reduce needs these
        img = img.convert("RGBA" if img.mode in ("P", "PA") else "RGB")
    return img.reduce(factor)


def read_image(path: PathLike):
    """Read an image file as a PIL image, EXIF rotation applied; the file half of :func:`load_image`, which needs no
    model (the command line reads the file before it loads one). An image of more than :data:`MAX_DECODE_PIXELS`
    (4096x4096) is shrunk by an integer factor as it is decoded, so a huge photo costs little memory.

    Raises:
        ImageReadError: the file is not an image, is a folder, or is too large for Pillow to open safely (its
            decompression-bomb limit). FileNotFoundError: there is no such file.

    Example:
        >>> x = wb.preprocess(clf)(read_image("cat.png"))[None]
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{str(path)!r} is a folder, not an image file; name one of the images in it")
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {str(path)!r}")
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(_decode_shrunk(img))
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{str(path)!r} is too large to read safely ({err}). Downscale it first (any size works: "
                             f"it is resized to the classifier's input), or raise PIL.Image.MAX_IMAGE_PIXELS if you "
                             f"trust the file") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{str(path)!r} is not an image file PIL can read ({type(err).__name__}: {err})") from err


def load_image(path: PathLike, model: nn.Module) -> torch.Tensor:
    """Read any image file and return it ready for ``model``.

    Args:
        path: an image file PIL can read (RGB, RGBA, grayscale, 16-bit, palette, ...). EXIF rotation is applied.
        model: the :class:`Classifier` it is for (sets the size and crop, see :func:`preprocess`).

    Returns:
        ``Tensor[1, 3, H, W]`` float in [0, 1] at the model's input size, on the model's device.

    Raises:
        ImageReadError: the file is not an image, is a folder, or is too large for Pillow to open safely
            (its decompression-bomb limit). FileNotFoundError: there is no such file.

    Example:
        >>> x = wb.load_image("cat.png", clf)
        >>> clf(x).softmax(-1)
    """
    return prepare_image(read_image(path), model)


def prepare_image(img, model: nn.Module) -> torch.Tensor:
    """A PIL image -> ``Tensor[1, 3, H, W]`` in [0, 1] at ``model``'s input size, on its device (:func:`preprocess`)."""
    x = preprocess(model)(img)[None]
    param = next(iter(model.parameters()), None)
    return x.to(param.device) if param is not None else x


# ---------------------------------------------------------------------------------------------
# The shipped tiny-world classifiers
# ---------------------------------------------------------------------------------------------

def create_classifier(name: str, **overrides: Any) -> Classifier:
    """A freshly initialised tiny-world classifier (random weights), wrapped with its normalisation.

    Args:
        name: a key of :data:`~workbench.zoo.TINY_CLASSIFIERS` (the inverted classifiers and the judges).
        **overrides: architecture arguments to change (tests use smaller widths).
    """
    if name not in TINY_CLASSIFIERS:
        raise UnknownModelError(f"unknown tiny-world classifier {name!r}; shipped: {sorted(TINY_CLASSIFIERS)}")
    spec = TINY_CLASSIFIERS[name]
    net = build_network(spec["architecture"], {**spec["arch_args"], **overrides})
    return Classifier(net, TINY_MEAN, TINY_STD, TINY_INPUT_SIZE, name=name)


def load_shipped_classifier(name: str, *, device: str | torch.device = "cpu", root: Path | None = None) -> Classifier:
    """Load a shipped tiny-world classifier from ``data/`` (or ``root``), in eval mode.

    The card's architecture is rebuilt and the weights are loaded strictly: a card that does not
    match its weights is refused with a message naming both files.
    """
    card = read_card(name, root)
    problem = normalisation_problem(card.get("mean", TINY_MEAN), card.get("std", TINY_STD))
    if problem is not None:
        raise WeightsUnavailableError(f"the card {card_path(name, root)} has {problem}. Restore it with "
                                      "`git checkout data/` or retrain with `make weights`.")
    net = build_network(card["architecture"], card["arch_args"])
    wpath = weights_path(name, root)
    state = load_state(wpath)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailableError(
            f"the card {card_path(name, root)} does not match the weights in {wpath}: {str(e).splitlines()[0]} ... "
            f"Retrain with `make weights` or restore both files with `git checkout data/`.") from e
    clf = Classifier(net, card.get("mean", TINY_MEAN), card.get("std", TINY_STD),
                     card.get("input_size", TINY_INPUT_SIZE), name=name)
    return clf.to(device).eval()


def save_random_weights(root: str | Path, *, seed: int = 0) -> None:
    """Write randomly initialised tiny-world classifiers (the judges too) and the factor reader, with cards, to
    ``root`` (for testing code paths before trained weights exist; point ``WORKBENCH_DATA`` at ``root``). The same
    ``seed`` writes the same weights; the caller's global RNG state is left as it was."""
    root = Path(root)
    for name, spec in TINY_CLASSIFIERS.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clf = create_classifier(name)
        save_state(clf.model, weights_path(name, root))
        write_card(name, {"name": name, "architecture": spec["architecture"], "arch_args": spec["arch_args"],
                          "mean": TINY_MEAN, "std": TINY_STD, "input_size": TINY_INPUT_SIZE,
                          "note": "random weights, for tests only"}, root)
    from .factor_reader import READER_NAME, FactorReader

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reader = FactorReader()
    save_state(reader.model, weights_path(READER_NAME, root))
    write_card(READER_NAME, {"name": READER_NAME, "arch": reader.arch, "note": "random weights, for tests only"}, root)


def classifier_view(images: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` resized (bilinear, antialiased) to the classifier's input size when it differs
    from theirs (miniSD draws 256 px images, a ViT-B reads 224 px); unchanged otherwise."""
    size = getattr(classifier, "input_size", None)
    if size is None or tuple(images.shape[-2:]) == tuple(size[-2:]):
        return images
    return F.interpolate(images, size=tuple(size[-2:]), mode="bilinear", antialias=True, align_corners=False)
