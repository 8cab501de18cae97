"""An interactive explorer (ipywidgets): pick an image and a layer, ablate channels or steer along a concept,
and see the original, the inversions and the logits update.

It works in JupyterLab (ipywidgets 8). All computing goes through :mod:`workbench.analysis`; the explorer
only wires controls to it, so tests can build it and fire its callbacks without a browser.

Example:
    >>> Explorer.tinyworld()                # in a notebook: the shipped CNN, its inverters and concepts
    >>> ex = Explorer(cnn, {"stages.3": wb.load_inverter("tinyworld-cnn/stages.3")}, x[:16], labels=y[:16])
    >>> ex.channels.value = "0-15"; ex.run.click()
"""
from __future__ import annotations

import base64
import html
import io
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .checks import check_seed, checked_int
from .inverters.interface import Inverter
from .inverters.sampler import Sampler
from .errors import AnalysisError, ArgumentValueError, InterventionError


def parse_channels(text: str, num_channels: int) -> list[int]:
    """``"3, 7, 10-12"`` -> ``[3, 7, 10, 11, 12]``, checked against ``num_channels``.

    Raises:
        InterventionError: text that is not ints and ranges, a range that runs backwards (``"5-2"``), or indices out
            of range.

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
                lo, hi = int(lo), int(hi)
            else:
                lo = hi = int(part)
        except ValueError:
            raise InterventionError(f"cannot read channels {text!r}: write ints and ranges, e.g. '3, 7, 10-20'") from None
        if hi < lo:
            raise InterventionError(f"the channel range {part!r} runs backwards; write '{hi}-{lo}' for channels {hi} "
                                    f"to {lo}")
        if hi >= num_channels:          # before the range is listed: '0-1000000000' would fill the memory
            raise InterventionError(f"the channel range {part!r} is out of range: this map has {num_channels} "
                                    f"channels, so indices run 0..{num_channels - 1}")
        out.extend(range(lo, hi + 1))
    return check_channels(out, num_channels)


#: Side of one image tile on screen, in CSS pixels: every image is drawn at this size, pixelated, whatever its
#: resolution, and the strip keeps room for all tiles, so the layout does not move when the sample count changes.
TILE = 96
#: Tiles a row of the strip holds; the original and up to 8 samples fit in two rows.
TILES_PER_ROW = 5
#: The most samples a run shows (the strip's two rows); ``num_samples`` above it is refused, not cut.
MAX_SAMPLES = 8


def is_fast(inverter: Inverter) -> bool:
    """Whether an inverter answers fast enough to follow a slider: a distilled one (one or two evaluations per
    image, :class:`~workbench.inverters.distilled.DistilledFeatInv`) or a deterministic one that does not sample."""
    from .inverters.distilled import DistilledFeatInv

    return isinstance(inverter, DistilledFeatInv) or getattr(inverter, "kind", "") == "decoder"


#: How the explorer steers along a concept (:meth:`Explorer.steering_edit`); the last four need real maps, the matched
#: ones their factor tables too; the last (the best in docs/steering.md) inverts with score guidance at SCORE_SCALE.
STEER_METHODS = ("direction, everywhere", "direction, at the object", "nearest real map", "transplant object vector",
                 "matched difference", "matched difference + score guidance")
SCORE_SCALE = 3.0


def _png(image: Tensor) -> str:
    """``Tensor[3, H, W]`` in [0, 1] -> a PNG data URL at the image's own resolution."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _strip(images: Tensor, labels: Sequence[str]) -> str:
    """HTML: a row of labelled tiles, one per ``Tensor[3, H, W]``, drawn at :data:`TILE` pixels, pixelated."""
    tiles = "".join(
        f"<figure style='margin:0 6px 6px 0;text-align:center'>"
        f"<img src='{_png(img)}' style='width:{TILE}px;height:{TILE}px;image-rendering:pixelated;display:block'>"
        f"<figcaption style='font-size:12px;line-height:16px'>{html.escape(label)}</figcaption></figure>"
        for img, label in zip(images, labels))
    return f"<div style='display:flex;flex-wrap:wrap'>{tiles}</div>"


