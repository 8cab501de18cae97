"""Every public entry point leaves the caller's global state as it found it (issue 31, family 6).

The state: ``os.environ``, torch's, numpy's and ``random``'s generators, grad mode, inference mode, the default dtype,
torch's thread count, the warnings filters and the open pyplot figures (a plot opens only the figure it returns).
``CALLS`` holds one cheap call per name of ``wb.__all__`` (a test fails for a name without one: a new entry point
gets its row here) and per analysis entry point, on tiny inputs with the shipped tiny-world models.
"""
from __future__ import annotations

import functools
import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import workbench as wb

pytestmark = pytest.mark.usefixtures("one_thread")


class Kit:
    """What the calls need, built once per module: the shipped tiny-world models, two images, their maps."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.x = wb.TinyWorld("test", size=2, seed=0).images()            # [2, 3, 32, 32]

    @functools.cached_property
    def cnn(self):
        return wb.load_classifier("tinyworld-cnn")

    @functools.cached_property
    def featinv(self):
        return wb.load_inverter("tinyworld-cnn/stages.3")

    @functools.cached_property
    def decoder(self):
        return wb.load_inverter("tinyworld-cnn/stages.3-decoder")

    @functools.cached_property
    def maps(self):
        return wb.extract_features(self.cnn, self.x, "stages.3")           # [2, 192, 4, 4]

    def png(self) -> Path:
        from PIL import Image

        path = self.tmp / "image.png"
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(path)
        return path


def _capture(k: Kit):
    with wb.capture(k.cnn, "stages.3") as cache:
        k.cnn(k.x)
    return cache


def _train(k: Kit):
    return wb.train_featinv(classifier="tinyworld-cnn", layer="stages.3", steps=1, batch_size=4, out=str(k.tmp / "run"),
                            device="cpu", train_images=8, eval_images=0, progress=False, mixed_precision="no",
                            seed=7)


def _seeded(*shape: int) -> torch.Tensor:
    """Inputs drawn from their own generator: the test's own draws must not move the global RNG it watches."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def _built(build: Callable[[], Any]) -> Any:
    """A module constructed as torch constructs any module, drawing its initial weights from the global RNG (as
    ``nn.Linear`` does), so the constructor runs outside the watched state; the call on it is watched."""
    with torch.random.fork_rng(devices=[]):
        return build()


def _analysis():
    from workbench import analysis

    return analysis


def _concept():
    from workbench.analysis.concepts import Concept

    direction = torch.zeros(192)
    direction[0] = 1
    return Concept("c", "stages.3", "tinyworld-cnn", direction, direction[None], 1.0, "mean")


