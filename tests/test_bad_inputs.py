"""The bad-input catalogue (issue 21): every door of the API and the command line refuses bad input early, with an
error of a known type whose message names the bad value or the fix.

The catalogue is grouped by door, one table per entry point: hooks, inverters, the diffusion base, the tiny world,
analysis, the explorer, loading (corrupt folders included), evaluation and the command line. A new entry point
gets a table of its own here. Each API row is ``(id, call, error type, regex the message must match)``; each CLI
row is ``(id, argv builder, word the one-line message must contain)``, and a CLI row also asserts a non-zero exit,
no traceback and nothing written where the command writes. The end of the file checks that library calls leave
the caller's global state alone, and that the CLI's happy-path figure shows its images.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

import workbench as wb
from workbench import cli
from workbench.errors import (
    AnalysisError, ArgumentTypeError, ArgumentValueError, BadInputError, HookError, ImageReadError,
    InterventionError, LayerNotFoundError, UnknownModelError, WeightsUnavailableError)
from workbench.tinyworld import CLASSES


class Case(NamedTuple):
    """One catalogue row of the API: ``call(door)`` must raise ``error`` with a message matching ``match``."""

    id: str
    call: Callable[["Door"], Any]
    error: type
    match: str


class Door:
    """What the rows call into, built once per test module: the shipped tiny-world models, a few images and maps,
    and a temporary folder for corrupt files."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.x = wb.TinyWorld("test", size=2, seed=0).images()                  # [2, 3, 32, 32] in [0, 1]

    @functools.cached_property
    def cnn(self):
        return wb.load_classifier("tinyworld-cnn")

    @functools.cached_property
    def vit(self):
        return wb.load_classifier("tinyworld-vit")

    @functools.cached_property
    def featinv(self):
        return wb.load_inverter("tinyworld-cnn/stages.3")

    @functools.cached_property
    def decoder(self):
        return wb.load_inverter("tinyworld-cnn/stages.3-decoder")

    @functools.cached_property
    def vit_decoder(self):
        return wb.load_inverter("tinyworld-vit/blocks.5-decoder")

    @functools.cached_property
    def maps(self):
        return wb.extract_features(self.cnn, self.x, "stages.3")               # [2, 192, 4, 4]

    def corrupt_decoder(self, name: str, edit: Callable[[Path], None]) -> Path:
        """A copy of the shipped CNN decoder folder, broken by ``edit(folder)``."""
        src = wb.data_dir() / "inverters" / "tinyworld-cnn" / "stages.3-decoder"
        folder = self.tmp / name
        shutil.copytree(src, folder)
        edit(folder)
        return folder


@pytest.fixture(scope="module")
def door(tmp_path_factory) -> Door:
    return Door(tmp_path_factory.mktemp("door"))


def _run_case(case: Case, door: Door) -> None:
    with pytest.raises(case.error, match=case.match):
        case.call(door)


def _ids(rows) -> list[str]:
    return [row.id for row in rows]


def _nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x


def _nan_hook(act, *, name):
    return act * float("nan")