def _probability_table(columns: Mapping[str, Tensor], class_names: Sequence[str], top_k: int) -> str:
    """HTML: ``{column: Tensor[K] probabilities}`` for the ``top_k`` classes most probable in any column."""
    stacked = torch.stack(list(columns.values()))                                     # [columns, K]
    order = torch.argsort(stacked.max(0).values, descending=True)[:top_k].tolist()
    cell = "padding:1px 6px;line-height:16px"
    head = "".join(f"<th style='{cell};text-align:right'>{html.escape(c)}</th>" for c in columns)
    rows = "".join(f"<tr><td style='{cell}'>{html.escape(class_names[k])}</td>" +
                   "".join(f"<td style='{cell};text-align:right'>{p[k]:.2f}</td>" for p in stacked) + "</tr>"
                   for k in order)
    return (f"<table style='font-size:12px;margin:2px 0 8px 0'><tr><th style='{cell};text-align:left'>class</th>"
            f"{head}</tr>{rows}</table>")


def _check_explorer_inputs(classifier: nn.Module, inverters: Mapping[str, Inverter], images: Tensor) -> None:
    """Refuse, before any widget is built, what would fail only when Invert is pressed: no inverter, an inverter filed
    under another layer or made for another classifier, images that are not a float batch in [0, 1]."""
    from .checks import check_images

    if not inverters:
        raise AnalysisError("Explorer needs at least one inverter, e.g. {'stages.3': wb.load_inverter(...)}")
    name = getattr(classifier, "name", None)
    for layer, inverter in inverters.items():
        if getattr(inverter, "layer", layer) != layer:
            raise AnalysisError(f"the inverter filed under {layer!r} inverts {inverter.layer!r}; file it under "
                                f"{inverter.layer!r}, or load the inverter of {layer!r}")
        made_for = getattr(inverter, "classifier_name", None)
        if name not in (None, "custom") and made_for is not None and made_for != name:
            raise AnalysisError(f"the inverter of {layer!r} was made for {made_for!r}, but the classifier is "
                                f"{name!r}; load the inverters of {name!r}")
    check_images(images, "images")
    if len(images) == 0:
        raise AnalysisError("Explorer needs at least one image to choose from")


