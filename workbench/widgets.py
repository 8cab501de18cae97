"""An interactive explorer (ipywidgets): pick an image and a layer, ablate channels or steer along a concept,
and see the original, the inversions and the logits update.

It works in JupyterLab (ipywidgets 8). All computing goes through :mod:`workbench.analysis`; the explorer
only wires controls to it, so tests can build it and fire its callbacks without a browser.

Example:
    >>> ex = Explorer(cnn, {"stages.3": wb.load_inverter("tinyworld-cnn/stages.3")}, x[:16], labels=y[:16])
    >>> ex                                  # in a notebook: the controls, images and logits
    >>> ex.channels.value = "0-15"; ex.run.click()
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import AnalysisError, InterventionError


def parse_channels(text: str, num_channels: int) -> list[int]:
    """``"3, 7, 10-12"`` -> ``[3, 7, 10, 11, 12]``, checked against ``num_channels``.

    Raises:
        InterventionError: text that is not ints and ranges, or indices out of range.

    Example:
        >>> parse_channels("0-2, 5", 192)
        [0, 1, 2, 5]
    """
    from .interventions import check_channels

    out: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InterventionError(f"cannot read channels {text!r}: write ints and ranges, e.g. '3, 7, 10-20'") from None
    return check_channels(out, num_channels)


def _png(images: Tensor, scale: int = 4) -> bytes:
    """``Tensor[N, 3, H, W]`` in [0, 1] -> one PNG row, upscaled (nearest) for the screen."""
    from PIL import Image

    row = torch.cat(list(images.float().clamp(0, 1)), dim=2)                       # [3, H, N*W]
    arr = (row.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Explorer:
    """Explore what a layer keeps: edit its map (ablate channels, steer along a concept) and invert the edit.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        inverters: ``{layer: FeatInv}``, the layers to choose from.
        images: ``Tensor[N, 3, H, W]`` in [0, 1] to choose from.
        labels: ``Tensor[N]`` true classes (shown if given).
        concepts: ``{name: Concept}``; a concept is offered only for its own layer.
        class_names: names by class index (default: the tiny world's).
        num_samples: inversions per run.
        num_inference_steps: denoising steps (default: the inverter's).
        seed: sampling seed.
        top_k: classes listed in the logits table.

    Attributes:
        widget: the ``ipywidgets.VBox`` to display.
        result: after each run, ``{"features", "edited", "logits_before", "logits_after", "samples"}``.
    """

    def __init__(self, classifier: nn.Module, inverters: Mapping[str, nn.Module], images: Tensor, *,
                 labels: Tensor | None = None, concepts: Mapping[str, object] | None = None,
                 class_names: Sequence[str] | None = None, num_samples: int = 2,
                 num_inference_steps: int | None = None, seed: int = 0, top_k: int = 3):
        import ipywidgets as w

        from .tinyworld import CLASSES

        if not inverters:
            raise AnalysisError("Explorer needs at least one inverter, e.g. {'stages.3': wb.load_inverter(...)}")
        self.classifier, self.inverters, self.images = classifier, dict(inverters), images
        self.labels = labels
        self.concepts = dict(concepts or {})
        self.class_names = list(class_names or CLASSES)
        self.num_inference_steps, self.seed, self.top_k = num_inference_steps, seed, top_k
        self.result: dict = {}
        self._channel_means: dict[str, Tensor] = {}

        self.image = w.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
        self.layer = w.Dropdown(options=list(self.inverters), description="layer")
        self.channels = w.Text(value="", placeholder="e.g. 0-15, 40", description="ablate")
        self.mode = w.Dropdown(options=["zero", "mean"], value="zero", description="ablate to")
        self.concept = w.Dropdown(description="concept")
        self.alpha = w.FloatSlider(value=0.0, min=-4.0, max=4.0, step=0.5, description="alpha")
        self.samples = w.IntSlider(value=num_samples, min=1, max=8, description="samples")
        self.run = w.Button(description="Invert", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=num_samples, description="sampling")
        self.status = w.HTML()
        self.picture = w.Image(format="png")
        self.logits = w.HTML()
        self._refresh_concepts()
        self.layer.observe(lambda change: self._refresh_concepts(), names="value")
        self.image.observe(lambda change: self._show_original(), names="value")
        self.run.on_click(lambda button: self.update())
        controls = w.VBox([self.image, self.layer, w.HBox([self.channels, self.mode]), w.HBox([self.concept, self.alpha]),
                           w.HBox([self.samples, self.run]), self.progress, self.status])
        self.widget = w.VBox([controls, self.picture, self.logits])
        self._show_original()

    # ------------------------------------------------------------------ callbacks
    def _refresh_concepts(self) -> None:
        names = [n for n, c in self.concepts.items() if getattr(c, "layer", None) == self.layer.value]
        self.concept.options = ["(none)"] + names
        self.concept.value = "(none)"

    def _show_original(self) -> None:
        self.picture.value = _png(self.images[self.image.value:self.image.value + 1])
        self.status.value = "press <b>Invert</b> to sample"

    def _table(self, before: Tensor, after: Tensor) -> str:
        pb, pa = before.softmax(-1), after.softmax(-1)
        order = torch.argsort(torch.maximum(pb, pa), descending=True)[: self.top_k]
        truth = "" if self.labels is None else f" (true: {self.class_names[int(self.labels[self.image.value])]})"
        rows = "".join(f"<tr><td>{self.class_names[k]}</td><td>{before[k]:.2f}</td><td>{after[k]:.2f}</td>"
                       f"<td>{pb[k]:.2f}</td><td>{pa[k]:.2f}</td></tr>" for k in order.tolist())
        return (f"<b>logits</b>{truth}<table><tr><th>class</th><th>logit</th><th>edited</th><th>p</th>"
                f"<th>p edited</th></tr>{rows}</table>")

    def edit(self, features: Tensor) -> Tensor:
        """Apply the current ablation and steering to ``Tensor[B, C, h, w]``."""
        from .analysis.ablation import ablate_features
        from .analysis.concepts import steer

        out = features
        chans = parse_channels(self.channels.value, features.shape[1])
        if chans:
            means = self._means() if self.mode.value == "mean" else None
            out = ablate_features(out, chans, mode=self.mode.value, means=means)
        if self.concept.value != "(none)" and self.alpha.value != 0:
            out = steer(out, self.concepts[self.concept.value], self.alpha.value, layer=self.layer.value)
        return out

    def _means(self) -> Tensor:
        from .analysis.ablation import channel_means

        if self.layer.value not in self._channel_means:   # dataset means over the explorer's images, once per layer
            self._channel_means[self.layer.value] = channel_means(self.classifier, self.images, self.layer.value)
        return self._channel_means[self.layer.value]

    def update(self) -> dict:
        """Run the current settings: edit the map, compute logits, invert with progress. Returns :attr:`result`."""
        from .analysis import map_logits
        from .hooks import extract_features

        i, layer = self.image.value, self.layer.value
        inverter = self.inverters[layer]
        x = self.images[i:i + 1]
        try:
            feats = extract_features(self.classifier, x, layer).float().cpu()
            edited = self.edit(feats)
        except (AnalysisError, InterventionError) as err:
            self.status.value = f"<span style='color:#b00'>{err}</span>"
            return self.result
        before = map_logits(self.classifier, x, layer, feats)[0]
        after = map_logits(self.classifier, x, layer, edited)[0]
        n = self.samples.value
        self.progress.max, self.progress.value = n, 0
        self.status.value = f"sampling {n} image(s) from {layer} ..."
        outs = []
        for s in range(n):   # one sample at a time, so the bar moves
            outs.append(inverter.invert(edited, num_samples=1, num_inference_steps=self.num_inference_steps,
                                        seed=self.seed + s, progress=False))
            self.progress.value = s + 1
        samples = torch.cat(outs, 1)                                               # [1, S, 3, H, W]
        self.picture.value = _png(torch.cat([x, samples[0]]))
        self.logits.value = self._table(before, after)
        pred = self.class_names[_argmax(self.classifier, samples[0])]
        self.status.value = f"original | {n} inversion(s); the first inversion is classified as <b>{pred}</b>"
        self.result.update({"features": feats, "edited": edited, "logits_before": before, "logits_after": after,
                            "samples": samples})
        return self.result

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _argmax(classifier: nn.Module, images: Tensor) -> int:
    from .analysis import class_probabilities

    return int(class_probabilities(classifier, images[:1]).argmax(1)[0])