# ============================================================================================ hooks
HOOKS = [
    Case("run_with_cache: floats in 0..255", lambda d: wb.run_with_cache(d.cnn, d.x * 255, "stages.3"),
         BadInputError, "divide by 255"),
    Case("run_with_cache: negative values (normalised)", lambda d: wb.run_with_cache(d.cnn, d.x - 0.5, "stages.3"),
         BadInputError, r"expected \[0, 1\]"),
    Case("run_with_cache: uint8", lambda d: wb.run_with_cache(d.cnn, (d.x * 255).to(torch.uint8), "stages.3"),
         BadInputError, "divide 8-bit images by 255"),
    Case("run_with_cache: a NaN pixel", lambda d: wb.run_with_cache(d.cnn, _nan(d.x), "stages.3"),
         BadInputError, "NaN"),
    Case("run_with_cache: one image without a batch dimension", lambda d: wb.run_with_cache(d.cnn, d.x[0], "stages.3"),
         BadInputError, "add a batch dimension"),
    Case("run_with_cache: 64 px into the 32 px ViT",
         lambda d: wb.run_with_cache(d.vit, torch.rand(1, 3, 64, 64), "blocks.5"),
         BadInputError, r"64x64.*32x32.*wb\.preprocess"),
    Case("run_with_cache: 512 px into the 32 px CNN",
         lambda d: wb.run_with_cache(d.cnn, torch.rand(1, 3, 512, 512), "stages.3"),
         BadInputError, r"512x512.*wb\.preprocess"),
    Case("run_with_cache: a layer given as an int", lambda d: wb.run_with_cache(d.cnn, d.x, 3),
         ArgumentTypeError, r"layer=3 .*'stages\.3'"),
    Case("run_with_cache: an int in a list of layers", lambda d: wb.run_with_cache(d.cnn, d.x, ["stages.2", 3]),
         ArgumentTypeError, "layer=3"),
    Case("run_with_cache: a misspelt layer", lambda d: wb.run_with_cache(d.cnn, d.x, "stage3"),
         LayerNotFoundError, r"'stage3'.*stages\.3"),
    Case("run_with_hooks: a hook that returns NaN",
         lambda d: wb.run_with_hooks(d.cnn, d.x, {"stages.3": _nan_hook}), HookError, r"_nan_hook.*NaN"),
    Case("run_with_hooks: a hook that returns another shape",
         lambda d: wb.run_with_hooks(d.cnn, d.x, {"stages.3": lambda act, name: act[:, :3]}), HookError, "shape"),
    Case("add_direction: NaN alpha", lambda d: wb.add_direction(torch.ones(192), float("nan")),
         InterventionError, "alpha=nan"),
    Case("add_direction: infinite alpha", lambda d: wb.add_direction(torch.ones(192), math.inf),
         InterventionError, "alpha=inf"),
    Case("add_direction: NaN in the direction", lambda d: wb.add_direction(torch.full((192,), float("nan")), 1.0),
         InterventionError, "direction holds NaN"),
    Case("ablate_channels(1.5)", lambda d: wb.ablate_channels(1.5), InterventionError, r"got 1\.5"),
    Case("ablate_channels(True)", lambda d: wb.ablate_channels(True), InterventionError, "got True"),
    Case("ablate_channels([-1])", lambda d: wb.ablate_channels([-1]), InterventionError, "got -1"),
    Case("extract_features: batch_size=0", lambda d: wb.extract_features(d.cnn, d.x, "stages.3", batch_size=0),
         ArgumentValueError, "batch_size=0"),
    Case("extract_features: batch_size=2.5", lambda d: wb.extract_features(d.cnn, d.x, "stages.3", batch_size=2.5),
         ArgumentTypeError, r"batch_size=2\.5"),
]


@pytest.mark.parametrize("case", HOOKS, ids=_ids(HOOKS))
def test_hooks(case, door):
    _run_case(case, door)
    from conftest import assert_no_hooks

    assert_no_hooks(door.cnn)          # no hook outlives a refused call
    assert_no_hooks(door.vit)


# ============================================================================================ inverters
def _invert(d: Door, **kwargs):
    return d.featinv.invert(d.maps, progress=False, **kwargs)


