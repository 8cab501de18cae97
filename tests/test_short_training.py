"""A short training run is short, and says where its inverter went: the tiny-world data it prepares is sized to its
steps, every phase has a bar, it ends with the line of Python that loads it, and ``wb.load_inverter(OUT)`` takes
the run folder (a bad folder gets advice that fits it). Tiny settings on the shipped tiny-world components."""
from __future__ import annotations

import pytest

import workbench as wb
from workbench.errors import WeightsUnavailableError
from workbench.training import featinv
from workbench.training.common import config_parser
from workbench.training.featinv import DEFAULT_TRAIN_IMAGES, FeatInvConfig, sized_train_images


def _config(**kw) -> FeatInvConfig:
    return FeatInvConfig(classifier="tinyworld-cnn", layer="stages.3", out="o", **kw)


def test_data_preparation_is_sized_to_the_step_budget():
    assert sized_train_images(_config(steps=20)) == 20 * 128                # what 20 steps of batch 128 draw
    assert sized_train_images(_config(steps=20), processes=2) == 2 * 20 * 128
    assert sized_train_images(_config()) == DEFAULT_TRAIN_IMAGES == 50_000  # a long run: the full set
    assert sized_train_images(_config(steps=20, batch_size=16, train_images=64)) == 64   # --train-images wins
    assert sized_train_images(_config(epochs=1.0)) == DEFAULT_TRAIN_IMAGES  # epochs follow the data
    help_text = " ".join(config_parser(FeatInvConfig, prog="p", description="").format_help().split())
    assert "steps x batch size x processes, at most 50,000" in help_text      # --help says it


def test_a_short_run_shows_every_phase_prints_how_to_load_and_loads_from_its_folder(tmp_path, capfd):
    out = tmp_path / "x"
    args = featinv.parse_args(["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--steps", "2",
                               "--batch-size", "4", "--eval-images", "0", "--device", "cpu", "--out", str(out)])
    inv, card = featinv.main(args)
    assert card["training"]["train_images"] == 8          # 2 steps x 4 images, not 50,000
    captured = capfd.readouterr()
    for phase in ("render train", "VAE encoding", "features stages.3", "FeatInv tinyworld-cnn/stages.3"):
        assert phase in captured.err, f"no progress bar for {phase!r}"
    assert f"wb.load_inverter({str(out)!r})" in captured.out and str(out / "inverter") in captured.out
    loaded = wb.load_inverter(out)                        # the run folder, as printed
    assert (loaded.classifier_name, loaded.layer) == ("tinyworld-cnn", "stages.3")


def test_a_bad_folder_gets_advice_that_fits_it(tmp_path):
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoint").mkdir(parents=True)
    with pytest.raises(WeightsUnavailableError, match="only when it finishes.*--resume"):
        wb.load_inverter(unfinished)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsUnavailableError, match="no config.json, and no inverter/config.json") as e:
        wb.load_inverter(empty)
    assert "Train one with" not in str(e.value)
    with pytest.raises(WeightsUnavailableError, match="tinyworld-cnn/stages.3"):
        wb.load_inverter("tinyworld-cnn/stages.33")