#: name -> the call; names of ``wb.__all__`` first, then the analysis, metrics and robustness entry points
CALLS: dict[str, Callable[[Kit], Any]] = {
    "Classifier": lambda k: wb.Classifier(torch.nn.Identity(), (0.5,) * 3, (0.25,) * 3, (3, 32, 32))(k.x),
    "load_classifier": lambda k: wb.load_classifier("resnet18", pretrained=False, num_classes=3),
    "preprocess": lambda k: wb.preprocess(k.cnn),
    "load_image": lambda k: wb.load_image(k.png(), k.cnn),
    "WeightsUnavailableError": lambda k: wb.WeightsUnavailableError("x"),
    "WorkbenchError": lambda k: wb.WorkbenchError("x"),
    "layer_table": lambda k: wb.layer_table(k.cnn),
    "capture": _capture,
    "run_with_cache": lambda k: wb.run_with_cache(k.cnn, k.x, ["stages.2", "stages.3"]),
    "run_with_hooks": lambda k: wb.run_with_hooks(k.cnn, k.x, {"stages.2": wb.ablate_channels([3, 7])}),
    "FeatureCache": lambda k: repr(wb.FeatureCache()),
    "extract_features": lambda k: wb.extract_features(k.cnn, k.x, "stages.3", batch_size=1),
    "ablate_channels": lambda k: wb.run_with_hooks(k.cnn, k.x, {"stages.3": wb.ablate_channels([1], mode="mean")}),
    "add_direction": lambda k: wb.run_with_hooks(k.cnn, k.x, {"stages.3": wb.add_direction(torch.ones(192), 0.5)}),
    "TinyWorld": lambda k: wb.TinyWorld("test", size=3, seed=1)[2],
    "DiffusionBase": lambda k: k.featinv.base.sample(1, num_inference_steps=1, scheduler="ddpm", progress=False),
    "FeatInv": lambda k: k.featinv.invert(k.maps[:1], num_inference_steps=1, scheduler="ddpm", progress=False,
                                          feature_guidance_scale=0),
    "FeatureConditioning": lambda k: _built(lambda: wb.FeatureConditioning(8, 16, (4, 4)))(_seeded(1, 8, 2, 2)),
    "invariance_map": lambda k: wb.invariance_map(_seeded(1, 2, 3, 8, 8)),
    "load_inverter": lambda k: wb.load_inverter("tinyworld-cnn/stages.3-decoder"),
    "list_inverters": lambda k: wb.list_inverters(),
    "train_featinv": _train,
    "presets": lambda k: wb.presets.official().arguments(data="d", out="o"),
    "evaluate": lambda k: wb.evaluate(k.decoder, k.cnn, dataset=k.x, num_images=2, progress=False),
    "OptimizationInverter": lambda k: wb.OptimizationInverter(k.cnn, "stages.3").invert(
        k.maps[:1], num_optimizer_steps=1, progress=False),
    "DecoderInverter": lambda k: k.decoder.invert(k.maps, num_samples=2, seed=3, progress=False),
    "data_dir": lambda k: wb.data_dir(),
    "fast_mode": lambda k: wb.fast_mode(),
    "Explorer": lambda k: wb.Explorer(k.cnn, {"stages.3": k.decoder}, k.x),
    "InverterBase": lambda k: k.decoder.invert(k.maps[:1], progress=False),         # the base class's invert
    "register_inverter": lambda k: wb.register_inverter("decoder"),
    "Sampler": lambda k: wb.Sampler.build(None, num_inference_steps=3),
    "RetrievalInverter": lambda k: wb.RetrievalInverter.from_bank("tinyworld-cnn", "stages.3", k.maps, k.x).invert(
        k.maps, num_samples=1, progress=False),
    "load_judges": lambda k: wb.load_judges(),
    "load_factor_reader": lambda k: wb.load_factor_reader(),
    # beyond wb.__all__: analysis, metrics, robustness
    "analysis.pca.fit_pca": lambda k: _analysis().pca.fit_pca(k.maps, n_components=3),
    "analysis.dictionary.fit_dictionary (pca)": lambda k: _analysis().dictionary.fit_dictionary(
        k.maps, 4, method="pca", seed=0, progress=False),
    "analysis.dictionary.fit_dictionary (nmf)": lambda k: _analysis().dictionary.fit_dictionary(
        k.maps.clamp_min(0), 4, method="nmf", seed=0, progress=False),
    "analysis.dictionary.fit_dictionary (topk, overcomplete)": lambda k: _analysis().dictionary.fit_dictionary(
        k.maps, 4, method="topk", top_k=2, steps=2, batch_size=8, seed=0, progress=False),
    "analysis.composition.interpolate": lambda k: _analysis().composition.interpolate(k.maps, k.maps.flip(0), 3),
    "analysis.composition.splice": lambda k: _analysis().composition.splice(k.maps, k.maps.flip(0),
                                                                            torch.ones(4, 4)),
    "analysis.steering.steer": lambda k: _analysis().steering.steer(k.maps, _concept(), 1.0),
    "metrics.psnr": lambda k: wb.metrics.psnr(k.x, k.x.flip(0)),
    "robustness.corrupt": lambda k: wb.robustness.corrupt(k.x, "gaussian_noise", 1, seed=3),
    "plot.inversion_figure": lambda k: wb.plot.inversion_figure(k.x, _seeded(2, 2, 3, 32, 32)),
}


def _state() -> dict[str, Any]:
    import matplotlib.pyplot as plt

    np_state = np.random.get_state()
    return {"environ": dict(os.environ), "torch_rng": torch.random.get_rng_state(),
            "numpy_rng": (np_state[1].tobytes(), *np_state[2:]), "random": random.getstate(),
            "grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
            "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
            "warnings": list(warnings.filters), "figures": plt.get_fignums()}


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    env = sorted(k for k in set(before["environ"]) | set(after["environ"])
                 if before["environ"].get(k) != after["environ"].get(k))
    if env:
        out.append(f"os.environ {env}")
    if not torch.equal(before["torch_rng"], after["torch_rng"]):
        out.append("torch's global RNG")
    out += [key for key in ("numpy_rng", "random", "grad", "inference", "dtype", "threads", "warnings")
            if before[key] != after[key]]
    return out


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    # third-party imports that set process state once, whoever imports them first (not calls of ours)
    import diffusers  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import timm  # noqa: F401
    import torch._dynamo  # noqa: F401

    kit = Kit(tmp_path_factory.mktemp("kit"))
    for name in ("cnn", "featinv", "decoder", "maps"):   # loaded (and their imports run) before any call is watched
        getattr(kit, name)
    return kit


def test_every_public_name_has_a_call():
    missing = sorted(set(wb.__all__) - set(CALLS))
    assert not missing, f"public names without a global-state call in tests/test_global_state.py: {missing}"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_leaves_global_state_alone(name, kit):
    import matplotlib.pyplot as plt

    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    before = _state()
    result = CALLS[name](kit)
    after = _state()
    changed = _changes(before, after)
    assert not changed, f"{name} changed {changed}"
    opened = sorted(set(after["figures"]) - set(before["figures"]))
    returns_figure = isinstance(result, plt.Figure)
    assert len(opened) == int(returns_figure), f"{name} left pyplot figures {opened} open"
    if returns_figure:
        plt.close(result)


def test_two_threads_inverting_with_one_inverter_both_succeed(kit):
    """The ControlNet's condition embedding is swapped out while one inversion runs; a second thread waits for it
    (inverters.featinv._embedded_condition's lock) instead of failing with a size error, and gets the same images."""
    import threading

    kw = dict(num_inference_steps=2, feature_guidance_scale=0, progress=False, seed=1)
    expected = kit.featinv.invert(kit.maps, **kw)
    results: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = kit.featinv.invert(kit.maps, **kw)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(torch.equal(r, expected) for r in results)