INVERTERS = [
    Case("FeatInv.invert: guidance_scale=nan", lambda d: _invert(d, guidance_scale=float("nan")),
         ArgumentValueError, "guidance_scale=nan"),
    Case("FeatInv.invert: guidance_scale=inf", lambda d: _invert(d, guidance_scale=math.inf),
         ArgumentValueError, "guidance_scale=inf"),
    Case("FeatInv.invert: negative guidance_scale", lambda d: _invert(d, guidance_scale=-1.0),
         ArgumentValueError, r"guidance_scale=-1.*>= 0"),
    Case("FeatInv.invert: feature_guidance_scale=inf", lambda d: _invert(d, feature_guidance_scale=math.inf),
         ArgumentValueError, "feature_guidance_scale=inf"),
    Case("FeatInv.invert: num_inference_steps=2.7", lambda d: _invert(d, num_inference_steps=2.7),
         ArgumentTypeError, r"num_inference_steps=2\.7"),
    Case("FeatInv.invert: num_samples=1.5", lambda d: _invert(d, num_samples=1.5),
         ArgumentTypeError, r"num_samples=1\.5"),
    Case("FeatInv.invert: seed='7'", lambda d: _invert(d, seed="7"), ArgumentTypeError, "seed='7'.*without quotes"),
    Case("FeatInv.invert: seed=2**70", lambda d: _invert(d, seed=2**70), ArgumentValueError, r"2\*\*64"),
    Case("FeatInv.invert: batch_size=0", lambda d: _invert(d, batch_size=0), ArgumentValueError, "batch_size=0"),
    Case("FeatInv.invert: maps scaled by 1e30", lambda d: d.featinv.invert(d.maps * 1e30, progress=False),
         BadInputError, "scaled by mistake"),
    Case("FeatInv.invert: maps with NaN", lambda d: d.featinv.invert(_nan(d.maps), progress=False),
         BadInputError, "NaN"),
    Case("FeatInv.invert_images: floats in 0..255",
         lambda d: d.featinv.invert_images(d.x * 255, d.cnn, progress=False), BadInputError, "divide by 255"),
    Case("FeatInv.invert_images: uint8",
         lambda d: d.featinv.invert_images((d.x * 255).to(torch.uint8), d.cnn, progress=False),
         BadInputError, "divide 8-bit"),
    Case("FeatInv.invert_images: negative values", lambda d: d.featinv.invert_images(d.x - 1, progress=False),
         BadInputError, r"expected \[0, 1\]"),
    Case("decoder.invert: num_samples=1.5", lambda d: d.decoder.invert(d.maps, num_samples=1.5, progress=False),
         ArgumentTypeError, r"num_samples=1\.5"),
    Case("decoder.invert: seed=-1", lambda d: d.decoder.invert(d.maps, seed=-1, progress=False),
         ArgumentValueError, "seed=-1"),
    Case("decoder.invert: maps scaled by 1e30", lambda d: d.decoder.invert(d.maps * 1e30, progress=False),
         BadInputError, "overflow"),
    Case("decoder.invert_images: floats in 0..255",
         lambda d: d.decoder.invert_images(d.x * 255, d.cnn, progress=False), BadInputError, "divide by 255"),
    Case("optimisation: num_optimizer_steps=2.5",
         lambda d: wb.OptimizationInverter(d.cnn, "stages.3").invert(d.maps, num_optimizer_steps=2.5),
         ArgumentTypeError, r"num_optimizer_steps=2\.5"),
    Case("optimisation: a layer given as an int", lambda d: wb.OptimizationInverter(d.cnn, 3),
         ArgumentTypeError, "layer=3"),
]


@pytest.mark.parametrize("case", INVERTERS, ids=_ids(INVERTERS))
def test_inverters(case, door):
    _run_case(case, door)


# ============================================================================================ the diffusion base
def _base(d: Door):
    return d.featinv.base                                                       # tinyworld-base, 32 px


DIFFUSION = [
    Case("img2img: uint8", lambda d: _base(d).img2img((d.x * 255).to(torch.uint8), progress=False),
         BadInputError, "divide 8-bit"),
    Case("img2img: a NaN pixel", lambda d: _base(d).img2img(_nan(d.x), progress=False), BadInputError, "NaN"),
    Case("img2img: floats in 0..255", lambda d: _base(d).img2img(d.x * 255, progress=False),
         BadInputError, "divide by 255"),
    Case("img2img: strength=nan", lambda d: _base(d).img2img(d.x, strength=float("nan"), progress=False),
         ArgumentValueError, "strength=nan"),
    Case("sample: num_inference_steps=2.7", lambda d: _base(d).sample(1, num_inference_steps=2.7, progress=False),
         ArgumentTypeError, r"num_inference_steps=2\.7"),
    Case("sample: num_images=1.5", lambda d: _base(d).sample(1.5, progress=False),
         ArgumentTypeError, r"num_images=1\.5"),
    Case("sample: guidance_scale=nan", lambda d: _base(d).sample(1, guidance_scale=float("nan"), progress=False),
         ArgumentValueError, "guidance_scale=nan"),
    Case("sample: seed=2**64", lambda d: _base(d).sample(1, seed=2**64, progress=False),
         ArgumentValueError, r"2\*\*64"),
]


