"""The explorer in real time (issue 29): debounced live updates in which the last edit wins, on the fast path."""
from __future__ import annotations

import threading
import time

import pytest
import torch

import workbench as wb
from workbench.live_updates import LiveUpdates
from workbench.widgets import Explorer, is_fast


def test_a_burst_of_requests_computes_once_and_shows_the_last():
    calls, shown = [], []
    value = {"v": 0}
    live = LiveUpdates(lambda: calls.append(value["v"]) or value["v"], shown.append, delay_s=0.05)
    for v in range(1, 6):
        value["v"] = v
        live.request()
    assert live.wait(5)
    assert calls == [5] and shown == [5] and live.shown == live.generation == 5


def test_an_update_that_overlaps_a_newer_edit_is_dropped():
    """The first computation is still running when the second edit arrives: its result must not reach the screen,
    and the second edit's does."""
    started, release = threading.Event(), threading.Event()
    shown, value = [], {"v": "first"}

    def compute():
        v = value["v"]
        if v == "first":
            started.set()
            release.wait(5)           # still computing the first edit...
        return v

    live = LiveUpdates(compute, shown.append, delay_s=0.0)
    live.request()
    assert started.wait(5)
    value["v"] = "second"
    live.request()                    # ... when the second edit arrives
    release.set()
    assert live.wait(5)
    assert shown == ["second"]


def test_errors_go_to_on_error():
    errors = []
    live = LiveUpdates(lambda: 1 / 0, print, delay_s=0.0, on_error=errors.append)
    live.request()
    assert live.wait(5) and isinstance(errors[0], ZeroDivisionError)


@pytest.fixture(scope="module")
def fast_explorer():
    from workbench.inverters.distilled import DistilledFeatInv

    cnn = wb.load_classifier("tinyworld-cnn")
    student = DistilledFeatInv.from_teacher(wb.load_inverter("tinyworld-cnn/stages.3")).eval()
    ds = wb.TinyWorld("test", size=6, seed=0)
    return Explorer(cnn, {"stages.3": student}, ds.images(), labels=ds.labels(), num_samples=4, delay_s=0.02)


def test_a_fast_inverter_makes_the_explorer_live_and_the_last_edit_wins(fast_explorer):
    ex = fast_explorer
    assert is_fast(ex.inverters["stages.3"]) and ex.live is not None and ex.is_live()
    assert ex.live.wait(30)
    for i in (1, 2, 3, 5):            # a slider dragged across four images
        ex.image.value = i
    ex.channels.value = "0-15"
    assert ex.live.wait(30)
    expected = ex.compute(ex.settings())
    assert ex.result["samples"].shape == (1, 4, 3, 32, 32)
    assert torch.equal(ex.result["samples"], expected["samples"])              # image 5, channels 0-15 ablated
    assert torch.equal(ex.result["edited"][:, :16], torch.zeros_like(ex.result["edited"][:, :16]))
    assert "images follow" in ex.status.value or "classified" in ex.status.value


def test_a_bad_edit_shows_an_error_and_keeps_the_images(fast_explorer):
    ex = fast_explorer
    ex.channels.value = ""
    assert ex.live.wait(30)
    before = ex.result["samples"].clone()
    ex.channels.value = "0-100000"
    assert ex.live.wait(30)
    assert "out of range" in ex.status.value and torch.equal(ex.result["samples"], before)
    ex.channels.value = ""
    assert ex.live.wait(30)


def test_the_sampling_inverters_keep_the_invert_button():
    cnn = wb.load_classifier("tinyworld-cnn")
    ex = Explorer(cnn, {"stages.3": wb.load_inverter("tinyworld-cnn/stages.3")}, wb.TinyWorld("test", size=2).images())
    assert ex.live is None and not is_fast(ex.inverters["stages.3"]) and not ex.is_live()


def test_live_follows_only_the_layers_with_a_fast_inverter():
    from workbench.inverters.distilled import DistilledFeatInv

    cnn = wb.load_classifier("tinyworld-cnn")
    teacher = wb.load_inverter("tinyworld-cnn/stages.3")
    ex = Explorer(cnn, {"stages.3": DistilledFeatInv.from_teacher(teacher).eval(),
                        "stages.2": wb.load_inverter("tinyworld-cnn/stages.2")},
                  wb.TinyWorld("test", size=2).images(), delay_s=0.0)
    assert ex.is_live() and ex.live.wait(30)
    shown = ex.live.generation
    ex.layer.value = "stages.2"              # a sampling inverter: back to the button
    assert not ex.is_live() and ex.live.generation == shown
    ex.alpha.value = 1.0
    assert ex.live.generation == shown
