"""Outputs that say what they are (issue 30): short reprs with device and dtype; sampling bars count denoising
steps; invariance maps carry a colour bar; the demo figure is one grid; logits come back without a graph;
``dir(wb)`` lists only the public names; a raw timm model's missing normalisation is said; an SAE refuses maps too
few for its atoms."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

import workbench as wb
from workbench.errors import AnalysisError


def test_short_reprs_with_device_and_dtype():
    clf = wb.load_classifier("tinyworld-cnn")
    base = wb.DiffusionBase.from_pretrained("tinyworld-base")
    for obj in (clf, base):
        text = repr(obj)
        assert len(text) < 300 and "\n" not in text, text
        assert obj.device == torch.device("cpu") and obj.dtype == torch.float32
        assert "device=cpu" in text and "dtype=torch.float32" in text


def test_sampling_bars_count_denoising_steps(capsys):
    base = wb.DiffusionBase.from_pretrained("tinyworld-base")
    x = base.sample(2, num_inference_steps=3, batch_size=1)
    assert "6/6" in capsys.readouterr().err                             # 2 batches x 3 steps, not 2 batches
    base.img2img(x, strength=0.5, num_inference_steps=4, batch_size=1)
    assert "4/4" in capsys.readouterr().err                             # 2 batches x int(4 * 0.5) steps


def test_invariance_maps_have_a_colour_bar_and_the_demo_is_one_grid():
    from workbench.cli.demo import demo_figure

    images, samples = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 3, 8, 8)
    fig = wb.plot.inversion_figure(images, samples)
    bars = [child for ax in fig.axes for child in ax.child_axes]
    assert len(bars) == 2 and bars[0].get_title() == "std"                  # one per row, labelled
    fig = demo_figure(images, {("tinyworld-cnn", "stages.3"): samples, ("tinyworld-vit", "blocks.5"): samples})
    assert len(fig.axes) == 2 * (1 + 2 * (3 + 1))                      # rows = images; one block per layer


def test_logits_carry_no_graph_and_dir_is_public():
    clf = wb.load_classifier("tinyworld-cnn")
    logits, _ = wb.run_with_cache(clf, torch.rand(1, 3, 32, 32), "stages.3")
    assert logits.grad_fn is None and not logits.requires_grad
    logits, _ = wb.run_with_cache(clf.requires_grad_(True), torch.rand(1, 3, 32, 32), "stages.3", detach=False)
    assert logits.grad_fn is not None                                   # asked for: kept
    assert not {"annotations", "importlib"} & set(dir(wb)) and "load_inverter" in dir(wb)


def test_a_raw_timm_model_is_warned_about_once():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wb.run_with_cache(model, torch.rand(1, 3, 64, 64), "layer4")
        wb.run_with_cache(model, torch.rand(1, 3, 64, 64), "layer4")
    said = [str(w.message) for w in caught if "raw timm model" in str(w.message)]
    assert len(said) == 1 and "wb.Classifier(model" in said[0]


def test_an_sae_refuses_maps_too_few_for_its_atoms():
    from workbench.analysis.dictionary import fit_dictionary

    maps = torch.rand(4, 8, 4, 4)                                       # 64 vectors
    with pytest.raises(AnalysisError, match="64 vectors for 128 atoms.*at least 32 maps"):
        fit_dictionary(maps, 128, method="topk", progress=False)
    with pytest.warns(UserWarning, match="64 vectors for 32 atoms"):
        fit_dictionary(maps, 32, method="topk", steps=2, progress=False)


def test_saved_weights_get_the_mode_of_a_plain_open(tmp_path):
    import os

    from workbench.weights import save_state

    old = os.umask(0o022)
    try:
        save_state({"w": torch.zeros(2)}, tmp_path / "controlnet.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "controlnet.safetensors").stat().st_mode & 0o777 == 0o644    # safetensors alone gives 0600


@pytest.mark.parametrize("notebook", ["04_reconstruction_quality", "09_concept_steering"])
def test_the_long_notebook_cells_keep_their_bars(notebook):
    """The evaluation (04) and the steering study (09) take minutes at full size: their bars stay on."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{notebook}.ipynb"
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert not [c for c in cells if "progress=False" in c]