@pytest.mark.parametrize("case", DIFFUSION, ids=_ids(DIFFUSION))
def test_diffusion(case, door):
    _run_case(case, door)


# ============================================================================================ the tiny world
TINYWORLD = [
    Case("TinyWorld(size=2.7)", lambda d: wb.TinyWorld("test", size=2.7), ArgumentTypeError, r"size=2\.7"),
    Case("TinyWorld(seed=1.9)", lambda d: wb.TinyWorld("test", size=2, seed=1.9), ArgumentTypeError, r"seed=1\.9"),
    Case("TinyWorld(seed=2**64)", lambda d: wb.TinyWorld("test", size=2, seed=2**64), ArgumentValueError,
         r"2\*\*64"),
    Case("TinyWorld(seed=-1)", lambda d: wb.TinyWorld("test", size=2, seed=-1), ArgumentValueError, "seed=-1"),
    Case("TinyWorld(seed='7')", lambda d: wb.TinyWorld("test", size=2, seed="7"), ArgumentTypeError, "seed='7'"),
    Case("TinyWorld(chunk_size=0)", lambda d: wb.TinyWorld("test", size=2, chunk_size=0), ArgumentValueError,
         "chunk_size=0"),
    Case("TinyWorld('tests')", lambda d: wb.TinyWorld("tests", size=2), ArgumentValueError, "'tests'.*'test'"),
    Case("sample_factors(n=1.5)", lambda d: wb.tinyworld.sample_factors(1.5, seed=0, split="test"),
         ArgumentTypeError, r"n=1\.5"),
]


@pytest.mark.parametrize("case", TINYWORLD, ids=_ids(TINYWORLD))
def test_tinyworld(case, door):
    _run_case(case, door)


# ============================================================================================ analysis
def _concept(channels: int = 192):
    from workbench.analysis.concepts import Concept

    direction = torch.zeros(channels)
    direction[0] = 1
    return Concept("c", "stages.3", "tinyworld-cnn", direction, direction[None], 1.0, "mean")


def _analysis():
    from workbench import analysis

    return analysis


ANALYSIS = [
    Case("fit_pca(n_components=2.5)", lambda d: _analysis().pca.fit_pca(d.maps, n_components=2.5),
         ArgumentTypeError, r"n_components=2\.5"),
    Case("interpolate(num_steps=2.5)", lambda d: _analysis().composition.interpolate(d.maps, d.maps, 2.5),
         ArgumentTypeError, r"num_steps=2\.5"),
    Case("interpolate(num_steps=10**12): cannot fit",
         lambda d: _analysis().composition.interpolate(d.maps, d.maps, 10**12), ArgumentValueError,
         r"interpolate\(num_steps=1000000000000\) would build .* GiB"),
    Case("splice: mask value 5", lambda d: _analysis().composition.splice(d.maps, d.maps, torch.full((4, 4), 5.0)),
         AnalysisError, r"\[5, 5\].*extrapolate"),
    Case("splice: mask value -1", lambda d: _analysis().composition.splice(d.maps, d.maps, -torch.ones(4, 4)),
         AnalysisError, r"\[0, 1\]"),
    Case("steer: alpha=nan", lambda d: _analysis().steering.steer(d.maps, _concept(), float("nan")),
         InterventionError, "alpha=nan"),
    Case("transplant: alpha=inf",
         lambda d: _analysis().steering.transplant(d.maps, torch.ones(192), math.inf, torch.ones(4, 4)),
         InterventionError, "alpha=inf"),
    Case("an Edit called with alpha=nan",
         lambda d: _analysis().steering.direction_edit(_concept())(d.maps, float("nan")),
         InterventionError, "alpha=nan"),
    Case("ablation_sweep: a count of 2.5",
         lambda d: _analysis().ablation.ablation_sweep(d.cnn, d.x, torch.zeros(2), "stages.3", range(192), [2.5]),
         ArgumentTypeError, r"2\.5"),
]


