"""Bad training arguments get a clear error before anything loads (issue 21's "Training arguments").

Every value a run would fail on later, or silently misuse, is refused by ``parse_args`` (an argparse usage error:
one line naming the flag and the value, exit status 2) and by the config dataclass itself (``ValueError``, for the
Python API). ``--resume`` says when there is nothing to resume and refuses another run's checkpoint; a failed run
removes the cache files it wrote.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import ArgumentTypeError, ArgumentValueError
from workbench.training import base, classifier, decoder, featinv, vae
from workbench.training.common import check_resume, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
#: command -> (module, the arguments it needs)
COMMANDS = {
    "train-classifier": (classifier, ["--name", "tinyworld-cnn", "--out", "o"]),
    "train-vae": (vae, ["--out", "o"]),
    "train-base": (base, ["--out", "o"]),
    "train-inverter": (featinv, ["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--out", "o"]),
    "train-decoder": (decoder, ["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--out", "o"]),
}
#: flags every command refuses: (flag, value, what the message says)
EVERY_COMMAND = [
    ("--steps", "0", "--steps 0: must be at least 1"),
    ("--save-every", "0", "--save-every 0: must be at least 1"),
    ("--grad-accum", "0", "--grad-accum 0: must be at least 1"),
    ("--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("--batch-size", "-4", "--batch-size -4: must be at least 1"),
    ("--lr", "-1", "--lr -1.0: must be a finite number >= 0"),
    ("--lr", "nan", "--lr nan: must be a finite number >= 0"),
    ("--max-minutes", "0", "--max-minutes 0.0: must be a number of minutes > 0"),
    ("--max-minutes", "inf", "--max-minutes inf: must be a number of minutes > 0"),
    ("--seed", "-1", "--seed -1: must be in [0, 18446744073709551615]"),
    ("--train-images", "0", "--train-images 0: must be at least 1"),
]
#: flags of one command: (command, flag, value, message)
ONE_COMMAND = [
    ("train-inverter", "--drop-prob", "1.5", "--drop-prob 1.5: must be a fraction in [0, 1]"),
    ("train-inverter", "--ema", "-0.1", "--ema -0.1: must be a fraction in [0, 1]"),
    ("train-inverter", "--eval-images", "-1", "--eval-images -1: must be at least 0"),
    ("train-inverter", "--hidden-channels", "0", "--hidden-channels 0: must be at least 1"),
    ("train-inverter", "--num-workers", "-1", "--num-workers -1: must be at least 0"),
    ("train-inverter", "--snr-gamma", "0", "--snr-gamma 0.0: must be > 0"),
    ("train-inverter", "--classifier-size", "0", "--classifier-size 0: must be at least 1"),
    ("train-inverter", "--epochs", "0", "--epochs 0.0: must be > 0, or left out"),
    ("train-inverter", "--max-grad-norm", "-1", "--max-grad-norm -1.0: must be > 0, or left out"),
    ("train-base", "--null-prob", "2", "--null-prob 2.0: must be a fraction in [0, 1]"),
    ("train-base", "--min-timestep", "1000", "--min-timestep 1000: must be in [0, 999]"),
    ("train-base", "--layers-per-block", "0", "--layers-per-block 0: must be at least 1"),
    ("train-base", "--widths", "0,16", "--widths 0,16: needs one or more widths >= 1"),
    ("train-base", "--eval-images", "0", "--eval-images 0: must be at least 1"),
    ("train-vae", "--kl-weight", "-1", "--kl-weight -1.0: must be >= 0"),
    ("train-classifier", "--test-images", "0", "--test-images 0: must be at least 1"),
    ("train-classifier", "--label-smoothing", "1", "--label-smoothing 1.0: must be in [0, 1)"),
    ("train-decoder", "--feature-loss-images", "0", "--feature-loss-images 0: must be at least 1"),
    ("train-decoder", "--min-channels", "0", "--min-channels 0: must be at least 1"),
    ("train-decoder", "--batch-size", "20001", "--batch-size 20001: more than the 20000 images of --train-images"),
    ("train-inverter", "--batch-size", "50001", "--batch-size 50001: more than the 50000 images of --train-images"),
]
ROWS = [(cmd, *row) for cmd in COMMANDS for row in EVERY_COMMAND] + ONE_COMMAND


@pytest.mark.parametrize("command,flag,value,message", ROWS, ids=[f"{r[0]} {r[1]} {r[2]}" for r in ROWS])
def test_parse_args_refuses_the_value_naming_flag_and_value(command, flag, value, message, capsys):
    module, required = COMMANDS[command]
    with pytest.raises(SystemExit) as e:
        module.parse_args([*required, flag, value])
    assert e.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"workbench {command}: error: {message}")  # argparse's last line


@pytest.mark.parametrize("command,flag,value,message", ROWS, ids=[f"{r[0]} {r[1]} {r[2]}" for r in ROWS])
def test_the_config_refuses_the_value_in_the_python_api(command, flag, value, message):
    """``train_featinv(steps=0)`` and the other configs built in Python refuse what parse_args refuses, with the
    library's ``ArgumentValueError`` (a ``ValueError``)."""
    from workbench.training.common import config_parser

    module, required = COMMANDS[command]
    cls = type(module.parse_args(required))
    fields = vars(config_parser(cls, prog="x", description="").parse_args([*required, flag, value]))  # converted
    with pytest.raises(ArgumentValueError) as e:
        cls(**fields)
    assert str(e.value).startswith(message)


