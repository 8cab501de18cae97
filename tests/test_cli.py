"""The command line: the demo's outputs, inverting a user's own file, and one clear line for every bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench import cli
from workbench.tinyworld import CLASSES


def test_demo_writes_figure_and_table(tmp_path, capsys):
    assert cli.main(["demo", "--num-images", "1", "--num-samples", "2", "--out", str(tmp_path), "--no-progress",
                     "--device", "cpu"]) == 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "demo_metrics.csv")
    assert len(table) == 4 and set(table["classifier"]) == {"tinyworld-cnn", "tinyworld-vit"}
    assert table["feature_cosine"].between(-1, 1).all() and table["judge_agreement"].between(0, 1).all()
    assert "feature_cosine" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16"])
def test_invert_a_users_file_of_any_mode(tmp_path, mode, capsys):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (50, 70, 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA")
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    path = tmp_path / "in.png"
    img.save(path)
    out = tmp_path / "out.png"
    assert cli.main(["invert", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--image", str(path),
                     "--num-samples", "2", "--num-inference-steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 1000
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("prediction on the image: "))
    image_pred, sample_preds = line.removeprefix("prediction on the image: ").split("; on the samples: ")
    assert image_pred in CLASSES and all(p in CLASSES for p in sample_preds.split(", ")), line


def test_help_lists_every_command_with_a_description(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        line = next((s for s in out.splitlines() if s.split()[:1] == [name]), None)
        assert line is not None and len(line.split()) > 2, f"{name} has no line with a description in --help"
    assert {"evaluate", "train-decoder"} <= set(cli.COMMANDS)


def test_unknown_command_suggests(capsys):
    assert cli.main(["demoo"]) == 2
    assert "did you mean 'demo'" in capsys.readouterr().err


def test_layers_command(capsys):
    assert cli.main(["layers", "tinyworld-vit", "--spatial"]) == 0
    assert "blocks.5" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- bad inputs
def not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    return str(path)


def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a file where a run folder should go")
    return str(path)


#: command -> (arguments that fail before any slow work, a word the one-line message must contain)
BAD_INPUTS = {
    "demo": (lambda d: ["--num-samples", "1", "--out", str(d / "demo")], "--num-samples"),
    "layers": (lambda d: ["no-such-model"], "no-such-model"),
    "invert": (lambda d: ["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--image", not_an_image(d),
                          "--device", "cpu"], "notes.png"),
    "evaluate": (lambda d: ["--inverter", "tinyworld-cnn/stage3"], "stage3"),
    "train-classifier": (lambda d: ["--name", "tinyworld-cnn", "--out", str(d / "run"), "--init-from",
                                    str(d / "no-such-data"), "--device", "cpu"], "no-such-data"),
    "train-vae": (lambda d: ["--out", a_file(d), "--device", "cpu"], "notes.txt"),
    "train-base": (lambda d: ["--out", a_file(d), "--device", "cpu"], "notes.txt"),  # bad values: see
    # tests/test_bad_training_args.py (argparse's usage error, exit 2)
    "train-inverter": (lambda d: ["--classifier", "no-such-model", "--layer", "stages.3", "--out", str(d / "run"),
                                  "--device", "cpu"], "no-such-model"),
    "train-decoder": (lambda d: ["--classifier", "no-such-model", "--layer", "stages.3", "--out", str(d / "run"),
                                 "--device", "cpu"], "no-such-model"),
    "train-factor-reader": (lambda d: ["--out", a_file(d), "--device", "cpu"], "notes.txt"),
    "convert-official": (lambda d: [str(d / "no-such.ckpt"), "--out", str(d / "converted")], "no-such.ckpt"),
    "distill": (lambda d: ["--teacher", "tinyworld-cnn/stage3", "--out", str(d / "run"), "--device", "cpu"],
                "stage3"),
}


def test_every_command_has_a_bad_input_here():
    assert set(BAD_INPUTS) == set(cli.COMMANDS)


@pytest.mark.parametrize("cmd", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_line_on_stderr(cmd, tmp_path, capsys):
    make_args, word = BAD_INPUTS[cmd]
    assert cli.main([cmd, *make_args(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"workbench {cmd}: ") and word in err, err


def test_invert_of_a_file_that_is_not_an_image_exits_with_one_line(tmp_path):
    """The command in a process of its own, as a user runs it: status 1, one line naming the file, no traceback."""
    exe = [sys.executable, "-m", "workbench.cli"]
    proc = subprocess.run([*exe, "invert", "--classifier", "tinyworld-cnn", "--layer", "stages.3",
                           "--image", not_an_image(tmp_path), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench invert: ") and "notes.png" in lines[0], proc.stderr


def test_an_out_below_a_file_is_refused_before_any_work(tmp_path, capsys):
    out = f"{a_file(tmp_path)}/figure.png"
    assert cli.main(["invert", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--image", "x.png",
                     "--out", out]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
