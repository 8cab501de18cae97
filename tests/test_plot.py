"""Figures: every public figure function takes a title, and a title never squeezes the panels."""
from __future__ import annotations

import inspect
import io

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from workbench import plot

g = torch.Generator().manual_seed(0)


def images(*shape):
    return torch.rand(*shape, 3, 16, 16, generator=g)


def comparison_table():
    return pd.DataFrame({"feature_cosine": [0.9, 0.7], "cross_cosine": [0.5, 0.4], "top1": [0.8, 0.6],
                         "frechet_distance": [12.0, 30.0]}, index=["FeatInv", "decoder"])


def robustness_summary():
    rows = [{"family": "clean", "name": "clean", "severity": 0, "feature_cosine": 0.9, "top1": 0.95}]
    rows += [{"family": "corruption", "name": name, "severity": s, "feature_cosine": 0.9 - 0.1 * s, "top1": 1 - 0.2 * s}
             for name in ("blur", "noise") for s in (1, 2, 3)]
    return pd.DataFrame(rows)


#: every public figure function of workbench.plot -> a call with small fake inputs (the title is added by the test)
CALLS = {
    "image_grid": lambda title: plot.image_grid(images(2, 3), row_labels=["a", "b"], title=title),
    "inversion_figure": lambda title: plot.inversion_figure(images(2), images(2, 3), title=title),
    "method_grid": lambda title: plot.method_grid(images(2), {"FeatInv": images(2, 2), "decoder": images(2)},
                                                  title=title),
    "metric_bars": lambda title: plot.metric_bars(comparison_table(), title=title),
    "condition_grid": lambda title: plot.condition_grid({"clean": images(3), "blur": images(3)},
                                                        {"clean": images(3, 1), "blur": images(3, 1)}, n=2,
                                                        title=title),
    "robustness_curves": lambda title: plot.robustness_curves(robustness_summary(), title=title),
    "pca_rgb_figure": lambda title: plot.pca_rgb_figure(images(2), images(2), title=title),
    "explained_variance_figure": lambda title: plot.explained_variance_figure(torch.tensor([0.5, 0.3, 0.1, 0.05]),
                                                                              title=title),
    "curves_figure": lambda title: plot.curves_figure(
        pd.DataFrame({"k": [0, 0, 4, 4, 16], "top1": [0.9, 0.8, 0.6, 0.5, 0.2], "cos": [1.0, 1.0, 0.8, 0.7, 0.3]}),
        "k", ["top1", "cos"], logx=True, hline=0.125, title=title),
    "table_heatmap": lambda title: plot.table_heatmap(
        pd.DataFrame([[0.1, 0.9], [0.5, 0.4]], index=["stages.2", "stages.3"], columns=["shape", "hue"]),
        title=title),
    "sequence_figure": lambda title: plot.sequence_figure(images(4), torch.softmax(torch.randn(4, 3, generator=g), 1),
                                                          class_names=["circle", "square", "star"],
                                                          steps=[0.0, 0.3, 0.6, 1.0], title=title),
    "steering_figure": lambda title: plot.steering_figure(steering_table(), title=title),
    "judged_sweep_figure": lambda title: plot.judged_sweep_figure(
        images(2), images(2, 2, 3, 1), pd.DataFrame(
            [{"image": i, "arm": arm, "alpha": a, "sample": 0, "judge_p_target": 0.1 * k + 0.3 * (arm == "edit")}
             for i in range(2) for arm in ("edit", "random control") for k, a in enumerate([0.0, 2.0, 4.0])]),
        images=[0, 1], title=title),
    "atom_figure": lambda title: plot.atom_figure(images(3), torch.rand(3, 4, 4, generator=g), images(2, 3, 2),
                                                  originals=images(2), alphas=[0, 1, 2], title=title),
}


def steering_table():
    """A fake steering_studies.steering_table: two methods, three alphas each."""
    import pandas as pd

    index = pd.MultiIndex.from_product([["direction", "nearest real map"], [0.0, 0.5, 1.0]], names=["method", "alpha"])
    return pd.DataFrame({"p_target": [0, .1, .2, 0, .5, .9], "p_target_map": [0, .9, 1, 0, .6, 1],
                         "drift_x": [0, .2, .4, 0, .3, .6], "drift_y": [0, .1, .2, 0, .2, .3],
                         "drift_size": [0, .1, .1, 0, .4, .8]}, index=index)


def figure_functions() -> list[str]:
    return sorted(name for name, fn in vars(plot).items()
                  if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == plot.__name__)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_every_figure_function_has_a_call_here():
    assert figure_functions() == sorted(CALLS), "add a call with fake inputs for each new figure function"


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("title", [None, "a title", "a title\non two lines"])
def test_figure_takes_a_title(name, title):
    fig = CALLS[name](title)
    assert isinstance(fig, Figure)
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else None
    assert suptitle == title
    fig.canvas.draw()  # lays out and renders without error


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_title_keeps_the_panels_size(name):
    """The title gets a band of its own on top: the panels are as large in inches as without it."""
    def panel_heights(fig):
        fig.canvas.draw()
        return [ax.get_window_extent().height / fig.dpi for ax in fig.axes]

    bare, titled = panel_heights(CALLS[name](None)), panel_heights(CALLS[name]("a title"))
    assert len(bare) == len(titled)
    assert all(t >= 0.95 * b for b, t in zip(bare, titled)), (bare, titled)