@pytest.mark.parametrize("case", ANALYSIS, ids=_ids(ANALYSIS))
def test_analysis(case, door):
    _run_case(case, door)


# ============================================================================================ the explorer
def _explorer(d: Door, inverters, images=None):
    from workbench.widgets import Explorer

    return Explorer(d.cnn, inverters, d.x if images is None else images)


def _parse(text: str):
    from workbench.widgets import parse_channels

    return parse_channels(text, 192)


WIDGETS = [
    Case("parse_channels('5-2')", lambda d: _parse("5-2"), InterventionError, "'5-2' runs backwards.*'2-5'"),
    Case("parse_channels('a-b')", lambda d: _parse("a-b"), InterventionError, "cannot read channels 'a-b'"),
    Case("parse_channels('190-200')", lambda d: _parse("190-200"), InterventionError, "out of range"),
    Case("Explorer: an inverter filed under another layer", lambda d: _explorer(d, {"stages.2": d.decoder}),
         AnalysisError, r"filed under 'stages\.2' inverts 'stages\.3'"),
    Case("Explorer: an inverter of another classifier", lambda d: _explorer(d, {"blocks.5": d.vit_decoder}),
         AnalysisError, "made for 'tinyworld-vit'"),
    Case("Explorer: images in 0..255", lambda d: _explorer(d, {"stages.3": d.decoder}, d.x * 255),
         BadInputError, "divide by 255"),
]


@pytest.mark.parametrize("case", WIDGETS, ids=_ids(WIDGETS))
def test_widgets(case, door):
    _run_case(case, door)


# ============================================================================================ loading
def _truncate_config(folder: Path) -> None:
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])


