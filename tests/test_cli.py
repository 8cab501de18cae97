"""The command line: the demo's outputs, inverting a user's own file, and clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench import cli


def test_demo_writes_figure_and_table(tmp_path, capsys):
    assert cli.main(["demo", "--n", "1", "--samples", "2", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "demo_metrics.csv")
    assert len(table) == 4 and set(table["classifier"]) == {"tinyworld-cnn", "tinyworld-vit"}
    assert table["feature_cosine"].between(-1, 1).all()
    assert "feature_cosine" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16"])
def test_invert_a_users_file_of_any_mode(tmp_path, mode):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (50, 70, 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA")
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    path = tmp_path / "in.png"
    img.save(path)
    out = tmp_path / "out.png"
    assert cli.main(["invert", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--image", str(path),
                     "--samples", "2", "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 1000


def test_invert_refuses_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(Exception, match="notes.png"):
        cli.main(["invert", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--image", str(path)])


def test_unknown_command_suggests(capsys):
    assert cli.main(["demoo"]) == 2
    assert "did you mean 'demo'" in capsys.readouterr().err


def test_layers_command(capsys):
    assert cli.main(["layers", "tinyworld-vit", "--spatial"]) == 0
    assert "blocks.5" in capsys.readouterr().out