class Explorer:
    """Explore what a layer keeps: edit its map (ablate channels, steer along a concept) and invert the edit.

    The widget shows a title and one line of help, the controls, then the image strip (the original and the
    inversions, labelled, drawn pixelated at a fixed size) with two probability tables beside it:
    *classifier on the edited map* (the rest of the network run on the original and the edited map) and
    *classifier on the inverted image* (the classifier run on the original and on the inversions). They can
    disagree: an edit can move the map's logits without the inversion looking like the new class.

    Args:
        classifier: a :class:`~workbench.models.Classifier`.
        inverters: ``{layer: FeatInv}``, the layers to choose from.
        images: ``Tensor[N, 3, H, W]`` in [0, 1] to choose from.
        labels: ``Tensor[N]`` true classes (shown if given).
        concepts: ``{name: Concept}`` or a list of concepts; a concept is offered only for its own layer.
        real_maps: ``{(layer, concept name): Tensor[N, C, h, w]}`` (or ``{concept name: ...}``), real maps of each
            concept's class; they enable the steering methods that need them (:data:`STEER_METHODS`).
        steer_bank: ``{layer: (real maps Tensor[N, C, h, w], their factor table)}``, with ``image_factors`` (the
            images' factor table): the matched methods (:mod:`~workbench.analysis.matched_edits`).
        class_names: names by class index (default: the tiny world's).
        num_samples: inversions per run.
        num_inference_steps: denoising steps (default: the sampler's).
        seed: sampling seed.
        top_k: classes listed in each probability table.
        live: re-invert as the controls move (debounced by ``delay_s`` seconds; the last edit wins): True for
            every layer, False for none (press **Invert**), None (default) for the layers whose inverter is fast
            (:func:`is_fast`, e.g. a distilled one).
        delay_s: the pause after the last change before a live update runs.
        sampler: the :class:`~workbench.inverters.sampler.Sampler` FeatInv draws with (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps); kept as :attr:`sampler`.

    Attributes:
        widget: the ``ipywidgets.VBox`` to display.
        result: after each run, ``{"features", "edited", "logits_before", "logits_after", "samples",
            "image_probs", "judge_probs"}`` (``Tensor[S, K]``: the classifier on each inversion; the shipped judges'
            mean, shown in the strip and the third column, None for images they cannot read).
    """

    def __init__(self, classifier: nn.Module, inverters: Mapping[str, Inverter], images: Tensor, *,
                 labels: Tensor | None = None, concepts: Mapping[str, object] | Sequence[object] | None = None,
                 class_names: Sequence[str] | None = None, num_samples: int = 2,
                 num_inference_steps: int | None = None, seed: int = 0, top_k: int = 3,
                 real_maps: Mapping[object, Tensor] | None = None, sampler: Sampler | None = None,
                 steer_bank: Mapping[str, tuple] | None = None, image_factors=None,
                 live: bool | None = None, delay_s: float = 0.05):
        import ipywidgets as w

        from .tinyworld import CLASSES

        if checked_int(num_samples, "num_samples", minimum=1) > MAX_SAMPLES:
            raise ArgumentValueError(f"num_samples={num_samples}: the explorer shows at most {MAX_SAMPLES} samples "
                                     f"per run; pass num_samples={MAX_SAMPLES} or fewer, or call inverter.invert for "
                                     "more")
        seed = check_seed(seed)
        _check_explorer_inputs(classifier, inverters, images)
        self.classifier, self.inverters, self.images = classifier, dict(inverters), images
        self.labels = labels
        if concepts is not None and not isinstance(concepts, Mapping):
            concepts = {(c.layer, c.name): c for c in concepts}             # names repeat across layers
        self.concepts = dict(concepts or {})
        self.real_maps = dict(real_maps or {})
        self.steer_bank, self.image_factors = dict(steer_bank or {}), image_factors
        self.class_names = list(class_names or CLASSES)
        self.sampler = Sampler.build(sampler, num_inference_steps=num_inference_steps)
        self.num_inference_steps, self.seed, self.top_k = self.sampler.num_inference_steps, seed, top_k
        self.result: dict = {}
        self._channel_means: dict[str, Tensor] = {}
        self._per_image: dict[tuple[int, str], tuple[Tensor, Tensor, Tensor]] = {}   # (image, layer) -> map, logits, probs

        narrow = w.Layout(width="300px")
        self.image = w.IntSlider(value=0, min=0, max=len(images) - 1, description="image", layout=narrow)
        self.layer = w.Dropdown(options=list(self.inverters), description="layer", layout=narrow)
        self.samples = w.IntSlider(value=num_samples, min=1, max=MAX_SAMPLES, description="samples", layout=narrow)
        self.channels = w.Text(value="", placeholder="e.g. 0-15, 40", description="ablate", layout=narrow)
        self.mode = w.Dropdown(options=["zero", "mean"], value="zero", description="ablate to", layout=narrow)
        self.concept = w.Dropdown(description="concept", layout=narrow)
        self.method = w.Dropdown(options=STEER_METHODS, value=STEER_METHODS[0], description="steer by",
                                 layout=narrow)
        self.alpha = w.FloatSlider(value=0.0, min=-4.0, max=4.0, step=0.5, description="alpha", layout=narrow)
        self.run = w.Button(description="Invert", button_style="primary", icon="play", layout=w.Layout(width="120px"))
        self.progress = w.IntProgress(value=0, min=0, max=num_samples, layout=w.Layout(width="170px"))
        self.status = w.HTML()
        self.strip = w.HTML(layout=w.Layout(width=f"{TILES_PER_ROW * (TILE + 6) + 4}px",
                                            min_height=f"{2 * (TILE + 22)}px"))
        self.strip.add_class("wb-explorer-strip")
        self.logits = w.HTML()                          # classifier on the edited map
        self.inverted = w.HTML()                        # classifier on the inverted image
        name = getattr(classifier, "name", None) or type(classifier).__name__
        header = w.HTML(f"<b style='font-size:15px'>Explorer: what does {html.escape(str(name))} keep at a layer?"
                        "</b><div style='font-size:12px;line-height:16px'>Pick an image and a layer, ablate "
                        "channels or steer along a concept, press <b>Invert</b> (a live layer re-inverts by itself). "
                        "The samples show what the edited map still fixes; the tables, what the classifier makes of "
                        "the map and of the images.</div>")
        self._refresh_concepts()
        self.layer.observe(lambda change: self._refresh_concepts(), names="value")
        self.image.observe(lambda change: self._show_original(), names="value")
        self.run.on_click(lambda button: self.update())
        controls = w.HBox([w.VBox([self.image, self.layer, self.samples]),
                           w.VBox([w.HBox([self.channels]), self.mode, self.concept, self.method, self.alpha])])
        action = w.HBox([self.run, self.progress, self.status])
        tables = w.VBox([self.logits, self.inverted], layout=w.Layout(width="330px", margin="0 0 0 12px"))
        self.widget = w.VBox([header, controls, action, w.HBox([self.strip, tables])])
        self.widget.add_class("wb-explorer")
        self._show_original()
        self.live, self._live_mode = None, live
        if live or (live is None and any(is_fast(inv) for inv in self.inverters.values())):
            self._start_live(delay_s)

    @classmethod
    def tinyworld(cls, classifier: str = "tinyworld-cnn", *, n_images: int = 16, n_concept_images: int = 512,
                  device: str | torch.device = "cpu", fast: bool = True, **kwargs) -> "Explorer":
        """The explorer on the tiny world in one line: a shipped classifier, every shipped FeatInv inverter of it
        (one per layer; with ``fast``, the distilled one where it is shipped, ``<layer>-distilled``, so that
        the explorer follows the sliders when all are), ``n_images`` test images and one concept per class at each
        layer (the class-mean difference over ``n_concept_images`` training images).

        Example:
            >>> Explorer.tinyworld()            # in a notebook: shows the explorer
        """
        from .analysis.concepts import class_concepts
        from .hooks import extract_features
        from .models import load_classifier
        from .tinyworld import CLASSES, TinyWorld
        from .inverters import list_inverters, load_inverter

        clf = load_classifier(classifier, device=device)
        layers = [n.split("/", 1)[1] for n in list_inverters() if n.startswith(classifier + "/")]
        layers = [layer for layer in layers if "-" not in layer]          # not the -pooled or -decoder variants
        shipped = set(list_inverters())

        def pick(layer: str) -> str:
            distilled = f"{classifier}/{layer}-distilled"
            return distilled if fast and distilled in shipped else f"{classifier}/{layer}"

        inverters = {layer: load_inverter(pick(layer), device=device)
                     for layer in sorted(layers, reverse=True)}      # the deepest layer first
        test, train = TinyWorld("test", size=n_images, seed=0), TinyWorld("train", size=n_concept_images, seed=0)
        x, y = train.images(), train.labels()
        feats = {layer: extract_features(clf, x.to(device), layer).cpu() for layer in inverters}
        concepts = [c for layer in inverters for c in class_concepts(
            feats[layer], y, layer=layer, classifier_name=classifier).values()]
        real_maps = {(layer, c.name): feats[layer][y == CLASSES.index(c.name)] for layer in inverters
                     for c in concepts if c.layer == layer}
        return cls(clf, inverters, test.images(), labels=test.labels(), concepts=concepts, real_maps=real_maps,
                   steer_bank={layer: (feats[layer], train.factor_table()) for layer in inverters},
                   image_factors=test.factor_table(), **kwargs)

    # ------------------------------------------------------------------ callbacks
    def _layer_concepts(self) -> dict[str, object]:
        """The concepts of the current layer, by the name the dropdown shows."""
        return {key[1] if isinstance(key, tuple) else key: c for key, c in self.concepts.items()
                if getattr(c, "layer", None) == self.layer.value}

    def _refresh_concepts(self) -> None:
        self.concept.options = ["(none)"] + list(self._layer_concepts())
        self.concept.value = "(none)"

    def _show_original(self) -> None:
        i = self.image.value
        truth = "" if self.labels is None else f" ({self.class_names[int(self.labels[i])]})"
        self.strip.value = _strip(self.images[i:i + 1], [f"original{truth}"])
        self.status.value = "press <b>Invert</b> to sample"
        self.logits.value = "<b>classifier on the edited map</b><br><i>press Invert</i>"
        self.inverted.value = "<b>classifier on the inverted image</b><br><i>press Invert</i>"

    def edit(self, features: Tensor) -> Tensor:
        """Apply the current ablation and steering to ``Tensor[B, C, h, w]``."""
        from .analysis.ablation import ablate_features

        out = features
        chans = parse_channels(self.channels.value, features.shape[1])
        if chans:
            means = self._means() if self.mode.value == "mean" else None
            out = ablate_features(out, chans, mode=self.mode.value, means=means)
        if self.concept.value != "(none)" and self.alpha.value != 0:
            out = self.steering_edit()(out, self.alpha.value)
        return out

    def steering_edit(self):
        """The current steering as an :class:`~workbench.analysis.steering.Edit`: the chosen concept's direction
        (everywhere or at the object; ``alpha`` in units of its scale), or, with its class's real maps, towards the
        nearest real map or its object vector transplanted (``alpha`` 1 = replaced), or the matched class difference."""
        from .analysis import steering as C
        from .analysis.matched_edits import conditional_edit

        name, layer, method = self.concept.value, self.layer.value, self.method.value
        concept = self._layer_concepts()[name]
        if method.startswith("matched difference"):
            if layer not in self.steer_bank or self.image_factors is None:
                raise AnalysisError(f"steering by {method!r} needs steer_bank= (real maps at {layer!r} and their "
                                    "factor table) and image_factors=; Explorer.tinyworld passes them")
            i = self.image.value
            return conditional_edit(*self.steer_bank[layer], self.image_factors.iloc[i:i + 1].reset_index(drop=True),
                                    "shape", name, layer=layer)
        if method == "direction, everywhere":
            return C.direction_edit(concept)
        if method == "direction, at the object":
            return C.direction_edit(concept, where="object")
        maps = self.real_maps.get((layer, name), self.real_maps.get(name))
        if maps is None:
            raise AnalysisError(f"steering by {method!r} needs real maps of {name!r} at {layer!r}; pass real_maps= "
                                "(Explorer.tinyworld does)")
        if method == "nearest real map":
            return C.retrieval_edit(maps, layer=layer)
        return C.transplant_edit(C.prototype(maps, torch.ones(len(maps), dtype=torch.bool)), layer=layer)

    def _means(self) -> Tensor:
        from .analysis.ablation import channel_means

        if self.layer.value not in self._channel_means:   # dataset means over the explorer's images, once per layer
            self._channel_means[self.layer.value] = channel_means(self.classifier, self.images, self.layer.value)
        return self._channel_means[self.layer.value]

    def settings(self) -> dict:
        """The controls' values now: ``{"image", "layer", "samples"}`` (the edit is read by :meth:`edit`)."""
        return {"image": self.image.value, "layer": self.layer.value, "samples": self.samples.value}

    def compute(self, settings: dict, *, on_sample=None) -> dict:
        """Edit the map of ``settings["image"]`` at ``settings["layer"]``, compute the logits and invert
        ``settings["samples"]`` samples (``on_sample(s)`` after each when given, to move a bar; a fast inverter draws
        them at once). Returns the result (see :attr:`result`); raises AnalysisError or InterventionError for an edit
        that does not fit."""
        from .analysis import class_probabilities, map_logits
        from .analysis.score_steering import score_guided_invert
        from .hooks import extract_features
        from .judges import judge_readings

        i, layer, n = settings["image"], settings["layer"], settings["samples"]
        inverter = self.inverters[layer]
        x = self.images[i:i + 1]
        if (i, layer) not in self._per_image:       # what does not depend on the edit, once per image and layer
            f = extract_features(self.classifier, x, layer).float().cpu()
            self._per_image[i, layer] = (f, map_logits(self.classifier, x, layer, f)[0],
                                         class_probabilities(self.classifier, x).cpu()[0])
        feats, before, original_probs = self._per_image[i, layer]
        edited = self.edit(feats)
        after = map_logits(self.classifier, x, layer, edited)[0]
        scored = self.concept.value != "(none)" and self.alpha.value != 0 and self.method.value.endswith("guidance")
        if scored and getattr(inverter, "uses_sampler", False):   # guidance between the edited and the original map
            samples = score_guided_invert(inverter, feats, edited, edit_scale=SCORE_SCALE, num_samples=n,
                                          sampler=self.sampler, classifier=self.classifier, seed=self.seed,
                                          progress=False)
        elif on_sample is None or is_fast(inverter):    # every sample at once, as the seeds of one call
            samples = inverter.invert(edited, num_samples=n, sampler=self.sampler, seed=self.seed, progress=False)
        else:
            outs = []
            for s in range(n):   # one sample at a time, so the bar moves
                outs.append(inverter.invert(edited, num_samples=1, sampler=self.sampler, seed=self.seed + s,
                                            progress=False))
                on_sample(s + 1)
            samples = torch.cat(outs, 1)                                           # [1, S, 3, H, W]
        probs = class_probabilities(self.classifier, samples[0]).cpu()                    # [S, K]
        judged = judge_readings(samples[0].cpu(), reader=None).get("judge_probs")          # [S, K], the judges'
        return {"image": i, "layer": layer, "features": feats, "edited": edited, "logits_before": before,
                "logits_after": after, "samples": samples, "image_probs": probs, "original_probs": original_probs,
                "judge_probs": judged}

    def show(self, result: dict) -> None:
        """Draw a :meth:`compute` result: the strip, the two probability tables and the status line."""
        i, layer, samples = result["image"], result["layer"], result["samples"]
        n = samples.shape[1]
        truth = "" if self.labels is None else f" ({self.class_names[int(self.labels[i])]})"
        judged = result.get("judge_probs")                                     # the judges, not the edited model
        self.strip.value = _strip(torch.cat([self.images[i:i + 1], samples[0]]), [f"original{truth}"] + [
            f"sample {s + 1}" if judged is None else f"{s + 1}: judges {self.class_names[int(judged[s].argmax())]} "
            f"{float(judged[s].max()):.2f}" for s in range(n)])
        self.logits.value = ("<b>classifier on the edited map</b><div style='font-size:11px;line-height:14px'>the rest "
                             f"of the network run on the {html.escape(layer)} map</div>" + _probability_table(
                                 {"original map": result["logits_before"].softmax(-1),
                                  "edited map": result["logits_after"].softmax(-1)}, self.class_names, self.top_k))
        self.inverted.value = ("<b>classifier on the inverted image</b><div style='font-size:11px;line-height:14px'>"
                               "the classifier run on the images</div>" + _probability_table(
                                   {"original": result["original_probs"],
                                    "inversions (mean)": result["image_probs"].mean(0),
                                    **({} if judged is None else {"judges (mean)": judged.mean(0)})},
                                   self.class_names, self.top_k))
        pred = self.class_names[int(result["image_probs"][0].argmax())]
        self.status.value = f"sample 1 is classified as <b>{html.escape(pred)}</b>"
        self.result.update({k: result[k] for k in ("features", "edited", "logits_before", "logits_after", "samples",
                                                   "image_probs", "judge_probs")})

    def _show_error(self, err: BaseException) -> None:
        self.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"

    def update(self) -> dict:
        """Run the current settings: edit the map, compute logits, invert with progress. Returns :attr:`result`."""
        settings = self.settings()
        n = settings["samples"]
        self.progress.max, self.progress.value = n, 0
        self.status.value = f"sampling {n} image(s) from {settings['layer']} ..."
        self.run.disabled = True
        try:
            result = self.compute(settings, on_sample=lambda s: setattr(self.progress, "value", s))
        except (AnalysisError, InterventionError) as err:
            self._show_error(err)
            return self.result
        finally:
            self.run.disabled = False
        self.progress.value = n
        self.show(result)
        return self.result

    def _live_compute(self) -> dict | None:
        """:meth:`compute` for :class:`~workbench.live_updates.LiveUpdates`: an edit that does not fit is shown as
        the status line and leaves the last images in place (None)."""
        try:
            return self.compute(self.settings())
        except (AnalysisError, InterventionError) as err:
            self._show_error(err)
            return None

    def _start_live(self, delay_s: float) -> None:
        """Re-invert whenever a control changes, debounced by ``delay_s`` seconds; the last edit wins
        (:class:`~workbench.live_updates.LiveUpdates`)."""
        from .live_updates import LiveUpdates

        self.live = LiveUpdates(self._live_compute, lambda result: result is not None and self.show(result),
                                delay_s=delay_s, on_error=self._show_error)
        for control in (self.image, self.layer, self.samples, self.channels, self.mode, self.concept, self.method,
                        self.alpha):
            control.observe(lambda change: self._request_live(), names="value")
        self._request_live()

    def is_live(self) -> bool:
        """Whether the current layer re-inverts as the controls move (see ``live``)."""
        return self.live is not None and (self._live_mode is True or is_fast(self.inverters[self.layer.value]))

    def _request_live(self) -> None:
        if self.is_live():
            self.status.value = "live: the images follow the controls"
            self.live.request()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)