def _drop_key(key: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        del cfg[key]
        (folder / "config.json").write_text(json.dumps(cfg))
    return edit


def _set_key(key: str, value) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg[key] = value
        (folder / "config.json").write_text(json.dumps(cfg))
    return edit


def _list_config(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2]")


def _png(d: Door, name: str, size: int = 64) -> Path:
    path = d.tmp / name
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(path)
    return path


def _bomb(d: Door):
    """A PNG over Pillow's decompression-bomb limit (lowered for the test, as a 196-megapixel file would be)."""
    path = _png(d, "bomb.png", 128)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        return wb.load_image(path, d.cnn)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _text_file(d: Door) -> Path:
    path = d.tmp / "notes.png"
    path.write_text("not an image")
    return path


LOADING = [
    Case("load_classifier: a name that is not a string", lambda d: wb.load_classifier(3), UnknownModelError,
         "got 3"),
    Case("load_classifier: a misspelt shipped name", lambda d: wb.load_classifier("tinyworld-cn"), UnknownModelError,
         "tinyworld-cnn"),
    Case("load_inverter: a layer given as an int", lambda d: wb.load_inverter("tinyworld-cnn/stages.3", layer=3),
         ArgumentTypeError, "layer=3"),
    Case("load_inverter: a truncated config.json",
         lambda d: wb.load_inverter(d.corrupt_decoder("truncated", _truncate_config)), WeightsUnavailableError,
         r"truncated/config\.json is not valid JSON.*restore"),
    Case("load_inverter: config.json without feature_shape",
         lambda d: wb.load_inverter(d.corrupt_decoder("no-shape", _drop_key("feature_shape"))),
         WeightsUnavailableError, r"no-shape/config\.json is incomplete.*'feature_shape'.*git checkout data/"),
    Case("load_inverter: a feature shape that disagrees with the weights",
         lambda d: wb.load_inverter(d.corrupt_decoder("other-shape", _set_key("feature_shape", [128, 4, 4]))),
         WeightsUnavailableError, r"other-shape/decoder\.safetensors does not match .*config\.json.*restore"),
    Case("load_inverter: config.json that is not an object",
         lambda d: wb.load_inverter(d.corrupt_decoder("a-list", _list_config)), WeightsUnavailableError,
         r"a-list/config\.json holds a JSON list"),
    Case("load_inverter: an unknown inverter class",
         lambda d: wb.load_inverter(d.corrupt_decoder("no-class", _set_key("class", "Magic"))),
         WeightsUnavailableError, "unknown inverter class 'Magic'"),
    Case("load_image: a folder", lambda d: wb.load_image(d.tmp, d.cnn), ImageReadError, "is a folder"),
    Case("load_image: a text file", lambda d: wb.load_image(_text_file(d), d.cnn), ImageReadError,
         "notes.png.*not an image file"),
    Case("load_image: a decompression bomb", _bomb, ImageReadError, r"bomb\.png.*too large.*MAX_IMAGE_PIXELS"),
]
if not torch.cuda.is_available():
    LOADING.append(Case("load_classifier: device='cuda' without a GPU",
                        lambda d: wb.load_classifier("tinyworld-cnn", device="cuda"), ArgumentValueError,
                        "no CUDA GPU"))


@pytest.mark.parametrize("case", LOADING, ids=_ids(LOADING))
def test_loading(case, door):
    _run_case(case, door)


# ============================================================================================ evaluation
def _evaluate(d: Door, dataset):
    return wb.evaluate(d.decoder, d.cnn, dataset=dataset, num_images=2, progress=False)


EVALUATION = [
    Case("evaluate: a uint8 dataset", lambda d: _evaluate(d, (d.x * 255).to(torch.uint8)), BadInputError,
         "divide 8-bit"),
    Case("evaluate: a dataset in 0..255", lambda d: _evaluate(d, d.x * 255), BadInputError, "divide by 255"),
    Case("evaluate: a normalised dataset", lambda d: _evaluate(d, (d.x - 0.5) / 0.25), BadInputError,
         r"expected \[0, 1\]"),
]


@pytest.mark.parametrize("case", EVALUATION, ids=_ids(EVALUATION))
def test_evaluation(case, door):
    _run_case(case, door)


# ============================================================================================ the command line
class CliCase(NamedTuple):
    """One catalogue row of the CLI: ``argv(folder)`` must exit non-zero with one line (no traceback) containing
    ``word``, and leave ``folder`` as it was (nothing written half-way, nothing beside it)."""

    id: str
    argv: Callable[[Path], list[str]]
    word: str


def _image(d: Path) -> str:
    path = d / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return str(path)


def _invert_argv(d: Path, *extra: str, out: str | None = None, image: str | None = None) -> list[str]:
    return ["invert", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--image", image or _image(d),
            "--device", "cpu", "--out", out or str(d / "out.png"), *extra]


def _a_folder(d: Path) -> str:
    (d / "figures").mkdir()
    return str(d / "figures")


def _a_file(d: Path) -> str:
    (d / "notes.txt").write_text("a file")
    return str(d / "notes.txt")


def _not_an_image(d: Path) -> str:
    (d / "notes.png").write_text("not an image")
    return str(d / "notes.png")


CLI = [
    CliCase("invert --guidance nan", lambda d: _invert_argv(d, "--guidance", "nan"), "--guidance-scale=nan"),
    CliCase("invert --guidance-scale inf", lambda d: _invert_argv(d, "--guidance-scale", "inf"), "finite"),
    CliCase("invert --guidance-scale -1", lambda d: _invert_argv(d, "--guidance-scale", "-1"), ">= 0"),
    CliCase("invert --num-samples 0", lambda d: _invert_argv(d, "--num-samples", "0"), "--num-samples=0"),
    CliCase("invert --num-inference-steps 0", lambda d: _invert_argv(d, "--num-inference-steps", "0"),
            "--num-inference-steps=0"),
    CliCase("invert --batch-size 0", lambda d: _invert_argv(d, "--batch-size", "0"), "--batch-size=0"),
    CliCase("invert --seed -1", lambda d: _invert_argv(d, "--seed", "-1"), "2**64"),
    CliCase("invert --num-samples 1.5 (argparse)", lambda d: _invert_argv(d, "--num-samples", "1.5"), "1.5"),
    CliCase("invert --out an existing folder", lambda d: _invert_argv(d, out=_a_folder(d)), "is a folder"),
    CliCase("invert --out below a file", lambda d: _invert_argv(d, out=_a_file(d) + "/figure.png"),
            "is a file, not a folder"),
    CliCase("invert --out in a place that cannot be written", lambda d: _invert_argv(d, out="/sys/wb-figure.png"),
            "cannot write in '/sys'"),
    CliCase("invert --out with a suffix matplotlib cannot write", lambda d: _invert_argv(d, out=str(d / "o.xyz")),
            "'xyz'"),
    CliCase("invert --image a folder", lambda d: _invert_argv(d, image=_a_folder(d)), "is a folder, not an image"),
    CliCase("invert --image missing", lambda d: _invert_argv(d, image=str(d / "missing.png")), "no such file"),
    CliCase("invert --image not an image", lambda d: _invert_argv(d, image=_not_an_image(d)), "notes.png"),
    CliCase("evaluate --json an existing folder",
            lambda d: ["evaluate", "--inverter", "tinyworld-cnn/stages.3", "--json", _a_folder(d)], "is a folder"),
    CliCase("evaluate --num-images 0", lambda d: ["evaluate", "--inverter", "tinyworld-cnn/stages.3",
                                                  "--num-images", "0", "--json", str(d / "s.json")],
            "--num-images=0"),
    CliCase("evaluate --seed 2**64", lambda d: ["evaluate", "--inverter", "tinyworld-cnn/stages.3", "--seed",
                                                str(2**64), "--json", str(d / "s.json")], "2**64"),
    CliCase("demo --out a file", lambda d: ["demo", "--out", _a_file(d), "--device", "cpu"], "is a file"),
    CliCase("demo --num-inference-steps 0", lambda d: ["demo", "--out", str(d / "demo"), "--num-inference-steps",
                                                       "0", "--device", "cpu"], "--num-inference-steps=0"),
    CliCase("layers of an unknown model", lambda d: ["layers", "tinyworld-cn"], "tinyworld-cnn"),
]
if not torch.cuda.is_available():
    CLI.append(CliCase("invert --device cuda without a GPU", lambda d: _invert_argv(d, "--device", "cuda"),
                       "no CUDA GPU"))


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CLI, ids=[c.id for c in CLI])
def test_cli(case, tmp_path, capsys):
    argv = case.argv(tmp_path)
    before = _tree(tmp_path)
    try:
        status = cli.main(argv)
    except SystemExit as exit:              # argparse's usage errors exit with status 2
        status = exit.code
    err = capsys.readouterr().err
    assert status not in (0, None), f"exit status {status}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert case.word in lines[-1], err
    if status == 1:
        assert len(lines) == 1, err
    assert _tree(tmp_path) == before, "the command wrote something before refusing"