def test_train_featinv_refuses_steps_0_before_loading_anything(monkeypatch):
    import workbench.models

    monkeypatch.setattr(workbench.models, "load_classifier", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ArgumentValueError, match="--steps 0: must be at least 1"):
        featinv.train_featinv(classifier="tinyworld-cnn", layer="stages.3", out="o", steps=0)
    with pytest.raises(ArgumentTypeError, match="--seed 1.5: must be a whole number"):
        featinv.train_featinv(classifier="tinyworld-cnn", layer="stages.3", out="o", seed=1.5)
    with pytest.raises(ArgumentValueError, match="--batch-size 64: more than the 32 images of --train-images"):
        featinv.train_featinv(classifier="tinyworld-cnn", layer="stages.3", out="o", batch_size=64, train_images=32)
    featinv.FeatInvConfig(classifier="c", layer="l", out="o", data="/imagenet", batch_size=64, train_images=32)  # a
    # folder's size is its own: --train-images is the tiny world's


@pytest.mark.parametrize("argv,message", [
    (["train-inverter", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--steps", "0"],
     "--steps 0: must be at least 1"),
    (["train-decoder", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--save-every", "0"],
     "--save-every 0: must be at least 1"),
])
def test_the_command_line_refuses_without_a_traceback(argv, message, tmp_path):
    res = subprocess.run([sys.executable, "-m", "workbench.cli", *argv, "--out", str(tmp_path / "run")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # nothing written


def test_resume_on_an_empty_folder_says_so_in_one_line(tmp_path, capsys):
    config = classifier.parse_args(["--name", "tinyworld-cnn", "--out", str(tmp_path / "new"), "--resume"])
    check_resume(config, what="tinyworld-cnn")
    out = capsys.readouterr().out
    assert out == f"--resume: no checkpoint in {tmp_path / 'new'} yet; tinyworld-cnn starts from step 0\n"
    card = classifier.main(classifier.parse_args(
        ["--name", "tinyworld-cnn", "--out", str(tmp_path / "new"), "--resume", "--steps", "2", "--batch-size", "4",
         "--train-images", "16", "--test-images", "8", "--device", "cpu", "--no-progress",
         "--arch", '{"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}']))
    assert card["training"]["steps"] == 2
    assert "no checkpoint in" in capsys.readouterr().out


def _checkpoint_of(out: Path, **fields) -> None:
    """A checkpoint in ``out`` whose run trained ``fields`` (a stand-in for a real run's: only its record)."""
    save_checkpoint(out, step=3, modules={}, run=featinv.FeatInvConfig(out=str(out), **fields).run_record())


def test_resume_on_another_layers_run_names_both_layers(tmp_path, monkeypatch):
    import workbench.models

    _checkpoint_of(tmp_path, classifier="tinyworld-cnn", layer="stages.2")
    monkeypatch.setattr(workbench.models, "load_classifier", lambda *a, **k: pytest.fail("a model was loaded"))
    config = featinv.parse_args(["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--out", str(tmp_path),
                                 "--resume"])
    with pytest.raises(SystemExit) as e:
        featinv.main(config)
    assert str(e.value) == (f"--resume {tmp_path}: its checkpoint is of a run with layer=stages.2; this run has "
                            "layer=stages.3. Resume it with its own arguments, or pass a new --out")
    _checkpoint_of(tmp_path, classifier="tinyworld-vit", layer="blocks.5", hidden_channels=32)
    with pytest.raises(SystemExit, match="classifier=tinyworld-vit, layer=blocks.5, hidden_channels=32; this run "
                                         "has classifier=tinyworld-cnn, layer=stages.3, hidden_channels=64"):
        featinv.main(config)


def test_resume_on_another_layers_run_through_the_command_line(tmp_path):
    _checkpoint_of(tmp_path, classifier="tinyworld-cnn", layer="stages.2")
    res = subprocess.run([sys.executable, "-m", "workbench.cli", "train-inverter", "--classifier", "tinyworld-cnn",
                          "--layer", "stages.3", "--out", str(tmp_path), "--resume", "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"workbench train-inverter: --resume {tmp_path}: its checkpoint is of a run with layer=stages.2; this run "
        "has layer=stages.3. Resume it with its own arguments, or pass a new --out"]
    assert json.loads((tmp_path / "checkpoint" / "step.json").read_text())["step"] == 3  # left as it was


def test_a_failed_run_leaves_no_cache_files(tmp_path):
    """The run caches latents and features, then fails (--init-from an inverter of another layer does not fit):
    the files it wrote are gone, and so is the cache folder it made."""
    from workbench.paths import data_dir

    out = tmp_path / "run"
    config = featinv.parse_args(["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--out", str(out),
                                 "--steps", "2", "--batch-size", "4", "--train-images", "16", "--device", "cpu",
                                 "--no-progress", "--init-from", str(data_dir() / "inverters" / "tinyworld-cnn" /
                                                                     "stages.2")])
    with pytest.raises(SystemExit, match="does not fit a tinyworld-cnn/stages.3 inverter"):
        featinv.main(config)
    assert not (out / "cache").exists()
    featinv.main(featinv.parse_args(["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--out", str(out),
                                     "--steps", "1", "--batch-size", "4", "--train-images", "16", "--device", "cpu",
                                     "--no-progress", "--eval-images", "0", "--mixed-precision", "no"]))
    assert len(list((out / "cache").glob("*.safetensors"))) == 2  # a run that succeeds keeps them for --resume


# ------------------------------------------------------------------ output folders and --out's lock (issue 31)
def _a_file(tmp: Path) -> str:
    (tmp / "notes.txt").write_text("a file")
    return str(tmp / "notes.txt")


#: (flag, its value from the test's folder, what the message says): refused at start_run, before anything loads
OUTPUT_FOLDERS = [
    ("--out", lambda tmp: _a_file(tmp), "is a file, not a folder"),
    ("--out", lambda tmp: _a_file(tmp) + "/run", "notes.txt is a file, not a folder"),
    ("--out", lambda tmp: "/sys/wb-run", "cannot write in /sys"),
    ("--ship", lambda tmp: "/sys/wb-ship", "--ship /sys/wb-ship: cannot write in /sys"),
    ("--ship", lambda tmp: _a_file(tmp), "is a file, not a folder"),
]
OUTPUT_ROWS = [(cmd, *row) for cmd in COMMANDS for row in OUTPUT_FOLDERS] + [
    ("train-inverter", "--cache-dir", lambda tmp: "/sys/wb-cache", "--cache-dir /sys/wb-cache: cannot write in /sys"),
    ("train-inverter", "--cache-dir", lambda tmp: _a_file(tmp), "is a file, not a folder"),
]


def _no_loading(monkeypatch) -> None:
    import workbench.models

    for name in ("load_classifier", "load_shipped_classifier"):
        monkeypatch.setattr(workbench.models, name, lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize("command,flag,value,message", OUTPUT_ROWS,
                         ids=[f"{r[0]} {r[1]} {r[3]}" for r in OUTPUT_ROWS])
def test_every_output_folder_is_checked_before_any_work(command, flag, value, message, tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    module, required = COMMANDS[command]
    argv = [a if a != "o" else str(tmp_path / "run") for a in required]
    if flag == "--out":
        argv[argv.index("--out") + 1] = value(tmp_path)
    else:
        argv += [flag, value(tmp_path)]
    with pytest.raises(ArgumentValueError, match=message.replace("*", r"\*")):
        module.main(module.parse_args(argv + ["--device", "cpu"]))
    assert not (tmp_path / "run").exists()


def _lock_held_by(out: Path, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.lock").write_text(json.dumps({"pid": pid, "started": "today", "command": "workbench train-inverter"}))


def test_a_second_run_on_one_out_is_refused_naming_the_first(tmp_path, monkeypatch):
    from workbench.errors import ConcurrentUseError

    _no_loading(monkeypatch)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock_held_by(tmp_path / "run", other.pid)
        config = featinv.parse_args(["--classifier", "tinyworld-cnn", "--layer", "stages.3", "--out",
                                     str(tmp_path / "run"), "--device", "cpu"])
        with pytest.raises(ConcurrentUseError, match=rf"another run \(pid {other.pid}, started today: workbench "
                                                      "train-inverter\\) is writing there"):
            featinv.main(config)
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    from workbench.training.outputs import claim_out

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lock_held_by(tmp_path, int(dead.stdout))
    lock = claim_out(tmp_path)
    assert json.loads(lock.read_text())["pid"] == __import__("os").getpid()
    assert claim_out(tmp_path) == lock                      # the same process may claim its folder again