def test_curves_on_a_second_axis():
    table = pd.DataFrame({"alpha": [0, 1, 2], "p_target": [0.1, 0.5, 0.9], "concept": [-0.3, 0.4, 1.2]})
    fig = plot.curves_figure(table, "alpha", ["p_target"], right=["concept"], ylabel="p(star)",
                             right_label="concept readout")
    assert [ax.get_ylabel() for ax in fig.axes] == ["p(star)", "concept readout"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["p_target", "concept"]


def test_log_curves_from_zero_have_no_negative_axis():
    """A count swept from 0 on a symlog axis (notebook 07) starts just left of 0, not at a '-10^0' tick."""
    table = pd.DataFrame({"n": [0, 16, 64, 192], "accuracy": [1.0, 0.9, 0.6, 0.1]})
    fig = plot.curves_figure(table, "n", ["accuracy"], logx=True)
    left, right = fig.axes[0].get_xlim()
    assert -1 < left < 0 and right >= 192
    assert fig.axes[0].get_ylabel() == "accuracy"                  # one column: its name labels the axis


def test_one_row_inversion_figure_with_a_title_shows_its_images(tmp_path):
    """``workbench invert``'s figure: 1 original + 4 samples + the invariance map in one row, with a title."""
    fig = plot.inversion_figure(images(1), images(1, 4), row_labels=["tinyworld-cnn\nstages.3"],
                                title="photo.png: what tinyworld-cnn keeps at stages.3")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    assert buf.tell() > 1000
    height = fig.bbox.height
    boxes = [ax.get_window_extent() for ax in fig.axes]
    assert len(boxes) == 6
    union = max(b.y1 for b in boxes) - min(b.y0 for b in boxes)
    assert union >= 0.55 * height, f"the image panels fill {union / height:.0%} of the figure's height"
    assert min(b.height for b in boxes) >= 0.55 * height


def test_a_notebook_shows_each_figure_once():
    """In a real kernel with the inline backend, however the cell ends, each figure is one image output."""
    import nbformat
    from nbclient import NotebookClient

    cells = {  # source -> images the cell should show
        "import torch, workbench as wb\nx = torch.rand(2, 3, 8, 8)": 0,
        "wb.plot.image_grid([[x[0], x[1]]])": 1,                        # the last expression
        "fig = wb.plot.image_grid([[x[0]]], title='assigned')": 1,      # assigned
        "wb.plot.image_grid([[x[0]]])\nn = 1": 1,                       # followed by a statement
        "wb.plot.image_grid([[x[0]]]);": 1,                             # silenced with ';'
        "for _ in range(2):\n    wb.plot.image_grid([[x[1]]])": 2,     # one per call
        "fig": 1,                                                       # asked for again later
        "import matplotlib.pyplot as plt\nplt.get_fignums()": 0,        # none left open in pyplot
    }
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    shown = [sum("image/png" in out.get("data", {}) for out in cell.outputs) for cell in nb.cells]
    assert shown == list(cells.values()), shown
    assert nb.cells[-1].outputs[0]["data"]["text/plain"] == "[]"
    assert not [out for cell in nb.cells for out in cell.outputs if out.output_type in ("stream", "error")]


def test_steering_figure_tells_fourteen_methods_apart():
    """Notebook 09 draws 7 edits at 2 layers: no two of its lines may share a colour and a marker."""
    import pandas as pd

    edits = [f"edit {k}" for k in range(7)]
    names = [f"{layer} | {e}" for layer in ("stages.3", "stages.2") for e in edits]
    index = pd.MultiIndex.from_product([names, [0.0, 1.0]], names=["method", "alpha"])
    table = pd.DataFrame({"p_target": 0.5, "p_target_map": 0.5, "drift_x": 0.1, "drift_y": 0.1, "drift_size": 0.1},
                         index=index)
    fig = plot.steering_figure(table)
    styles = {(tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color(),
               line.get_marker()) for line in fig.axes[0].lines if line.get_linestyle() == "-"}
    assert len(styles) == len(names)


def test_grid_column_labels_do_not_run_into_each_other():
    """Notebook 04's ViT grid: 'decoder blocks.5' beside 'optimisation blocks.5' at 1.2 in a column."""
    labels = ["original", "FeatInv blocks.5", "FeatInv blocks.2", "decoder blocks.5", "optimisation blocks.5"]
    fig = plot.image_grid(images(2, 5), col_labels=labels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes[:5]]
    assert [ax.get_title().replace("\n", " ") for ax in fig.axes[:5]] == labels
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]


def test_two_grid_rows_under_column_labels_do_not_touch():
    """Notebook 03's last figure: two rows of an inversion figure with a title, drawn with a gap between them."""
    fig = plot.inversion_figure(images(2), images(2, 2), title="after a short run")
    fig.canvas.draw()
    top, bottom = fig.axes[0].get_position(), fig.axes[4].get_position()      # rows of 4 panels
    gap = (top.y0 - bottom.y1) * fig.get_size_inches()[1]
    assert gap > 0.05, gap                                                       # inches