class AtomBrowser:
    """Browse a dictionary's atoms: pick an atom to see the images it fires on most, with its code map laid over
    them, then press **Invert** to steer one image's map along the atom at increasing strength and see FeatInv's
    inversions (what the atom adds, apart from the context it co-occurs with).

    Args:
        classifier: the classifier the dictionary was fitted on.
        inverter: a FeatInv of ``dictionary.layer``.
        dictionary: a fitted :class:`~workbench.analysis.dictionary.Dictionary`.
        images: ``Tensor[N, 3, H, W]`` in [0, 1]; the top-activating images are found among them, and the image to
            steer is picked from them.
        scores: the dictionary's :func:`~workbench.analysis.atoms.atom_factor_table` (optional): atoms are then
            listed most monosemantic first, labelled with what their best factor points at.
        alphas: the steering strengths shown, in units of the atom's typical firing.
        n_top: top-activating images shown.
        num_inference_steps, seed: passed to the inverter.
        sampler: the :class:`~workbench.inverters.sampler.Sampler` FeatInv draws with (default ``wb.Sampler()``;
            ``num_inference_steps``, when given, replaces its steps).

    Attributes:
        widget: the ``ipywidgets.VBox`` to display.
        result: after each run, ``{"atom", "alphas", "samples"}`` (``samples``: ``Tensor[A, 3, H, W]``).

    Example:
        >>> AtomBrowser(cnn, wb.load_inverter("tinyworld-cnn/stages.3"), sae, x_test, scores=scores)
    """

    def __init__(self, classifier: nn.Module, inverter: Inverter, dictionary, images: Tensor, *, scores=None,
                 alphas: Sequence[float] = (0.0, 1.0, 2.0, 4.0), n_top: int = 5,
                 num_inference_steps: int | None = None, seed: int = 0, sampler: Sampler | None = None):
        import ipywidgets as w

        from .hooks import extract_features

        if dictionary.layer != getattr(inverter, "layer", dictionary.layer):
            raise AnalysisError(f"the dictionary was fitted at {dictionary.layer!r} but the inverter inverts "
                                f"{inverter.layer!r}; load the inverter of {dictionary.layer!r}")
        self.classifier, self.inverter, self.dictionary, self.images = classifier, inverter, dictionary, images
        self.alphas, self.n_top = [float(a) for a in alphas], n_top
        self.sampler = Sampler.build(sampler, num_inference_steps=num_inference_steps)
        self.num_inference_steps, self.seed = self.sampler.num_inference_steps, seed
        self.features = extract_features(classifier, images, dictionary.layer).float().cpu()
        self.result: dict = {}
        narrow = w.Layout(width="360px")
        self.atom = w.Dropdown(options=self._atom_options(scores), description="atom", layout=narrow)
        self.image = w.IntSlider(value=0, min=0, max=len(images) - 1, description="steer image", layout=narrow)
        self.where = w.Dropdown(options=["everywhere", "object"], description="steer at", layout=narrow)
        self.run = w.Button(description="Invert", button_style="primary", icon="play", layout=w.Layout(width="120px"))
        self.progress = w.IntProgress(value=0, min=0, max=len(self.alphas), layout=w.Layout(width="170px"))
        self.status = w.HTML()
        self.top, self.steered = w.HTML(), w.HTML()
        header = w.HTML(f"<b style='font-size:15px'>Atoms of a {html.escape(dictionary.method)} dictionary at "
                        f"{html.escape(str(dictionary.layer))}</b><div style='font-size:12px;line-height:16px'>Pick "
                        "an atom: the images it fires on most, its code in red. Press <b>Invert</b> to steer the "
                        "chosen image's map along it and invert.</div>")
        self.atom.observe(lambda change: self._show_top(), names="value")
        self.run.on_click(lambda button: self.update())
        self.widget = w.VBox([header, w.HBox([w.VBox([self.atom, self.image, self.where])]),
                              w.HBox([self.run, self.progress, self.status]), self.top, self.steered])
        self._show_top()

    def _atom_options(self, scores) -> list[tuple[str, int]]:
        """``(label, atom)`` for the live atoms, most monosemantic first when ``scores`` are given."""
        from .analysis.atoms import monosemanticity

        atoms = self.dictionary.alive
        if scores is None:
            return [(f"atom {a}", a) for a in atoms]
        mono = monosemanticity(scores).loc[atoms].sort_values("monosemanticity", ascending=False, na_position="last")
        out = []
        for a, row in mono.iterrows():
            if isinstance(row.best_factor, str):
                target = scores.attrs["targets"][row.best_factor][a]
                out.append((f"atom {a}: {row.best_factor} -> {target} ({row.monosemanticity:.2f})", int(a)))
            else:
                out.append((f"atom {a}", int(a)))
        return out

    def _show_top(self) -> None:
        from .analysis.atoms import activation_overlay, top_activating

        idx, maps = top_activating(self.dictionary, self.features, self.atom.value, n=self.n_top)
        self.top.value = "<b>fires most on</b>" + _strip(activation_overlay(self.images[idx], maps),
                                                          [f"max {float(m.max()):.2g}" for m in maps])
        self.steered.value = ""
        self.status.value = "press <b>Invert</b> to steer"

    def update(self) -> dict:
        """Steer the chosen image's map along the chosen atom for each alpha and invert it. Returns :attr:`result`."""
        from .analysis.steering import direction_edit

        i, atom = self.image.value, self.atom.value
        try:
            edit = direction_edit(self.dictionary.concept(atom), where=self.where.value)
        except AnalysisError as err:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return self.result
        features = self.features[i:i + 1]
        self.progress.max, self.progress.value = len(self.alphas), 0
        self.run.disabled = True
        try:
            outs = []
            for k, alpha in enumerate(self.alphas):        # one alpha at a time from the same noise; the bar moves
                outs.append(self.inverter.invert(edit(features, alpha), num_samples=1, seed=self.seed,
                                                 sampler=self.sampler, progress=False)[0, 0])
                self.progress.value = k + 1
        finally:
            self.run.disabled = False
        samples = torch.stack(outs)                                                     # [A, 3, H, W]
        self.steered.value = f"<b>image {i} steered along atom {atom}</b>" + _strip(
            torch.cat([self.images[i:i + 1], samples]), ["original"] + [f"alpha={a:g}" for a in self.alphas])
        self.status.value = f"inverted {len(self.alphas)} steps"
        self.result = {"atom": atom, "alphas": self.alphas, "samples": samples}
        return self.result

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
