"""Figures. Every function takes tensors or DataFrames and returns a ``matplotlib.figure.Figure``;
none of them saves anything (the caller does, e.g. ``fig.savefig(path)``). Each takes ``title=``, set
by one helper as the figure's suptitle in a band of fixed height added above the panels.

In a notebook a figure appears exactly once, however the cell ends: as its last expression
(``wb.plot.image_grid(rows)``), assigned (``fig = wb.plot.image_grid(rows)``) or followed by other statements.
See :class:`NotebookFigure`.

Sections are owned by topic: core (grids), evaluation, analysis. Images follow the one convention,
``[..., 3, H, W]`` floats in [0, 1].
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import torch
from matplotlib.figure import Figure

from .checks import check_images


class NotebookFigure(Figure):
    """The ``Figure`` every function here returns: a notebook shows it once, whichever way the cell ends.

    The figures are made with pyplot, so matplotlib-inline shows every figure still open at the end of a cell
    (and closes it): that covers a figure assigned to a variable or followed by other statements. A figure that is
    the cell's last expression is also displayed by IPython, and would appear twice; here displaying it closes it
    in pyplot, so the end-of-cell flush skips it. ``display(fig)`` in a later cell shows it again, as asked.
    Outside IPython nothing changes.
    """

    def _ipython_display_(self) -> None:
        import matplotlib
        import matplotlib.pyplot as plt
        from IPython import get_ipython
        from IPython.display import publish_display_data

        data, metadata = {}, {}
        for mime, formatter in get_ipython().display_formatter.formatters.items():  # what display(fig) would send
            out = formatter(self)
            if isinstance(out, tuple):
                out, metadata[mime] = out
            if out is not None:
                data[mime] = out
        publish_display_data(data, metadata)
        if "inline" in matplotlib.get_backend():
            plt.close(self)


def _subplots(*args, **kwargs):
    """``plt.subplots`` making a :class:`NotebookFigure`."""
    import matplotlib.pyplot as plt

    return plt.subplots(*args, FigureClass=NotebookFigure, **kwargs)


def _hwc(img: torch.Tensor):
    return img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


#: Height (inches, per line) of the band a title gets above the panels, whatever the figure's height.
_TITLE_INCHES = 0.35


def _finish(fig, title: str | None = None):
    """Lay ``fig`` out tightly; with a ``title``, make the figure taller by a band of fixed height for it, so the
    panels keep their size (a one-row image grid stays as visible as one without a title).

    Every figure function ends with ``return _finish(fig, title)``.
    """
    if not title:
        fig.tight_layout()
        return fig
    w, h = fig.get_size_inches()
    band = _TITLE_INCHES * (1 + title.count("\n"))
    fig.set_size_inches(w, h + band)
    fig.tight_layout(rect=(0, 0, 1, h / (h + band)))
    fig.suptitle(title, y=1 - 0.5 * band / (h + band), va="center")
    return fig


# ------------------------------------------------------------------------------------------- core
def image_grid(rows: Sequence[Sequence[torch.Tensor]] | torch.Tensor, *, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, cell: float = 1.2, title: str | None = None,
               colorbar_label: str | None = None):
    """A grid of images: ``rows[i][j]`` is ``Tensor[3, H, W]`` in [0, 1] or ``Tensor[1, H, W]`` (shown with a
    colour map, e.g. an invariance map); a ``Tensor[R, C, 3, H, W]`` works too. All one-channel panels share one
    value range, and the last one of each row gets a colour bar (titled ``colorbar_label``).

    Returns:
        the ``Figure``.
    """
    if isinstance(rows, torch.Tensor):
        rows = [list(r) for r in rows]
    for i, row in enumerate(rows):          # before any figure opens: 0..255 floats would show as clamped white
        for j, img in enumerate(row):
            if img is not None and img.shape[0] != 1:
                check_images(img[None], f"rows[{i}][{j}]")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    mono = [img.detach().float() for row in rows for img in row if img is not None and img.shape[0] == 1]
    vmin, vmax = (min(float(m.min()) for m in mono), max(float(m.max()) for m in mono)) if mono else (None, None)
    # column labels get a line's height of their own, so the images stay square with a gap between rows (two rows
    # under labels touched: the labels took the height the images needed); row labels take width instead, which
    # leaves the rows their gap
    labels_h = 0.3 if col_labels is not None and row_labels is None else 0.0
    bar_w = 0.4 if mono else 0.0          # the colour bars' width, added so that the panels keep theirs
    fig, axes = _subplots(n_rows, n_cols, figsize=(cell * n_cols + bar_w, cell * n_rows + labels_h), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j >= len(row) or row[j] is None:
                ax.axis("off")
                continue
            img = row[j]
            if img.shape[0] == 1:
                shown = ax.imshow(img[0].detach().float().cpu().numpy(), cmap="magma", interpolation="nearest",
                                  vmin=vmin, vmax=max(vmax, vmin + 1e-8))
                if not any(m is not None and m.shape[0] == 1 for m in row[j + 1:]):   # the row's last map
                    _colorbar(fig, ax, shown, colorbar_label)
            else:
                ax.imshow(_hwc(img), interpolation="nearest")
            if col_labels is not None and i == 0 and j < len(col_labels):
                # a label wider than its column (9 pt: ~0.075 in a character) breaks at spaces instead of running
                # into its neighbour's ("decoder blocks.5" beside "optimisation blocks.5" in notebook 04)
                ax.set_title(textwrap.fill(str(col_labels[j]), max(6, int(cell / 0.075)), break_long_words=False,
                                           break_on_hyphens=False),
                             fontsize=9)
            if row_labels is not None and j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=9, rotation=0, ha="right", va="center")
    return _finish(fig, title)


def _colorbar(fig, ax, shown, label: str | None) -> None:
    """A thin colour bar right of ``ax``, in an inset (so ``fig.axes`` keeps one axes per panel), with its two ends
    as ticks and the first word of ``label`` above it (the column label says the rest)."""
    cax = ax.inset_axes([1.04, 0.0, 0.07, 1.0])
    bar = fig.colorbar(shown, cax=cax)
    low, high = shown.get_clim()
    bar.set_ticks([low, high], labels=[f"{low:.2g}", f"{high:.2g}"])   # two ticks: the panels keep their width
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    if label:
        bar.ax.set_title(label.split()[0], fontsize=6, pad=2)


def inversion_figure(originals: torch.Tensor, samples: torch.Tensor, *, row_labels: Sequence[str] | None = None,
                     invariance: torch.Tensor | None = None, title: str | None = None):
    """original | samples | invariance map, one row per image.

    Args:
        originals: ``Tensor[B, 3, H, W]``.
        samples: ``Tensor[B, S, 3, H, W]`` from an inverter.
        invariance: ``Tensor[B, 1, H, W]`` (default: computed from ``samples`` when ``S >= 2``), drawn on one
            scale for all rows, with a colour bar: the pixels' standard deviation over the samples.
    """
    from .inverters.featinv import invariance_map

    if invariance is None and samples.shape[1] >= 2:
        invariance = invariance_map(samples)
    rows = []
    for b in range(originals.shape[0]):
        row = [originals[b], *samples[b]]
        if invariance is not None:
            row.append(invariance[b])
        rows.append(row)
    cols = ["original"] + [f"sample {s + 1}" for s in range(samples.shape[1])] + (
        ["invariance (std)"] if invariance is not None else [])
    return image_grid(rows, row_labels=row_labels, col_labels=cols, title=title, colorbar_label="std over samples")


# ------------------------------------------------------------------------------------------- evaluation
def method_grid(originals: torch.Tensor, reconstructions: "dict[str, torch.Tensor]", *, sample: int = 0,
                row_labels: Sequence[str] | None = None, title: str | None = None):
    """Methods side by side: one row per image, columns ``original | method 1 | method 2 | ...``.

    Args:
        originals: ``Tensor[B, 3, H, W]``.
        reconstructions: method name -> ``Tensor[B, S, 3, H, W]`` (an inverter's output) or ``Tensor[B, 3, H, W]``.
        sample: which sample to show when ``S > 1``.

    Example:
        >>> fig = method_grid(x[:6], {"FeatInv": rec1, "decoder": rec2})
    """
    cols = ["original", *reconstructions]
    recs = [r[:, sample] if r.ndim == 5 else r for r in reconstructions.values()]
    rows = [[originals[b], *[r[b] for r in recs]] for b in range(originals.shape[0])]
    return image_grid(rows, row_labels=row_labels, col_labels=cols, title=title)


def metric_bars(table, metrics: Sequence[str] = ("feature_cosine", "cross_cosine", "top1", "frechet_distance"), *,
                title: str | None = None):
    """One bar panel per metric, one bar per row of a comparison table (``workbench.evaluation.compare``).

    Example:
        >>> fig = metric_bars(compare({"FeatInv": t1, "decoder": t2}))
    """
    metrics = [m for m in metrics if m in table.columns]
    n_cols = min(len(metrics), 2)                        # two panels a row: a notebook shows it at full size
    n_rows = -(-len(metrics) // n_cols)
    fig, axes = _subplots(n_rows, n_cols, figsize=(3.4 * n_cols + 1.5, (0.3 * len(table) + 0.8) * n_rows),
                          squeeze=False)
    labels = [str(i) for i in table.index]
    for k, ax in enumerate(axes.flat):
        if k >= len(metrics):
            ax.axis("off")
            continue
        m = metrics[k]
        ax.barh(range(len(table)), table[m].astype(float).values, color="tab:blue")
        ax.set_yticks(range(len(table)))
        ax.set_yticklabels(labels if k % n_cols == 0 else [], fontsize=9)
        ax.invert_yaxis()
        ax.set_title(m + (" (lower is better)" if m in ("frechet_distance", "seconds_per_image") else ""), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    return _finish(fig, title)


def condition_grid(inputs: "dict[str, torch.Tensor]", reconstructions: "dict[str, torch.Tensor]", *, n: int = 3,
                   sample: int = 0, title: str | None = None):
    """One row per condition: ``input 1 | reconstruction 1 | input 2 | reconstruction 2 | ...`` for ``n`` images.

    Args:
        inputs: condition -> ``Tensor[N, 3, H, W]`` (what the classifier saw).
        reconstructions: condition -> ``Tensor[N, S, 3, H, W]``.

    Example:
        >>> fig = condition_grid(result.inputs, result.reconstructions, n=3)
    """
    keys = [k for k in inputs if k in reconstructions]
    rows = []
    for k in keys:
        m = min(n, len(inputs[k]))
        rows.append([img for i in range(m) for img in (inputs[k][i], reconstructions[k][i, sample])])
    cols = [c for i in range(n) for c in (f"input {i + 1}", f"recon {i + 1}")]
    return image_grid(rows, row_labels=keys, col_labels=cols, title=title)


def robustness_curves(summary, metrics: Sequence[str] = ("feature_cosine", "top1"), *, title: str | None = None):
    """Metric against corruption severity, one line per corruption, clean level dashed (severity 0).

    Args:
        summary: ``RobustnessResult.summary`` (columns ``family``, ``name``, ``severity`` and the metrics).

    Example:
        >>> fig = robustness_curves(result.summary)
    """
    metrics = [m for m in metrics if m in summary.columns]
    fig, axes = _subplots(1, len(metrics), figsize=(3.6 * len(metrics), 2.8), squeeze=False)
    corr = summary[summary["family"] == "corruption"]
    clean = summary[summary["family"] == "clean"]
    for ax, m in zip(axes[0], metrics):
        for name, part in corr.groupby("name", sort=False):
            ax.plot(part["severity"], part[m].astype(float), marker="o", label=name)
        if len(clean):
            ax.axhline(float(clean[m].iloc[0]), color="k", ls="--", lw=1, label="clean")
        ax.set_xlabel("severity")
        ax.set_title(m, fontsize=9)
        ax.set_xticks([1, 2, 3])
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside
    return _finish(fig, title)




# ------------------------------------------------------------------------------------------- analysis


def pca_rgb_figure(images: torch.Tensor, rgb: torch.Tensor, *, alpha: float = 0.5, title: str | None = None):
    """image | top-3 PCA components as RGB | overlay, one row per image.

    Args:
        images: ``Tensor[B, 3, H, W]`` in [0, 1].
        rgb: ``Tensor[B, 3, H, W]`` from ``FeaturePCA.rgb(features, size=H)``.
        alpha: weight of the PCA colours in the overlay.
    """
    overlay = (1 - alpha) * images.float().cpu() + alpha * rgb.float().cpu()
    rows = [[images[b], rgb[b], overlay[b]] for b in range(images.shape[0])]
    return image_grid(rows, col_labels=["image", "PCA 1-3", "overlay"], title=title)


def explained_variance_figure(ratio: torch.Tensor, *, title: str | None = None):
    """Cumulative explained variance against the number of components (``ratio``: ``Tensor[K]``)."""
    ratio = torch.as_tensor(ratio).float().cpu()
    fig, ax = _subplots(figsize=(4.5, 3))
    ks = torch.arange(1, len(ratio) + 1)
    ax.plot(ks, ratio.cumsum(0), marker=".", label="cumulative")
    ax.bar(ks, ratio, alpha=0.4, label="per component")
    ax.set_xscale("log")
    ax.set_xlabel("components")
    ax.set_ylabel("explained variance")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return _finish(fig, title)


def curves_figure(table, x: str, ys: Sequence[str], *, right: Sequence[str] = (), logx: bool = False,
                  hline: float | None = None, xlabel: str | None = None, ylabel: str | None = None,
                  right_label: str | None = None, title: str | None = None):
    """Lines of several columns of a DataFrame against one column (e.g. accuracy vs ablated channels).

    Rows that share an ``x`` value are averaged; ``hline`` draws a dashed reference (e.g. chance). The y axis is
    labelled ``ylabel``, or the column's name when ``ys`` is one column. Columns in
    ``right`` go on a second y axis labelled ``right_label``, for a quantity in other units than ``ys`` (e.g. a
    concept readout beside probabilities).

    Example:
        >>> fig = curves_figure(table, "alpha", ["p_target"], right=["concept"], ylabel="p(star)",
        ...                     right_label="concept readout")
    """
    means = table.groupby(x)[list(ys) + list(right)].mean()
    fig, ax = _subplots(figsize=(4.5, 3))
    for col in ys:
        ax.plot(means.index, means[col], marker="o", label=col)
    if hline is not None:
        ax.axhline(hline, ls="--", c="gray", lw=1, label="chance")
    if logx:
        ax.set_xscale("symlog", linthresh=1)
        lo, hi = float(means.index.min()), float(means.index.max())
        if lo >= 0:                     # counts from 0 or 1: no empty negative half-axis with a "-10^0" tick
            ax.set_xlim(lo - 0.25 if lo < 1 else lo / 1.25, max(hi * 1.25, lo + 1))
    ax.set_xlabel(xlabel or x)
    if ylabel or len(ys) == 1:
        ax.set_ylabel(ylabel or ys[0])
    handles, labels = ax.get_legend_handles_labels()
    if right:
        twin = ax.twinx()
        for k, col in enumerate(right):
            twin.plot(means.index, means[col], marker="s", ls="--", color=f"C{len(ys) + k}", label=col)
        twin.set_ylabel(right_label or ", ".join(right))
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)
    return _finish(fig, title)


def table_heatmap(table, *, fmt: str = "{:.2f}", vmin: float = 0.0, vmax: float = 1.0, title: str | None = None):
    """A DataFrame of scores (e.g. layers x factors) as an annotated heat map."""
    values = table.to_numpy(dtype=float)
    fig, ax = _subplots(figsize=(0.9 * values.shape[1] + 1.5, 0.45 * values.shape[0] + 1.2))
    ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in table.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), [str(i) for i in table.index], fontsize=8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < (vmin + vmax) / 2 else "black")
    return _finish(fig, title)


def sequence_figure(images: torch.Tensor, probs: torch.Tensor, *, class_names: Sequence[str],
                    steps: Sequence[float] | None = None, title: str | None = None):
    """An image sequence (top) over the class probabilities along it (bottom).

    Args:
        images: ``Tensor[T, 3, H, W]``, one image per step.
        probs: ``Tensor[T, K]`` probabilities of the ``K`` classes named in ``class_names``.
        steps: the x value of each step (default ``0..T-1``), e.g. ``t`` or ``alpha``.
    """
    import matplotlib.pyplot as plt

    t = len(images)
    xs = list(range(t)) if steps is None else list(steps)
    fig = plt.figure(figsize=(max(1.1 * t, 4), 3.4), FigureClass=NotebookFigure)
    grid = fig.add_gridspec(2, t, height_ratios=[1, 1.3])
    for i in range(t):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(_hwc(images[i]), interpolation="nearest")
        ax.set_title(f"{xs[i]:.2g}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    probs = torch.as_tensor(probs).float().cpu()
    for k, name in enumerate(class_names):
        ax.plot(xs, probs[:, k], marker="o", label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.legend(fontsize=8, ncol=min(len(class_names), 4))
    return _finish(fig, title)


def steering_figure(table, *, preserve: Sequence[str] = ("x", "y", "size"), tolerance: float = 1.0,
                    title: str | None = None):
    """Edit methods side by side, from :func:`~workbench.analysis.steering_studies.steering_table`.

    Left: p(target) of the inverted images (solid) and of the edited map (dashed) along each method's sweep, its
    ``alpha`` divided by its largest (methods count ``alpha`` in their own units); the gap between the two is the
    edit's off-manifold share. Right: the largest drift over ``preserve`` (in the table's units, e.g. dataset
    standard deviations), with ``tolerance`` dashed.
    """
    import matplotlib as mpl

    fig, axes = _subplots(1, 2, figsize=(10, 3.6))
    cols = [f"drift_{f}" for f in preserve if f"drift_{f}" in table]
    # "layer | edit" names (notebook 09: 7 edits at 2 layers): one hue per edit, dark circles for the first layer and
    # light squares for the second, so no two of up to 20 lines share a colour and marker
    names = list(dict.fromkeys(table.index.get_level_values("method")))
    parts = [n.split(" | ", 1) if " | " in n else ("", n) for n in names]
    edits, groups = list(dict.fromkeys(e for _, e in parts)), list(dict.fromkeys(g for g, _ in parts))
    paired = len(edits) <= 10 and len(groups) <= 2
    for i, (method, group) in enumerate(table.groupby(level="method", sort=False)):
        group = group.droplevel("method")
        t = group.index.to_numpy(dtype=float) / max(float(group.index.max()), 1e-12)
        g, e = parts[names.index(method)]
        j = groups.index(g)
        color = mpl.colormaps["tab20"].colors[2 * edits.index(e) + j] if paired else f"C{i % 10}"
        marker = "osD^v"[j % 5]
        axes[0].plot(t, group.p_target, marker=marker, color=color, label=method)
        axes[0].plot(t, group.p_target_map, ls="--", color=color, lw=1)
        if cols:
            axes[1].plot(t, group[cols].max(1), marker=marker, color=color)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_xlabel("alpha / largest alpha")
    axes[0].set_ylabel("p(target): image (solid), map (dashed)")
    axes[1].axhline(tolerance, ls="--", c="gray", lw=1)
    axes[1].set_xlabel("alpha / largest alpha")
    axes[1].set_ylabel(f"max drift of {', '.join(preserve)}")
    axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                   borderaxespad=0)                                                    # beside the panels
    return _finish(fig, title)


def judged_sweep_figure(originals: torch.Tensor, samples: torch.Tensor, table, *, images: Sequence[int] = (0, 1, 2),
                        sample: int = 0, value: str = "judge_p_target", label: str = "p", cell: float = 1.1,
                        title: str | None = None):
    """A steering sweep as a person reads it: one row per image, the original, then the edit at rising alpha and the
    random control at the same alphas, with the judges' reading (``value`` of the table) under every inversion.

    Args:
        originals: ``Tensor[B, 3, H, W]``, the steered images.
        samples: ``Tensor[B, arms, A, S, 3, H, W]`` of :func:`~workbench.analysis.judged_steering.judged_sweep`
            (arm 0 the edit, arm 1 the control).
        table: its table (columns ``image``, ``arm``, ``alpha``, ``sample`` and ``value``).
        images: the rows shown (indices into ``originals``).
        sample: which sample of each (image, alpha) is shown.
        value: the column printed under each inversion (default the judges' mean p(target)).
        label: its short name under the images.
    """
    alphas = sorted(table.alpha.unique())
    arms = list(dict.fromkeys(table.arm))
    read = table.set_index(["image", "arm", "alpha", "sample"])[value]
    cols = [("original", None, None)] + [(arm, k, a) for arm_i, arm in enumerate(arms)
                                         for k, a in enumerate(alphas) if arm_i == 0 or a != 0]
    fig, axes = _subplots(len(images), len(cols), figsize=(cell * len(cols), (cell + 0.3) * len(images) + 0.3),
                          squeeze=False)
    for r, i in enumerate(images):
        for c, (arm, k, a) in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if arm == "original":
                ax.imshow(_hwc(originals[i]), interpolation="nearest")
            else:
                ax.imshow(_hwc(samples[i, arms.index(arm), k, sample]), interpolation="nearest")
                ax.set_xlabel(f"{label}={read[(i, arm, a, sample)]:.2f}", fontsize=8, labelpad=2)
            if r == 0:
                ax.set_title("original" if arm == "original" else f"{arm}\nalpha={a:g}", fontsize=8)
    return _finish(fig, title)


# ------------------------------------------------------------------------------------------- dictionaries
def atom_figure(images: torch.Tensor, maps: torch.Tensor, steered: torch.Tensor | None = None, *,
                originals: torch.Tensor | None = None, alphas: Sequence[float] | None = None,
                overlay: float = 0.55, title: str | None = None):
    """One dictionary atom in input space: its top-activating images with its code map overlaid (top row),
    then, per steered image and sample, the inversions of maps steered along it at increasing strength.

    Args:
        images: ``Tensor[T, 3, H, W]``, the top-activating images (e.g. from
            ``analysis.atoms.top_activating``).
        maps: ``Tensor[T, h, w]``, the atom's codes on them (upsampled and overlaid in red, scaled by the
            largest).
        steered: ``Tensor[B, A, S, 3, H, W]`` from ``analysis.atoms.atom_steering_study`` (optional).
        originals: ``Tensor[B, 3, H, W]``, the steered images, shown first in their rows.
        alphas: the ``A`` strengths, for column titles.
        overlay: opacity of the code map.
    """
    t = len(images)
    b, a, s = steered.shape[:3] if steered is not None else (0, 0, 0)
    lead = 1 if originals is not None else 0
    cols = max(t, a + lead)
    fig, axes = _subplots(1 + b * s, cols, figsize=(1.2 * cols, 1.25 * (1 + b * s)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    from .analysis.atoms import activation_overlay

    shown = activation_overlay(images, maps, opacity=overlay)
    for j in range(t):
        axes[0][j].imshow(_hwc(shown[j]), interpolation="nearest")
        axes[0][j].set_title(f"max code {float(maps[j].max()):.2g}", fontsize=9)
    for i in range(b * s):
        row = axes[1 + i]
        if lead:
            row[0].imshow(_hwc(originals[i // s]), interpolation="nearest")
            row[0].set_title("original" if i == 0 else "", fontsize=9)
        for k in range(a):
            row[lead + k].imshow(_hwc(steered[i // s, k, i % s]), interpolation="nearest")
            if i == 0 and alphas is not None:
                row[lead + k].set_title(f"alpha={alphas[k]:g}", fontsize=9)
    return _finish(fig, title)