def test_cli_guidance_nan_in_a_process_of_its_own(tmp_path):
    """As a user runs it: ``workbench invert --guidance nan`` exits 1 with one line and writes nothing."""
    argv = _invert_argv(tmp_path, "--guidance", "nan")
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--guidance-scale=nan" in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_the_catalogue_is_large_enough():
    rows = HOOKS + INVERTERS + DIFFUSION + TINYWORLD + ANALYSIS + WIDGETS + LOADING + EVALUATION + CLI
    assert len(rows) >= 60 and len({row.id for row in rows}) == len(rows)


# ============================================================================================ global state
def _state() -> dict[str, Any]:
    return {"rng": torch.random.get_rng_state(), "grad": torch.is_grad_enabled(),
            "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(), "environ": dict(os.environ)}


def _assert_same(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    assert torch.equal(before["rng"], after["rng"]), f"{what} advanced torch's global RNG"
    for key in ("grad", "dtype", "threads"):
        assert before[key] == after[key], f"{what} changed {key}: {before[key]} -> {after[key]}"
    changed = {k for k in set(before["environ"]) | set(after["environ"])
               if before["environ"].get(k) != after["environ"].get(k)}
    assert not changed, f"{what} changed os.environ: {sorted(changed)}"


def test_library_calls_leave_global_state_alone():
    import diffusers  # noqa: F401  third-party imports set TORCHINDUCTOR_CACHE_DIR once (torch._dynamo), not us
    import timm  # noqa: F401
    import torch._dynamo  # noqa: F401

    torch.manual_seed(1234)
    x = wb.TinyWorld("test", size=2, seed=0).images()
    calls: dict[str, Callable[[], Any]] = {}
    loaded: dict[str, Any] = {}
    calls["load_classifier (shipped)"] = lambda: loaded.setdefault("cnn", wb.load_classifier("tinyworld-cnn"))
    calls["load_classifier (timm, random weights)"] = lambda: wb.load_classifier("resnet18", pretrained=False,
                                                                                  num_classes=3)
    calls["load_inverter (FeatInv)"] = lambda: loaded.setdefault("inv", wb.load_inverter("tinyworld-cnn/stages.3"))
    calls["load_inverter (decoder)"] = lambda: loaded.setdefault(
        "dec", wb.load_inverter("tinyworld-cnn/stages.3-decoder"))
    calls["DiffusionBase.from_pretrained"] = lambda: wb.DiffusionBase.from_pretrained("tinyworld-base")
    calls["run_with_cache"] = lambda: wb.run_with_cache(loaded["cnn"], x, "stages.3")
    calls["FeatInv.invert_images"] = lambda: loaded["inv"].invert_images(
        x[:1], loaded["cnn"], num_samples=1, num_inference_steps=1, progress=False)
    calls["evaluate (decoder, 2 images)"] = lambda: wb.evaluate(loaded["dec"], loaded["cnn"], dataset=x,
                                                                num_images=2, progress=False)
    for what, call in calls.items():
        before = _state()
        call()
        _assert_same(before, _state(), what)


# ============================================================================================ the CLI's figure
def test_the_invert_figure_shows_its_images(tmp_path, capsys):
    """``workbench invert``'s one-row figure: the image panels fill most of it (the issue saw panels ~2 px tall
    under the title), and the predictions are printed as class names."""
    out = tmp_path / "figure.png"
    assert cli.main(_invert_argv(tmp_path, "--num-samples", "4", "--num-inference-steps", "1", out=str(out))) == 0
    pixels = np.asarray(Image.open(io.BytesIO(out.read_bytes())).convert("RGB")).astype(int)
    ink = np.abs(pixels - 255).sum(-1) > 30                      # anything but the white background
    panel_rows = (ink.mean(1) > 0.5).mean()                      # rows crossing the six panels are mostly ink
    panel_cols = (ink.mean(0) > 0.3).mean()
    assert panel_rows >= 0.5, f"the image panels fill {panel_rows:.0%} of the figure's height"
    assert panel_cols >= 0.6, f"the image panels fill {panel_cols:.0%} of the figure's width"
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("prediction on the image: "))
    image_pred, sample_preds = line.removeprefix("prediction on the image: ").split("; on the samples: ")
    assert image_pred in CLASSES and all(p in CLASSES for p in sample_preds.split(", ")), line


# ------------------------------------------------------------------ training arguments
# The training commands' rows (159: --steps/--save-every/--grad-accum/--batch-size/--train-images 0, negative or NaN
# --lr, --max-minutes 0/inf, --seed -1, each command's fractions and counts, --resume on an empty folder or on another
# layer's run, caches removed after a failed run) live in tests/test_bad_training_args.py, one table over the five
# commands: add a new training flag's rows there.
