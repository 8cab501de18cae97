"""CLI habits a newcomer relies on (issue 30): ``--version``; every flag with help and its default; counts printed as
integers; multi-line fixes keep their lines; one ``--mixed-precision`` default that never picks reduced precision on
a CPU; ``invert --inverter FOLDER`` needs nothing else; the offline advice names ``hf download``."""
from __future__ import annotations

import dataclasses
import importlib

import pytest

from workbench import __version__, cli
from workbench.cli import evaluate, invert

PLAIN = ["demo", "invert", "evaluate", "layers"]


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"workbench {__version__}"


@pytest.mark.parametrize("cmd", PLAIN)
def test_every_flag_has_help_and_shows_its_default(cmd):
    module = importlib.import_module(cli.COMMANDS[cmd][0])
    import argparse

    captured = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, argv=None, namespace=None):
        captured["parser"] = self
        return real(self, argv, namespace)
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            module.parse_args(["--help"])
    finally:
        argparse.ArgumentParser.parse_args = real
    parser = captured["parser"]
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings[0]} has no help text"
    text = parser.format_help()
    if cmd != "layers":
        assert "(default: 0)" in text and "(default: auto)" in text, text     # --seed, --device


def test_invert_needs_only_the_inverter_folder(tmp_path):
    args = invert.parse_args(["--inverter", "tinyworld-cnn/stages.2", "--image", "x.png"])
    invert.fill_from_inverter(args)
    assert (args.classifier, args.layer) == ("tinyworld-cnn", "stages.2")
    with pytest.raises(SystemExit):
        invert.parse_args(["--image", "x.png"])                 # neither an inverter nor classifier and layer


def test_evaluate_prints_counts_as_integers():
    assert evaluate.format_value("n_images", 8.0) == "8" and evaluate.format_value("nonfinite", 0.0) == "0"
    assert evaluate.format_value("feature_cosine", 1.0) == "1.0000"


def test_a_multi_line_fix_keeps_its_lines(capsys):
    assert cli._fail("invert", "could not load x: offline\nTwo ways to fix it:\n  1. a file;\n  2. a cache.") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["workbench invert: could not load x: offline", "  Two ways to fix it:", "  1. a file;",
                   "  2. a cache."]


def test_one_mixed_precision_default_and_never_bf16_on_a_cpu():
    from workbench.training import base, classifier, decoder, featinv, vae
    from workbench.training.common import resolve_mixed_precision

    configs = [classifier.ClassifierConfig, vae.VAEConfig, base.BaseConfig, featinv.FeatInvConfig,
               decoder.DecoderConfig]
    defaults = {c.__name__: {f.name: f.default for f in dataclasses.fields(c)}["mixed_precision"] for c in configs}
    assert set(defaults.values()) == {"auto"}, defaults
    assert resolve_mixed_precision("auto", "cpu") == "no"
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"              # asked for: given


def test_offline_advice_names_hf_download(monkeypatch):
    from workbench.diffusion import _snapshot
    from workbench.errors import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="`hf download no-such-org/no-such-base`"):
        _snapshot("no-such-org/no-such-base")
